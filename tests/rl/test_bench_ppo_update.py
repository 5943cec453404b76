"""bench/ppo_update.py at a tiny size: it times the learner `train residual` builds, with the Adam
kernel it says it times, and writes the table's figures as JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ppo_update.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("ppo_update_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("fused", [False, True])
def test_learner_uses_the_adam_kernel_it_is_timed_as(fused):
    bench = _load_bench()
    model, minibatches = bench.make_learner(fused, obs_dim=12, act_dim=3, num_envs=8)
    assert model.policy.optimizer.defaults["fused"] is (True if fused else None)
    assert minibatches == model.n_epochs * (model.n_steps * 8 // model.batch_size)
    before = [p.detach().clone() for p in model.policy.parameters()]
    assert bench.time_update(model, threads=1) > 0
    # a timed update is a real one: every minibatch of the filled rollout moved the weights
    assert any(not (a == b.detach()).all() for a, b in zip(before, model.policy.parameters()))


def test_script_writes_every_variant_and_the_paired_speedups(tmp_path):
    out = tmp_path / "u.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--repeats", "1", "--envs", "8", "--obs-dim", "12",
                           "--act-dim", "3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert {(r["adam"], r["threads"]) for r in report["rows"]} == {
        ("default", 1), ("fused", 1), ("default", 2), ("fused", 2)}
    assert all(r["update_s_min"] <= r["update_s_median"] <= r["update_s_max"] for r in report["rows"])
    for t in (1, 2):
        d, f = report["samples_s"][f"default_{t}"], report["samples_s"][f"fused_{t}"]
        assert report[f"fused_speedup_{t}_threads"] == pytest.approx(d[0] / f[0])
    assert report["minibatches"] == 10 and report["num_envs"] == 8
    assert "fused_speedup_2_threads" in proc.stdout and str(out) in proc.stdout
