"""`robolearn bench vlm` at a tiny size: every reported key is there and the JSON is written."""

from __future__ import annotations

import json

from robolearn.cli.main import main
from robolearn.rewards.vlm.bench import VLMBenchConfig, run


def test_bench_reports_every_key(tmp_path, capsys):
    path = tmp_path / "vlm.json"
    r = run(VLMBenchConfig(json_path=str(path), n_envs=64, sandbox_calls=5, latency_ms=20.0, concurrency=4,
                           requests=12, repeats=1, hostile=False))
    saved = json.loads(path.read_text())
    for key in ("sandbox_evals_per_s", "client_requests_per_s", "cache_hit_ms", "in_process_evals_per_s",
                "client_ideal_requests_per_s"):
        assert saved[key] == r[key] and saved[key] > 0, key
    assert "sandbox env-evals/s" in capsys.readouterr().out


def test_cli_runs_the_hostile_suite(tmp_path):
    path = tmp_path / "vlm.json"
    assert main(["bench", "vlm", "--json", str(path), "n_envs=16", "sandbox_calls=2", "latency_ms=5",
                 "requests=4", "repeats=1"]) == 0
    r = json.loads(path.read_text())
    assert r["hostile_total"] >= 20 and r["hostile_blocked"] == r["hostile_total"]
    assert r["hostile_side_effects"] == 0
