"""ResidualVecEnv: the base acts inside the env, SB3 learns the correction on the residual's input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.errors import ConfigError
from robolearn.inference.engine import InferenceEngine
from robolearn.policies import make_policy
from robolearn.rl.residual import ResidualPolicy
from robolearn.rl.wrappers import SQUASH_BOUND, ResidualVecEnv
from robolearn.sim.registry import make_env
from robolearn.sim.sb3 import SB3VecEnv


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader

    root = collect(CollectConfig(task="lift", episodes=2, out=str(tmp_path_factory.mktemp("lift") / "ds"),
                                 cameras=[], num_envs=2, fsync=False, progress=False))
    r = DatasetReader(root)
    torch.manual_seed(0)
    policy = make_policy("mlp", r.features, r.meta.stats, {"obs_keys": ["observation.state"], "hidden": [32],
                                                            "horizon": 4, "n_action_steps": 2})
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return policy.eval()


def _residual(base, env, scale=0.1):
    sp = env.single_action_space
    return ResidualPolicy.from_base(base, action_low=sp.low, action_high=sp.high, scale=scale, hidden=[16])


@pytest.mark.parametrize("squash", [True, False])
def test_zero_residual_replays_the_base_and_observes_its_input(base, squash):
    env = make_env("lift", num_envs=3, seed=0, max_episode_steps=7)
    res = _residual(base, env, scale=0.2)
    venv = ResidualVecEnv(SB3VecEnv(env), res, squash=squash, device="cpu")
    bound = SQUASH_BOUND if squash else 1.0
    assert venv.observation_space.shape == (res.input_dim,) and venv.action_space.high[0] == bound
    # the same env, seed and base alone: the executed actions must be the base's, tick for tick
    ref_env = make_env("lift", num_envs=3, seed=0, max_episode_steps=7)
    ref = InferenceEngine(base, 3, device="cpu")
    ref_obs, _ = ref_env.reset(seed=0)
    venv.seed(0)
    x = venv.reset()
    try:
        for t in range(10):
            a_raw = ref.act(ref_obs)
            np.testing.assert_allclose(venv.base_action, a_raw, atol=1e-6)  # the same base, the same history
            a_ref = np.clip(a_raw, -1, 1)
            want_x = res.residual_input({"observation.state": torch.from_numpy(ref_obs["observation.state"])},
                                        torch.from_numpy(venv.base_action)).numpy()
            np.testing.assert_allclose(x, want_x, atol=1e-6)
            x, rewards, dones, infos = venv.step(np.zeros((3, 7), np.float32))
            np.testing.assert_allclose(np.stack([i["residual_action"] for i in infos]), 0.0)
            ref_obs, _, term, trunc, _ = ref_env.step(a_ref)
            assert (dones == (term | trunc)).all()
            if dones.any():
                assert t == 6  # max_episode_steps=7
                for i in np.flatnonzero(dones):
                    assert infos[i]["terminal_observation"].shape == (res.input_dim,)
                ref.reset(np.flatnonzero(dones))
    finally:
        venv.close()
        ref_env.close()


def test_corrections_are_scaled_and_clipped(base):
    env = make_env("lift", num_envs=2, seed=1)
    res = _residual(base, env, scale=0.1)
    venv = ResidualVecEnv(SB3VecEnv(env), res, squash=True, device="cpu")
    venv.reset()
    try:
        b = venv.base_action.copy()
        _, _, _, infos = venv.step(np.full((2, 7), 0.5, np.float32))
        np.testing.assert_allclose(infos[0]["residual_action"], 0.1 * np.tanh(0.5), rtol=1e-5)
        np.testing.assert_allclose(infos[0]["base_action"], b[0])
        with pytest.raises(ConfigError, match="NaN"):
            venv.step(np.full((2, 7), np.nan, np.float32))
    finally:
        venv.close()


def test_ppo_learns_on_it_and_the_actor_is_the_residual(base, tmp_path):
    from stable_baselines3 import PPO

    env = make_env("lift", num_envs=4, seed=2)
    res = _residual(base, env, scale=0.1)
    venv = ResidualVecEnv(SB3VecEnv(env), res, squash=True, device="cpu")
    model = PPO("MlpPolicy", venv, n_steps=16, batch_size=32, n_epochs=1, device="cpu", seed=0,
                policy_kwargs={"net_arch": {"pi": [16], "vf": [16]}, "activation_fn": torch.nn.Tanh})
    model.learn(64)
    # copy the learned actor into the residual: its deterministic action is scale * tanh(actor(x))
    pi = [m for m in model.policy.mlp_extractor.policy_net if isinstance(m, torch.nn.Linear)]
    layers = [m for m in res.residual if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for dst, src in zip(layers, pi + [model.policy.action_net]):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    x = venv.reset()
    mean, _ = model.predict(x, deterministic=True)
    corr = res.correction(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(corr, 0.1 * np.tanh(np.clip(mean, -SQUASH_BOUND, SQUASH_BOUND)), atol=1e-5)
    venv.close()


def test_mismatched_envs_are_refused(base):
    env = make_env("lift", num_envs=2, seed=0)
    res = _residual(base, env)
    with pytest.raises(ConfigError, match="flatten=False"):
        ResidualVecEnv(SB3VecEnv(env, flatten=True), res)
    joint = make_env("lift", num_envs=2, seed=0, action_mode="joint_pos")
    try:
        with pytest.raises(ConfigError, match="action"):
            ResidualVecEnv(SB3VecEnv(joint), res)
    finally:
        joint.close()
        env.close()
