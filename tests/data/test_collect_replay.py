"""`robolearn collect` records what the expert did, labelled; `robolearn replay` reproduces it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data import DatasetReader
from robolearn.data.collect import CollectConfig, run
from robolearn.data.replay import ReplayConfig, format_result
from robolearn.data.replay import run as replay
from robolearn.errors import ConfigError


@pytest.fixture(scope="module")
def lift(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "lift"
    run(CollectConfig(task="lift", episodes=5, out=str(out), num_envs=3, num_threads=2, seed=3,
                      cameras=["front"], image_size=(32, 32), failure_fraction=0.4,
                      failure_modes=["drop", "stall"], action_noise_std=0.05, progress=False))
    return out


@pytest.mark.parametrize("task", ["lift", "pick_place", "peg_insert"])
def test_collect_every_native_task(tmp_path, task):
    out = run(CollectConfig(task=task, episodes=2, out=str(tmp_path / task), num_envs=2, cameras=[],
                            progress=False))
    r = DatasetReader(out)
    assert r.num_episodes == 2
    assert r.meta.stage_names == list(__import__("robolearn.sim.registry", fromlist=["x"]).get_task_class(
        task).stages)
    for e in range(2):
        assert r.meta.success(e) is True  # the expert succeeds without noise or failures
        ann = r.meta.stages(e)
        assert ann.source == "expert" and ann.start_frames[0] == 0 and ann.end_frames[-1] == r.lengths[e] - 1
        assert ann.names[-1] == r.meta.stage_names[-1]  # reached the last stage
        ep = r.episode(e)
        assert ep["next.success"][-1, 0] and ep["next.done"][-1, 0] and not ep["next.done"][:-1].any()


def test_collect_labels_and_layout(lift):
    r = DatasetReader(lift)
    assert r.num_episodes == 5
    assert set(r.features) == {"observation.state", "observation.environment_state", "observation.images.front",
                               "action", "next.reward", "next.done", "next.success"}
    assert r.meta.robolearn["env"]["task"] == "lift" and r.meta.robolearn["stages"] == ["reach", "grasp", "lift"]
    infos = [r.meta.episode_info(e) for e in range(5)]
    assert any(i["failure"] for i in infos), "failure_fraction=0.4 over 5 episodes drew no failure (seed 3)"
    for e, info in enumerate(infos):
        ep = r.episode(e)
        assert np.abs(ep["action"]).max() <= 1.0
        assert r.meta.success(e) == bool(ep["next.success"][-1, 0])
        if info["failure"]:
            assert info["failure_step"] >= 0
            assert not r.meta.success(e)
        assert ep["observation.images.front"].shape == (r.lengths[e], 32, 32, 3)
    # one task string, the task's description
    assert r.meta.tasks == [r.meta.task(0)] and "cube" in r.meta.task(0)
    assert (lift / "meta" / "temporal_proportions_sparse.json").is_file()


def test_replay_is_exact(lift):
    """The determinism test: every recorded episode replays to the recorded states."""
    r = DatasetReader(lift)
    for e in range(r.num_episodes):
        res = replay(ReplayConfig(dataset=str(lift), episode=e))
        assert res["initial_state_divergence"] <= 1e-12
        assert res["max_state_divergence"] <= 1e-6
        assert res["final_state_divergence"] <= 1e-6
        assert res["replayed_success"] == res["recorded_success"]
    assert "final physics state divergence" in format_result(res)


def test_replay_video(lift, tmp_path):
    from robolearn.video import read_mp4

    res = replay(ReplayConfig(dataset=str(lift), episode=1, video=str(tmp_path / "r.mp4")))
    frames = read_mp4(res["video"])
    n = DatasetReader(lift).lengths[1]
    assert frames.shape == (n, 32, 64, 3)  # recording | replay
    left, right = frames[..., :32, :].astype(int), frames[..., 32:, :].astype(int)
    assert np.abs(left - right).mean() < 6  # the same pictures, up to two rounds of lossy coding


def test_replay_refuses_what_it_cannot_replay(lift, tmp_path):
    from robolearn.data import DatasetError, DatasetWriter, EpisodeRecord, Feature

    with pytest.raises(DatasetError, match="episode 99 does not exist"):
        replay(ReplayConfig(dataset=str(lift), episode=99))
    with DatasetWriter.create(tmp_path / "x", {"action": Feature("float32", (2,))}, 10) as w:
        w.add_episode({"action": np.zeros((3, 2), np.float32)}, EpisodeRecord("t"))
    with pytest.raises(DatasetError, match="not recorded in robolearn's sim"):
        replay(ReplayConfig(dataset=str(tmp_path / "x")))


def test_collect_config_errors(tmp_path):
    for bad in [{"failure_fraction": 1.5}, {"episodes": 0}, {"action_noise_std": -1.0},
                {"failure_modes": ["explode"], "failure_fraction": 0.5}]:
        with pytest.raises(ConfigError):
            run(CollectConfig(out=str(tmp_path / "x"), **bad))
    with pytest.raises(ConfigError, match="no scripted expert"):
        run(CollectConfig(task="robosuite/Lift", out=str(tmp_path / "y"), episodes=1, cameras=[]))
