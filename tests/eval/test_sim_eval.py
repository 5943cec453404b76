"""`robolearn eval` on a tiny untrained MLP: metrics, exact episode accounting, determinism, videos, errors.

The policy is untrained, so success is ~0; what is checked is the bookkeeping, not the skill."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from robolearn.errors import ConfigError, RobolearnError, UnknownNameError
from robolearn.eval.sim import EvalConfig, _rollout, format_result, policy_env_overrides, run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny MLP checkpoint of the lift task, in a run dir laid out as `train bc` writes it."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader
    from robolearn.policies import make_policy

    tmp = tmp_path_factory.mktemp("eval")
    ds = collect(CollectConfig(task="lift", episodes=2, out=str(tmp / "d"), num_envs=2, cameras=[], progress=False,
                               fsync=False))
    reader = DatasetReader(ds)
    policy = make_policy("mlp", reader.features, reader.meta.stats, {"hidden": [32]})
    return policy.save(tmp / "run" / "checkpoints" / "last")


def _eval(ckpt: Path, out: Path, **kw) -> dict:
    opts = {"task": "lift", "episodes": 4, "num_envs": 2, "max_episode_steps": 20, "progress": False, **kw}
    return run(EvalConfig(policy=str(ckpt), out=str(out), **opts))


def test_metrics_exact_count_and_identical_reruns(ckpt, tmp_path):
    r = _eval(ckpt, tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved == r
    assert r["episodes"] == 4 and len(r["per_episode"]) == 4
    assert [e["episode"] for e in r["per_episode"]] == [0, 1, 2, 3]
    types = {"task": str, "policy": str, "policy_type": str, "successes": int, "success_rate": float,
             "mean_episode_length": float, "stage_reach_rates": dict, "seed": int, "wall_s": float, "env": dict,
             "config": dict, "videos": list, "per_episode": list, "max_episode_steps": int, "env_source": str}
    for key, t in types.items():
        assert isinstance(r[key], t), (key, r[key])
    assert r["task"] == "lift" and r["policy_type"] == "mlp" and r["seed"] == 1000
    lo, hi = r["ci95"]
    assert 0.0 <= lo <= r["success_rate"] <= hi <= 1.0
    assert list(r["stage_reach_rates"]) == ["reach", "grasp", "lift"]
    assert r["stage_reach_rates"]["reach"] == 1.0  # every episode starts in the first stage
    assert r["max_episode_steps"] == 20
    for e in r["per_episode"]:
        assert 1 <= e["length"] <= 20
        assert (e["steps_to_success"] is not None) == e["success"]
    if r["successes"] == 0:
        assert r["mean_time_to_success_s"] is None and r["mean_steps_to_success"] is None
    assert r["videos"] == [] and not list((tmp_path / "a").glob("*.mp4"))

    again = _eval(ckpt, tmp_path / "b")
    volatile = ("wall_s", "out", "metrics", "config")
    assert {k: v for k, v in again.items() if k not in volatile} == {k: v for k, v in r.items() if k not in volatile}

    text = format_result(r)
    for part in ("lift", "mlp", "success rate", "95% CI", "reach", str(tmp_path / "a" / "metrics.json")):
        assert part in text


def test_more_episodes_than_envs(ckpt, tmp_path):
    r = _eval(ckpt, tmp_path, episodes=5, max_episode_steps=6)
    rows = r["per_episode"]
    assert [e["episode"] for e in rows] == [0, 1, 2, 3, 4]
    assert r["num_envs"] == 2
    # untrained: every episode runs into the limit, both envs end together, numbers go out in env order
    if all(not e["success"] for e in rows):
        assert [e["env"] for e in rows] == [0, 1, 0, 1, 0]
        assert all(e["length"] == 6 for e in rows)


class _FakeEnv:
    """Two envs whose episodes end after fixed lengths (env 0: 3 steps, env 1: 5 steps, a success)."""

    num_envs = 2
    lengths = np.array([3, 5])
    task = SimpleNamespace(stages=("start", "middle", "end"))

    def __init__(self):
        self.t = np.zeros(2, np.int64)

    def reset(self, seed=None):
        return {"x": np.zeros(2)}, {"stage": np.zeros(2, np.int64), "success": np.zeros(2, bool)}

    def step(self, action):
        self.t += 1
        done = self.t >= self.lengths
        success = done & (np.arange(2) == 1)
        stage = np.minimum(self.t, 2)
        self.t[done] = 0
        return {"x": self.t.astype(float)}, np.zeros(2), success, done & ~success, {"stage": stage, "success": success}


class _FakeEngine:
    def __init__(self):
        self.resets = []

    def act(self, obs):
        return np.zeros((2, 1))

    def reset(self, env_ids=None):
        self.resets.append(None if env_ids is None else sorted(int(i) for i in env_ids))


def test_rollout_accounting_with_uneven_episodes(tmp_path):
    engine = _FakeEngine()
    cfg = EvalConfig(policy="unused", episodes=5, progress=False)
    rows, videos = _rollout(_FakeEnv(), engine, cfg, "fake", tmp_path)
    # t=3: env0 ends ep0 -> ep2; t=5: env1 ends ep1 -> ep3; t=6: env0 ends ep2 -> ep4; t=9: ep4; t=10: ep3
    assert [(e["episode"], e["env"], e["length"], e["success"]) for e in rows] == [
        (0, 0, 3, False), (1, 1, 5, True), (2, 0, 3, False), (3, 1, 5, True), (4, 0, 3, False)]
    assert rows[1]["steps_to_success"] == 5 and rows[0]["steps_to_success"] is None
    assert [e["max_stage_name"] for e in rows] == ["end"] * 5
    assert engine.resets[:4] == [None, [0], [1], [0]]
    assert videos == []


def test_video_per_episode(ckpt, tmp_path):
    r = _eval(ckpt, tmp_path, episodes=3, max_episode_steps=5, video=True, video_episodes=2, video_size=(48, 64))
    from robolearn.video import read_mp4

    names = sorted(Path(v).name for v in r["videos"])
    assert len(names) == 2 and names[0].startswith("episode_0_") and names[1].startswith("episode_1_")
    for row in r["per_episode"][:2]:
        name = Path(row["video"]).name
        assert name == f"episode_{row['episode']}_{'success' if row['success'] else 'failure'}.mp4"
        frames = read_mp4(row["video"])
        assert frames.shape[1:] == (48, 64, 3)
        assert len(frames) == row["length"] + 1  # the first state, then one frame per step
    assert "video" not in r["per_episode"][2]


def test_task_from_run_dir(ckpt, tmp_path):
    run_dir = ckpt.parent.parent
    (run_dir / "train_config.json").write_text(json.dumps({"dataset": str(run_dir.parent / "d")}))
    try:
        r = run(EvalConfig(policy=str(ckpt), episodes=2, num_envs=2, max_episode_steps=3, out=str(tmp_path),
                           progress=False))
    finally:
        (run_dir / "train_config.json").unlink()
    assert r["task"] == "lift" and r["env_source"].startswith("recorded env")


def test_errors(ckpt, tmp_path):
    with pytest.raises(RobolearnError, match="no such checkpoint"):
        run(EvalConfig(policy=str(tmp_path / "nope"), task="lift", progress=False))
    with pytest.raises(ConfigError, match="name the task"):
        run(EvalConfig(policy=str(ckpt), progress=False))
    with pytest.raises(UnknownNameError, match="Did you mean 'lift'"):
        run(EvalConfig(policy=str(ckpt), task="lfit", progress=False))
    with pytest.raises(ConfigError, match="episodes"):
        run(EvalConfig(policy=str(ckpt), task="lift", episodes=0))


def test_policy_cameras_become_env_cameras():
    from robolearn.data.format import Feature

    feats = {"observation.state": Feature("float32", (23,)), "observation.images.front": Feature("video", (96, 128, 3)),
             "observation.images.wrist": Feature("video", (96, 128, 3)), "action": Feature("float32", (7,))}
    need = policy_env_overrides(feats)
    assert need["cameras"] == ["front", "wrist"] and need["image_size"] == (96, 128) and not need["depth"]
    feats["observation.images.wrist"] = Feature("video", (64, 64, 3))
    with pytest.raises(ConfigError, match="several sizes"):
        policy_env_overrides(feats)


def test_prefetch_runs_one_control_loop():
    with pytest.raises(ConfigError, match="num_envs=1"):
        EvalConfig(policy="p", prefetch=2).validate()
    with pytest.raises(ConfigError, match="prefetch=-1"):
        EvalConfig(policy="p", prefetch=-1, num_envs=1).validate()
    EvalConfig(policy="p", prefetch=2, num_envs=1).validate()
