"""Reward models in the inference engine: live per-env scoring (one frame per tick, embedding histories)
agrees with offline scoring of whole episodes, across env subsets and per-env resets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.errors import ConfigError
from robolearn.inference.engine import InferenceEngine
from robolearn.policies.base import ObservationError
from robolearn.rewards.frames import EpisodeFrames

ATOL = 1e-5


def _offline(model, reader, episodes):
    table = EpisodeFrames(reader, model.config.obs_keys, episodes)
    scores = InferenceEngine(model, num_envs=1, device="cpu").score_episodes(table)
    return table, scores


def _frame(table, key_rows):
    """{key: (n, *shape)} raw frames (cameras uint8 (n, H, W, 3), as envs give them) of table rows."""
    return {k: table.data[k][np.asarray(key_rows)] for k in table.keys}


def test_live_equals_offline_one_env(reward_model, reader):
    ep = 0
    table, scores = _offline(reward_model, reader, [ep])
    (s,) = scores
    n = int(reader.lengths[ep])
    assert set(s) == {"reward", "progress", "stage", "stage_probs"}
    assert s["progress"].shape == (n,) and s["stage"].shape == (n,) and s["stage_probs"].shape == (n, 5)
    assert table.data["observation.images.front"].dtype == np.uint8
    engine = InferenceEngine(reward_model, num_envs=1, device="cpu")
    engine.reset()
    live = {k: [] for k in ("progress", "stage", "reward")}
    for t in range(n):
        out = engine.score(_frame(table, [t]))
        assert out["progress"].shape == (1,)
        for k in live:
            live[k].append(out[k][0])
    np.testing.assert_allclose(live["progress"], s["progress"], atol=ATOL)
    np.testing.assert_allclose(live["reward"], s["reward"], atol=ATOL)
    np.testing.assert_array_equal(live["stage"], s["stage"])
    # the engine is reusable: a reset starts the episode's history afresh and gives the same scores again
    engine.reset()
    again = [engine.score(_frame(table, [t]))["progress"][0] for t in range(12)]
    np.testing.assert_allclose(again, s["progress"][:12], atol=ATOL)


def test_live_without_reset_would_differ(reward_model, reader):
    """The history matters: feeding episode 1 right after episode 0 without a reset changes its early scores
    (so the equality above really checks the per-episode history)."""
    table, (s0, s1) = _offline(reward_model, reader, [0, 1])
    engine = InferenceEngine(reward_model, num_envs=1, device="cpu")
    for t in range(len(table)):
        out = engine.score(_frame(table, [t]))
    assert out["progress"][0] == pytest.approx(s1["progress"][-1], abs=ATOL)  # far from the edge: same
    engine.reset()
    for t in range(table.lengths[0]):
        engine.score(_frame(table, [t]))
    first = engine.score(_frame(table, [table.starts[1]]))["progress"][0]  # no reset in between
    assert abs(first - s1["progress"][0]) > 1e-6


def test_live_multi_env_subsets_and_reset_of_one_env(reward_model, reader):
    """3 envs play episodes 0, 1, 2; scored in changing subsets; env 1 is reset mid-way and plays episode 3
    from its start. Every env's scores equal the offline scores of the episode it plays."""
    table, scores = _offline(reward_model, reader, [0, 1, 2, 3])
    engine = InferenceEngine(reward_model, num_envs=3, device="cpu")
    engine.reset()
    plays = [0, 1, 2]  # the table episode each env plays
    t = [0, 0, 0]  # its frame
    got = {i: [] for i in range(4)}  # table episode -> live progress, in frame order
    switch = 20
    for tick in range(50):
        if tick == switch:
            engine.reset([1])
            plays[1], t[1] = 3, 0
        groups = [[0, 1, 2]] if tick % 3 == 0 else ([[0, 2], [1]] if tick % 3 == 1 else [[2], [1, 0]])
        for ids in groups:
            rows = [table.starts[plays[i]] + t[i] for i in ids]
            out = engine.score(_frame(table, rows), env_ids=np.array(ids))
            assert out["progress"].shape == (len(ids),)
            for j, i in enumerate(ids):
                got[plays[i]].append(out["progress"][j])
        for i in range(3):
            t[i] += 1
    np.testing.assert_allclose(got[0], scores[0]["progress"][:50], atol=ATOL)
    np.testing.assert_allclose(got[2], scores[2]["progress"][:50], atol=ATOL)
    np.testing.assert_allclose(got[1], scores[1]["progress"][:switch], atol=ATOL)
    np.testing.assert_allclose(got[3], scores[3]["progress"][:50 - switch], atol=ATOL)


def test_camera_layouts_agree(reward_model, reader):
    """(n, H, W, 3) uint8 and (n, 3, H, W) float in [0, 1] give the same scores."""
    table, _ = _offline(reward_model, reader, [0])
    cam = "observation.images.front"
    a = InferenceEngine(reward_model, num_envs=2, device="cpu")
    b = InferenceEngine(reward_model, num_envs=2, device="cpu")
    for t in range(10):
        raw = _frame(table, [t, 20 + t])
        chw = {**raw, cam: torch.from_numpy(raw[cam]).permute(0, 3, 1, 2).float() / 255.0}
        np.testing.assert_allclose(a.score(raw)["progress"], b.score(chw)["progress"], atol=ATOL)


def test_score_refuses_bad_input(reward_model, reader):
    table, _ = _offline(reward_model, reader, [0])
    engine = InferenceEngine(reward_model, num_envs=2, device="cpu")
    obs = _frame(table, [0, 1])
    with pytest.raises(ObservationError, match="observation.state"):
        engine.score({"observation.images.front": obs["observation.images.front"]})
    with pytest.raises(ObservationError, match="2 frames for 1 envs"):
        engine.score(obs, env_ids=[0])
    with pytest.raises(ObservationError, match="outside"):
        engine.score(_frame(table, [0]), env_ids=[2])
    bad = {**obs, "observation.state": obs["observation.state"].copy()}
    bad["observation.state"][0, 0] = np.nan
    with pytest.raises(ObservationError, match="NaN"):
        engine.score(bad)
    with pytest.raises(ConfigError, match="score"):
        engine.act(obs)
    with pytest.raises(ConfigError, match="reward model runs eagerly"):
        InferenceEngine(reward_model, num_envs=1, device="cpu", compile=True)


def test_policy_engine_refuses_score(reader):
    from robolearn.policies import make_policy

    policy = make_policy("mlp", reader.features, reader.meta.stats, {"obs_keys": ["observation.state"], "hidden": [8]})
    engine = InferenceEngine(policy, num_envs=1, device="cpu")
    with pytest.raises(ConfigError, match="policy"):
        engine.score({"observation.state": np.zeros((1, 23), np.float32)})
    with pytest.raises(ConfigError, match="reward model"):
        engine.score_episodes(None)
