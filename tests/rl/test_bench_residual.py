"""`robolearn bench residual` end to end at a tiny budget, and its figures' arithmetic."""

from __future__ import annotations

import json

from robolearn.cli.main import main
from robolearn.rl.bench import steps_to

KEYS = ("base_success", "residual_success", "base_ci", "residual_ci", "steps_to_90_progress", "steps_to_90_sparse",
        "ppo_throughput_ratio", "wall_clock_s")


def test_steps_to_takes_the_first_evaluation_at_the_threshold():
    curve = [{"step": 0, "success_rate": 0.5, "train_wall_s": 0.0},
             {"step": 100, "success_rate": 0.95, "train_wall_s": 3.0},
             {"step": 200, "success_rate": 0.8, "train_wall_s": 6.0},
             {"step": 300, "success_rate": 0.9, "train_wall_s": 9.0}]
    assert steps_to(curve, 0.9) == (100, 3.0)
    assert steps_to(curve, 0.96) == (None, None)
    assert steps_to([], 0.9) == (None, None)


def test_bench_residual_writes_every_key(tmp_path, capsys):
    out = tmp_path / "r.json"
    demo = ("demo={demos: 4, bc_steps: 40, reward_steps: 20, residual_steps: 1024, residual_envs: 8, "
            "eval_every: 512, curve_episodes: 2, episodes: 4, video: false}")
    rc = main(["bench", "residual", "--json", str(out), demo, "sac_steps=256", "sac_envs=4", "sac_eval_every=128",
               "throughput_steps=400", "throughput_ppo_steps=1024", "throughput_repeats=2",
               f"work_dir={tmp_path / 'work'}", f"plot_path={tmp_path / 'r.png'}"])
    assert rc == 0
    r = json.loads(out.read_text())
    for k in KEYS:
        assert k in r, k
    assert 0 <= r["base_ci"][0] <= r["base_success"] <= r["base_ci"][1] <= 1
    assert 0 <= r["residual_ci"][0] <= r["residual_success"] <= r["residual_ci"][1] <= 1
    assert r["raw_vecenv_steps_per_s"] > 0 and r["ppo_env_steps_per_s"] > 0
    # two (raw, PPO) pairs; the figure is the median of the pairs' ratios, each PPO run from scratch
    pairs = r["throughput_samples"]
    assert len(pairs["ppo"]) == len(pairs["raw"]) == len(pairs["ratio"]) == 2
    for p, w, q in zip(pairs["ppo"], pairs["raw"], pairs["ratio"]):
        assert p > 0 and w > 0 and abs(q - p / w) < 1e-9
    assert abs(r["ppo_throughput_ratio"] - sum(pairs["ratio"]) / 2) < 1e-9
    assert abs(r["demo_ppo_throughput_ratio"] - r["demo_ppo_env_steps_per_s"] / r["raw_vecenv_steps_per_s"]) < 1e-9
    assert not list((tmp_path / "work").glob("throughput_*"))  # the timing runs are not kept
    # the three learning curves: progress PPO, sparse PPO (same budget), SAC; each starts at step 0
    assert set(r["curves"]) == {"progress (PPO)", "sparse (PPO)", "progress (SAC)"}
    assert [c["step"] for c in r["curves"]["sparse (PPO)"]] == [0, 512, 1024]
    assert r["curves"]["progress (SAC)"][0]["step"] == 0
    for name, curve in r["curves"].items():
        hit = next((c["step"] for c in curve if c["success_rate"] >= 0.9), None)
        key = {"progress (PPO)": "steps_to_90_progress", "sparse (PPO)": "steps_to_90_sparse",
               "progress (SAC)": "sac_steps_to_90"}[name]
        assert r[key] == hit
    assert set(r["passed"]) == {"improvement", "sample_efficiency", "ppo_throughput_ratio"}
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "PPO env-steps/s / raw VecEnv" in text and "improvement" in text
