"""`robolearn train bc`: trains, checkpoints, and resumes after kill -9 on the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robolearn.cli.main import main
from robolearn.errors import ConfigError
from robolearn.policies import load_policy
from robolearn.policies.train import TrainBCConfig, run


@pytest.fixture(scope="module")
def lift(tmp_path_factory):
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    out = tmp_path_factory.mktemp("bc") / "lift"
    collect(CollectConfig(task="lift", episodes=4, out=str(out), num_envs=4, cameras=[], progress=False))
    return out


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_logs_and_tensorboard(lift, tmp_path):
    out = run(TrainBCConfig(dataset=str(lift), policy="mlp", out=str(tmp_path / "r"), steps=40, batch_size=32,
                            log_every=5, save_every=20, eval_episodes=0, progress=False,
                            policy_options={"hidden": [64, 64]}))
    rows = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, 45, 5))
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (out / "checkpoints" / "last").resolve().name == "step_000040"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000020", "step_000040"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    p = load_policy(out / "checkpoints" / "last")
    assert p.config.hidden == [64, 64]
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["dataset"] == str(lift.resolve()) and cfg["policy"] == "mlp"


def test_rerun_with_another_config_is_refused(lift, tmp_path):
    kw = dict(dataset=str(lift), out=str(tmp_path / "r"), steps=5, batch_size=16, eval_episodes=0, progress=False)
    run(TrainBCConfig(**kw, policy_options={"hidden": [16]}))
    with pytest.raises(ConfigError, match="different policy_options"):
        run(TrainBCConfig(**kw, policy_options={"hidden": [32]}))


def test_train_with_sim_eval(lift, tmp_path):
    out = run(TrainBCConfig(dataset=str(lift), policy="mlp", out=str(tmp_path / "r"), steps=10, batch_size=32,
                            save_every=10, eval_episodes=2, progress=False, policy_options={"hidden": [16]}))
    evals = [r for r in _log(out) if "eval_success_rate" in r]
    assert len(evals) == 1 and 0.0 <= evals[0]["eval_success_rate"] <= 1.0
    assert (out / "eval" / "step_000010" / "metrics.json").is_file()


def test_kill_and_resume_continues_the_same_loss_curve(lift, tmp_path):
    """kill -9 a training subprocess after a checkpoint; rerunning the command resumes on the same curve."""

    def cmd(out):
        return [sys.executable, "-m", "robolearn.cli.main", "train", "bc", "--dataset", str(lift), "--policy", "mlp",
                "--out", str(out), "steps=60", "batch_size=32", "log_every=1", "save_every=20", "eval_episodes=0",
                "progress=false", "policy_options={hidden: [64, 64], dropout: 0.1}"]

    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, capture_output=True, timeout=300)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (cut / "checkpoints" / "step_000040").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended or stalled before step 40"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd(cut), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a = {r["step"]: r["loss"] for r in _log(ref)}
    b = {r["step"]: r["loss"] for r in _log(cut)}
    assert sorted(b) == list(range(1, 61))  # every step once: rows past the checkpoint were redone, not doubled
    np.testing.assert_allclose([b[s] for s in range(1, 61)], [a[s] for s in range(1, 61)], rtol=1e-5, atol=1e-7)


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "bc", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such dataset directory" in capsys.readouterr().err


def test_train_then_eval_through_the_cli(lift, tmp_path, capsys):
    """The README's two commands: `robolearn train bc ...` then `robolearn eval --policy ...`."""
    out = tmp_path / "r"
    assert main(["train", "bc", "--dataset", str(lift), "--policy", "mlp", "--out", str(out), "steps=5",
                 "batch_size=16", "eval_episodes=0", "progress=false", "policy_options={hidden: [16]}"]) == 0
    assert main(["eval", "--policy", str(out / "checkpoints" / "last"), "--episodes", "2", "num_envs=2",
                 "max_episode_steps=10", "progress=false", f"out={tmp_path / 'ev'}"]) == 0
    text = capsys.readouterr().out
    assert "success rate" in text and "lift" in text  # the task came from the checkpoint's metadata
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["episodes"] == 2 and metrics["task"] == "lift"
