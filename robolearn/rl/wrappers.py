"""stable-baselines3 `VecEnvWrapper` that puts a frozen base policy under an RL learner.

    venv = SB3VecEnv(RewardWrapper(make_env(...), reward_model))      # or without the learned reward
    venv = ResidualVecEnv(venv, residual_policy, squash=True)          # PPO; squash=False for SAC
    PPO("MlpPolicy", venv, ...)

Every step, the base policy acts for all envs in one batched call through the inference engine (each
env keeps its own observation history and chunk queue); the learner observes the residual's input
x = [normalized observation.state, base action in [-1, 1]] (`ResidualPolicy.residual_input`, the same
vector the deployed policy computes) and its action a becomes the correction:

    executed = clip(base + scale * tanh(a), low, high)    squash=True  (PPO: a Gaussian sample in [-5, 5])
    executed = clip(base + scale * a, low, high)          squash=False (SAC: a is already tanh-squashed)

so the trained actor network, with tanh on its output, is exactly `ResidualPolicy.residual`. The
infos carry `base_action` and `residual_action` (the correction applied) of every env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper

from robolearn.errors import ConfigError

SQUASH_BOUND = 5.0
"""action bound the learner sees with squash=True (tanh(5) = 0.99991)"""


class ResidualVecEnv(VecEnvWrapper):
    """The base policy inside the env, the residual's input as the observation (module docstring)."""

    def __init__(self, venv, policy, squash: bool = True, device: str = "auto"):
        from robolearn.inference.engine import InferenceEngine
        from robolearn.rl.residual import ResidualPolicy
        from robolearn.sim.sb3 import SB3VecEnv

        if not isinstance(policy, ResidualPolicy):
            raise ConfigError("ResidualVecEnv needs a ResidualPolicy (ResidualPolicy.from_base(load_policy(DIR)))")
        if not isinstance(venv, SB3VecEnv) or venv.flatten:
            raise ConfigError("ResidualVecEnv wraps an SB3VecEnv with dict observations (flatten=False): the base "
                              "policy reads the env's own observation keys")
        self.policy = policy.eval()
        need = list(dict.fromkeys(list(policy.base.config.obs_keys) + list(policy.config.residual_keys)))
        missing = [k for k in need if k not in venv.keys]
        if missing:
            raise ConfigError(f"the policy reads {', '.join(missing)}, which the env does not observe (it has "
                              f"{', '.join(venv.keys)}); make the env with the cameras and features the base "
                              "was trained on")
        space = venv.action_space
        low, high = policy.action_low.cpu().numpy(), policy.action_high.cpu().numpy()
        if space.shape != low.shape or not (np.allclose(space.low, low) and np.allclose(space.high, high)):
            raise ConfigError(f"the env's action space {space} differs from the policy's action bounds "
                              f"{low.tolist()}..{high.tolist()}; the base was trained for another action mode")
        self.need, self.squash = need, squash
        self.sb3_keys = {k: venv.key_map[k] for k in need}
        self.engine = InferenceEngine(policy.base, num_envs=venv.num_envs, device=device)
        self.device = self.engine.device
        self.low, self.high, self.scale = low, high, policy.scales.cpu().numpy()
        d = policy.input_dim
        obs_space = gym.spaces.Box(-np.inf, np.inf, (d,), np.float32)
        a = low.shape[0]
        # SB3 wants finite bounds; with squash, |a| > SQUASH_BOUND changes tanh(a) by < 1e-4 (SB3 clips there)
        bound = SQUASH_BOUND if squash else 1.0
        act_space = gym.spaces.Box(-bound * np.ones(a, np.float32), bound * np.ones(a, np.float32), dtype=np.float32)
        super().__init__(venv, observation_space=obs_space, action_space=act_space)
        self.base_action = np.zeros((venv.num_envs, a), np.float32)

    def _ours(self, obs: dict) -> dict[str, np.ndarray]:
        return {k: np.asarray(obs[self.sb3_keys[k]]) for k in self.need}

    def _x(self, obs: dict[str, np.ndarray], base: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            now = {k: torch.as_tensor(obs[k], device=self.device) for k in self.policy.config.residual_keys}
            x = self.policy.residual_input(now, torch.as_tensor(base, device=self.device))
        return x.cpu().numpy().astype(np.float32)

    def reset(self):
        obs = self._ours(self.venv.reset())
        self.engine.reset()
        self.base_action = self.engine.act(obs)
        return self._x(obs, self.base_action)

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions, np.float32)
        if not np.isfinite(a).all():
            raise ConfigError("the RL learner produced a NaN or inf action; lower the learning rate")
        corr = self.scale * (np.tanh(a) if self.squash else np.clip(a, -1.0, 1.0))
        self._corr = corr
        self.venv.step_async(np.clip(self.base_action + corr, self.low, self.high))

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        obs = self._ours(obs)
        ended = np.flatnonzero(dones)
        for i in ended:  # bootstrap targets of truncated episodes read the final state with the last base action
            term = infos[i]["terminal_observation"]
            final = {k: np.asarray(term[self.sb3_keys[k]])[None] for k in self.policy.config.residual_keys}
            infos[i]["terminal_observation"] = self._x(final, self.base_action[i:i + 1])[0]
        for i, info in enumerate(infos):
            info["base_action"] = self.base_action[i]
            info["residual_action"] = self._corr[i]
        if len(ended):
            self.engine.reset(ended)
        self.base_action = self.engine.act(obs)
        return self._x(obs, self.base_action), rewards, dones, infos
