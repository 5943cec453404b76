"""The simulation benchmark runs end to end on a tiny budget and writes every ratio (no timing asserts)."""

from __future__ import annotations

import json
import math
import os

import numpy as np

# cameras are rendered; OSMesa works on any machine (the Makefile exports the same for `make test`)
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robolearn.sim.bench import BenchConfig, action_sequence, run  # noqa: E402

RATIOS = ("vs_robosuite", "vs_physics_ceiling", "thread_scaling", "camera_ratio")


def test_bench_writes_the_four_ratios(tmp_path):
    path = tmp_path / "results" / "sim.json"
    cfg = BenchConfig(steps=5, camera_steps=2, vec_steps=3, warmup_steps=1, repeats=1, num_envs_threaded=2,
                      image_size=(16, 16), include_robosuite=True, json_path=str(path))
    returned = run(cfg)
    report = json.loads(path.read_text())
    for key in RATIOS:
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] > 0, key
        assert report[key] == returned[key]
    assert report["replay_max_qpos_error"] == 0.0, "the bare mj_step replay must redo exactly the env's physics"
    assert report["config"]["steps"] == 5 and report["machine"]["cpu_count"] >= 1


def test_actions_sweep_out_and_back():
    a = action_sequence(40, scale=0.25, hold=4, seed=0)
    assert a.shape == (40, 7) and np.abs(a).max() <= 1.0
    np.testing.assert_allclose(a[:, :6].reshape(5, 8, 6).sum(axis=1), 0.0, atol=1e-12)  # each segment returns
    np.testing.assert_array_equal(a, action_sequence(40, scale=0.25, hold=4, seed=0))

