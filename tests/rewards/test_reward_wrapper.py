"""RewardWrapper around the native vector env: shapes, the shaped reward against an independent replay of
its definition (a second engine scoring the same frames), auto-reset on the final observation, and the
refusals of an env that does not fit the model."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.errors import ConfigError
from robolearn.inference.engine import InferenceEngine
from robolearn.rewards.shaping import ShapingConfig
from robolearn.rewards.wrapper import RewardWrapper
from robolearn.sim.registry import make_env

CAM = "observation.images.front"
ATOL = 1e-5


def _env(**kw):
    kw = {"num_envs": 2, "cameras": ["front"], "image_size": (32, 32), "seed": 0, "num_threads": 1, **kw}
    return make_env("pick_place", **kw)


def _reached(obs, info, done, keys):
    out = {k: np.array(obs[k]) for k in keys}
    for i in np.flatnonzero(done):
        for k in keys:
            out[k][i] = info["final_obs"][i][k]
    return out


class Replay:
    """What the wrapper should compute, from its definition, with its own engine."""

    def __init__(self, model, n, cfg):
        self.keys, self.cfg = model.config.obs_keys, cfg
        self.engine = InferenceEngine(model, num_envs=n, device="cpu")

    def reset(self, obs):
        self.engine.reset()
        self.phi = self.cfg.scale * self.engine.score(obs)["progress"].astype(np.float64)
        return self.phi

    def step(self, obs, env_reward, terminated, truncated, info):
        done = terminated | truncated
        out = self.engine.score(_reached(obs, info, done, self.keys))
        phi_next = self.cfg.scale * out["progress"].astype(np.float64)
        if self.cfg.sparse == "success":
            sparse = np.asarray(info["success"], np.float64)
        elif self.cfg.sparse == "env":
            sparse = np.asarray(env_reward, np.float64)
        else:
            sparse = np.zeros(len(done))
        sparse = self.cfg.sparse_weight * sparse
        nxt = np.where(terminated, 0.0, phi_next) if self.cfg.terminal_potential == "zero" else phi_next
        shaping = self.cfg.gamma * nxt - self.phi
        self.phi = phi_next.copy()
        ended = np.flatnonzero(done)
        if len(ended):
            self.engine.reset(ended)
            first = self.engine.score({k: obs[k][ended] for k in self.keys}, env_ids=ended)
            self.phi[ended] = self.cfg.scale * first["progress"]
        return out, sparse, shaping


def test_wrapper_with_the_expert_until_success(reward_model):
    """Drive both envs with the scripted expert through a successful episode and into the next one."""
    env = _env(max_episode_steps=80)
    cfg = ShapingConfig(mode="potential", gamma=0.9, scale=2.0)
    wrapped = RewardWrapper(env, reward_model, cfg, device="cpu")
    replay = Replay(reward_model, 2, cfg)
    try:
        obs, info = wrapped.reset(seed=0)
        assert obs[CAM].shape == (2, 32, 32, 3) and obs[CAM].dtype == np.uint8
        assert info["progress"].shape == (2,) and info["learned_stage"].shape == (2,)
        np.testing.assert_allclose(2.0 * info["progress"], replay.reset(obs), atol=ATOL)
        assert wrapped.num_envs == 2 and wrapped.task.name == "pick_place"  # the env's attributes pass through
        expert = env.task.make_expert(2, env.cfg.max_dpos, env.cfg.max_drot)
        terminated_seen = np.zeros(2, bool)
        for _ in range(90):
            a, _ = expert.act(env.state)
            obs, reward, terminated, truncated, info = wrapped.step(env.expert_action(a))
            done = terminated | truncated
            assert reward.shape == (2,) and reward.dtype == np.float32
            terms = info["reward_terms"]
            np.testing.assert_array_equal(reward, terms["learned/total"])
            assert {"learned/sparse", "learned/shaping", "learned/progress"} <= set(terms)
            assert set(terms) - {k for k in terms if k.startswith("learned/")}  # the env's own terms are kept
            assert info["env_reward"].shape == (2,)
            out, sparse, shaping = replay.step(obs, info["env_reward"], terminated, truncated, info)
            np.testing.assert_allclose(terms["learned/progress"], out["progress"], atol=ATOL)
            np.testing.assert_allclose(info["progress"], out["progress"], atol=ATOL)
            np.testing.assert_array_equal(info["learned_stage"], out["stage"])
            np.testing.assert_allclose(terms["learned/sparse"], sparse, atol=1e-6)
            np.testing.assert_allclose(terms["learned/shaping"], shaping, atol=ATOL)
            np.testing.assert_allclose(reward, sparse + shaping, atol=ATOL)
            for i in np.flatnonzero(terminated):
                # success ends the episode: sparse 1, Phi(terminal) = 0, so the shaping term is -Phi(s)
                assert terms["learned/sparse"][i] == 1.0
                assert terms["learned/shaping"][i] < 0
                # the progress reported is the final observation's, not the next episode's first
                assert not np.array_equal(info["final_obs"][i][CAM], obs[CAM][i])
            if done.any():
                expert.reset(np.flatnonzero(done))
            terminated_seen |= terminated
            if terminated_seen.all() and not done.any():
                break
        assert terminated_seen.all(), "the expert should finish pick_place within 80 steps"
        # after the auto-reset the wrapper's potential is the new episode's first frame's
        np.testing.assert_allclose(wrapped._phi, replay.phi, atol=ATOL)
    finally:
        wrapped.close()


def test_wrapper_truncation_keeps_the_final_potential(reward_model):
    env = _env(max_episode_steps=3)
    cfg = ShapingConfig(mode="potential", gamma=0.5, sparse="env", sparse_weight=0.5)
    wrapped = RewardWrapper(env, reward_model, cfg, device="cpu")
    replay = Replay(reward_model, 2, cfg)
    try:
        obs, _ = wrapped.reset(seed=1)
        replay.reset(obs)
        rng = np.random.default_rng(0)
        truncations = 0
        for _ in range(7):
            obs, reward, terminated, truncated, info = wrapped.step(rng.uniform(-1, 1, (2, 7)).astype(np.float32))
            phi_before = replay.phi.copy()
            out, sparse, shaping = replay.step(obs, info["env_reward"], terminated, truncated, info)
            np.testing.assert_allclose(reward, sparse + shaping, atol=ATOL)
            np.testing.assert_allclose(info["reward_terms"]["learned/sparse"], 0.5 * info["env_reward"], atol=1e-6)
            for i in np.flatnonzero(truncated):
                truncations += 1
                # not terminal: gamma * Phi(final observation) - Phi(s), with Phi(final) > 0
                want = 0.5 * out["progress"][i] - phi_before[i]
                assert info["reward_terms"]["learned/shaping"][i] == pytest.approx(want, abs=ATOL)
                assert out["progress"][i] > 0
        assert truncations == 4  # both envs at steps 3 and 6
    finally:
        wrapped.close()


def test_wrapper_sparse_none_and_progress_mode(reward_model):
    env = _env(num_envs=1, max_episode_steps=5)
    wrapped = RewardWrapper(env, reward_model, ShapingConfig(mode="progress", sparse="none"), device="cpu")
    try:
        wrapped.reset(seed=0)
        _, reward, _, _, info = wrapped.step(np.zeros((1, 7), np.float32))
        assert info["reward_terms"]["learned/sparse"].tolist() == [0.0]
        np.testing.assert_allclose(reward, info["reward_terms"]["learned/progress"], atol=1e-6)
    finally:
        wrapped.close()


def test_env_without_the_camera_is_refused(reward_model):
    env = make_env("pick_place", num_envs=1, seed=0)
    try:
        with pytest.raises(ConfigError, match=r"observation.images.front.*cameras=\['front'\]"):
            RewardWrapper(env, reward_model, device="cpu")
    finally:
        env.close()


def test_env_with_another_image_size_is_refused(reward_model):
    env = _env(num_envs=1, image_size=(48, 48))
    try:
        with pytest.raises(ConfigError, match="image_size"):
            RewardWrapper(env, reward_model, device="cpu")
    finally:
        env.close()


def test_env_of_another_task_is_refused(reward_model):
    env = make_env("lift", num_envs=1, cameras=["front"], image_size=(32, 32), seed=0)
    try:
        with pytest.raises(ConfigError) as e:
            RewardWrapper(env, reward_model, device="cpu")
        msg = str(e.value)
        assert "'lift' has stages reach > grasp > lift," in msg
        assert "trained on reach > grasp > lift > transport > place" in msg
        with pytest.raises(ConfigError, match="gamma"):
            RewardWrapper(env, reward_model, ShapingConfig(gamma=2.0), device="cpu")
    finally:
        env.close()


def test_partial_reset_keeps_the_other_envs_history(reward_model):
    env = _env(max_episode_steps=50)
    wrapped = RewardWrapper(env, reward_model, ShapingConfig(gamma=0.9), device="cpu")
    replay = Replay(reward_model, 2, ShapingConfig(gamma=0.9))
    try:
        obs, _ = wrapped.reset(seed=0)
        replay.reset(obs)
        rng = np.random.default_rng(0)
        for _ in range(6):
            obs, *_ = wrapped.step(rng.uniform(-1, 1, (2, 7)).astype(np.float32))
            replay.engine.score(obs)
        obs, _ = wrapped.reset(options={"reset_mask": np.array([True, False])})  # env 0 only
        replay.engine.reset([0])
        replay.engine.score({k: obs[k][[0]] for k in replay.keys}, env_ids=[0])
        obs, _, _, _, info = wrapped.step(rng.uniform(-1, 1, (2, 7)).astype(np.float32))
        want = replay.engine.score(obs)["progress"]
        # env 1 went on with its episode: its window still holds its earlier frames
        np.testing.assert_allclose(info["progress"], want, atol=ATOL)
    finally:
        wrapped.close()


def test_a_nan_reward_stops_with_the_step_and_term_named(reward_model, tmp_path):
    """A reward model that outputs NaN (here: NaN weights) is refused before a learner sees the reward."""
    import torch

    from robolearn.rewards import load_reward_model
    from robolearn.rewards.wrapper import RewardError

    reward_model.save(tmp_path / "m")
    broken = load_reward_model(tmp_path / "m")
    env = _env()
    wrapped = RewardWrapper(env, broken, device="cpu")
    try:
        wrapped.reset(seed=0)
        wrapped.step(np.zeros((2, 7), np.float32))
        with torch.no_grad():
            broken.out.bias.fill_(float("nan"))
        with pytest.raises(RewardError, match=r"step 2: the learned reward's 'progress' term is nan for envs \[0, 1\]"):
            wrapped.step(np.zeros((2, 7), np.float32))
        fresh = RewardWrapper(_env(), broken, device="cpu")
        with pytest.raises(RewardError, match="step 0"):  # a fresh wrapper refuses it at reset already
            fresh.reset(seed=0)
        fresh.close()
    finally:
        env.close()
