"""What the residual learners add to stable-baselines3 (by subclassing, as the README says).

- `ResidualPPO`, `ResidualSAC`: the learner's gradient updates run with `train_threads` torch threads
  while rollouts run with one. On a small CPU the physics threads own the cores during a rollout
  (torch's idle OpenMP workers would spin against them), and they are idle during an update.
- `ResidualSAC` adds ResFiT's critic warm-up: the first `critic_warmup` gradient steps update only
  the critic ensemble (and its target), so the actor starts moving against a critic that has
  already fit the base's (and the demonstrations') returns instead of a random one. It also
  explores around the base from the first step: SB3's SAC acts uniformly at random in its action
  space until `learning_starts`, which for a residual means corrections of full scale in every
  dimension (the gripper's flips at random) and a replay buffer of failures; here the residual's own
  (zero-mean, small-std) actor acts, and `learning_starts` only delays the updates.
- `ResidualSAC.train` is SB3's SAC update with two changes for a residual. The actor (and the
  entropy coefficient) steps once every `policy_delay` critic updates (TD3's delayed policy updates:
  the critics settle between the actor's moves). And its loss adds `residual_penalty` x the mean
  squared deterministic correction, tanh(mean)^2, with the Q term divided by its batch's mean |Q|
  (TD3+BC's balance, the base being the behaviour to stay near): the actor moves off the base only
  where the critics promise more than the move costs.
- `LayerNormSACPolicy`: SB3's SAC policy whose critics put a LayerNorm after every hidden layer
  (RLPD, ResFiT): a plain MLP critic extrapolates to actions far from the replay data with large
  values, and the actor, ascending it, walks the residual away from the base within a few thousand
  updates. It slows the drift without stopping it (lift, 5k env steps without demos: success 62% ->
  14% without LayerNorm, 28% with it).
- `DemoReplayBuffer`: SB3's `NStepReplayBuffer` with demonstration transitions mixed into every
  batch (a fixed `demo_fraction` of each minibatch, as in RLPD / ResFiT's symmetric sampling); the
  demos live in their own n-step buffer, so returns never run across the online data's episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.buffers import NStepReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import SACPolicy

from robolearn.errors import ConfigError
from robolearn.training import torch_threads


class ResidualPPO(PPO):
    """SB3 PPO whose updates use `train_threads` torch threads (module docstring)."""

    train_threads: int | None = None

    def train(self) -> None:
        with torch_threads(self.train_threads):
            super().train()


class LayerNormSACPolicy(SACPolicy):
    """SB3's `SACPolicy` with a LayerNorm after each hidden Linear of every critic (module docstring)."""

    def make_critic(self, features_extractor=None):
        critic = super().make_critic(features_extractor)
        for i, q in enumerate(critic.q_networks):
            layers: list[torch.nn.Module] = []
            linears = [m for m in q if isinstance(m, torch.nn.Linear)]
            for m in q:
                layers.append(m)
                if isinstance(m, torch.nn.Linear) and m is not linears[-1]:
                    layers.append(torch.nn.LayerNorm(m.out_features))
            net = torch.nn.Sequential(*layers).to(self.device)
            setattr(critic, f"qf{i}", net)
            critic.q_networks[i] = net
        return critic


class ResidualSAC(SAC):
    """SB3 SAC with ResFiT's critic warm-up, exploration around the base from the first step, delayed
    actor updates, a pull of the actor towards the base, and `train_threads` torch threads for its
    updates (module docstring)."""

    train_threads: int | None = None

    def __init__(self, *args, critic_warmup: int = 0, actor_lr_scale: float = 1.0, policy_delay: int = 1,
                 residual_penalty: float = 0.0, **kwargs):
        if critic_warmup < 0:
            raise ConfigError(f"critic_warmup={critic_warmup} must be >= 0 gradient steps")
        if not (np.isfinite(actor_lr_scale) and actor_lr_scale > 0):
            raise ConfigError(f"actor_lr_scale={actor_lr_scale} must be > 0")
        if policy_delay < 1:
            raise ConfigError(f"policy_delay={policy_delay} must be at least 1 (critic steps per actor step)")
        if not (np.isfinite(residual_penalty) and residual_penalty >= 0):
            raise ConfigError(f"residual_penalty={residual_penalty} must be >= 0 (0: plain SAC's actor loss)")
        self.critic_warmup = int(critic_warmup)
        self.actor_lr_scale = float(actor_lr_scale)
        self.policy_delay = int(policy_delay)
        self.residual_penalty = float(residual_penalty)
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers) -> None:
        # the actor learns at actor_lr_scale x the critics' rate: it must not outrun the replay data its
        # critic has seen (a critic is only right near the actions it was trained on)
        super()._update_learning_rate(optimizers)
        actor_opt = getattr(getattr(self, "actor", None), "optimizer", None)
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            if opt is actor_opt:
                for group in opt.param_groups:
                    group["lr"] *= self.actor_lr_scale

    def _sample_action(self, learning_starts, action_noise=None, n_envs: int = 1):
        # learning_starts=0: never SB3's uniform warm-up actions (class docstring)
        return super()._sample_action(0, action_noise, n_envs)

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """SB3's SAC update (the same critic target: min over the target ensemble of the current actor's
        next action, minus the entropy term), except that the actor and the entropy coefficient step
        only after `critic_warmup` updates and then once every `policy_delay` critic steps, and that the
        actor's loss adds `residual_penalty` x the mean squared correction (module docstring)."""
        with torch_threads(self.train_threads):
            self.policy.set_training_mode(True)
            optimizers = [self.actor.optimizer, self.critic.optimizer]
            if self.ent_coef_optimizer is not None:
                optimizers.append(self.ent_coef_optimizer)
            self._update_learning_rate(optimizers)
            logs: dict[str, list[float]] = {"critic_loss": [], "ent_coef": []}
            for _ in range(gradient_steps):
                data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
                discounts = data.discounts if data.discounts is not None else self.gamma
                ent_coef = torch.exp(self.log_ent_coef.detach()) if self.log_ent_coef is not None \
                    else self.ent_coef_tensor
                with torch.no_grad():
                    next_actions, next_log_prob = self.actor.action_log_prob(data.next_observations)
                    next_q = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
                    next_q = torch.min(next_q, dim=1, keepdim=True)[0] - ent_coef * next_log_prob.reshape(-1, 1)
                    target = data.rewards + (1 - data.dones) * discounts * next_q
                current = self.critic(data.observations, data.actions)
                critic_loss = 0.5 * sum(F.mse_loss(q, target) for q in current)
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self.critic.optimizer.step()
                logs["critic_loss"].append(float(critic_loss.item()))
                logs["ent_coef"].append(float(ent_coef.item()))
                since = self._n_updates - self.critic_warmup
                if since >= 0 and since % self.policy_delay == 0:
                    self._actor_step(data.observations, ent_coef, logs)
                if self._n_updates % self.target_update_interval == 0:
                    polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                    polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)
                self._n_updates += 1
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/critic_warmup", float(self._n_updates <= self.critic_warmup))
        for name, values in logs.items():
            if values:
                self.logger.record(f"train/{name}", float(np.mean(values)))

    def _actor_step(self, obs: torch.Tensor, ent_coef: torch.Tensor, logs: dict[str, list[float]]) -> None:
        mean, log_std, kwargs = self.actor.get_action_dist_params(obs)
        actions_pi, log_prob = self.actor.action_dist.log_prob_from_params(mean, log_std, **kwargs)
        log_prob = log_prob.reshape(-1, 1)
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.backward()
            self.ent_coef_optimizer.step()
            logs.setdefault("ent_coef_loss", []).append(float(ent_coef_loss.item()))
        q_pi = torch.min(torch.cat(self.critic(obs, actions_pi), dim=1), dim=1, keepdim=True)[0]
        actor_loss = (ent_coef * log_prob - q_pi).mean()
        # the deterministic correction (tanh of the mean, in [-1, 1] of each dimension's scale)
        residual_sq = torch.tanh(mean).pow(2).mean()
        if self.residual_penalty > 0:  # TD3+BC's balance: the Q term over its mean magnitude
            actor_loss = actor_loss / q_pi.abs().mean().detach().clamp_min(1e-6) + self.residual_penalty * residual_sq
        self.actor.optimizer.zero_grad()
        actor_loss.backward()
        self.actor.optimizer.step()
        logs.setdefault("actor_loss", []).append(float(actor_loss.item()))
        logs.setdefault("residual_sq", []).append(float(residual_sq.item()))


@dataclass
class DemoTransitions:
    """Demonstrations as the residual learner's transitions: observations are the residual's inputs,
    actions the corrections that turn the base's action into the demonstrated one (in the learner's
    [-1, 1] action units, clipped: a demo that departs from the base by more than the residual's
    scale is only followed as far as the scale allows)."""

    observations: np.ndarray
    """(N, d) float32"""
    actions: np.ndarray
    """(N, a) float32 in [-1, 1]"""
    next_observations: np.ndarray
    """(N, d) float32"""
    rewards: np.ndarray
    """(N,) float32, the same reward the online envs give"""
    dones: np.ndarray
    """(N,) float32: 1 where the episode succeeded (a terminal state)"""
    timeouts: np.ndarray
    """(N,) float32: 1 on an episode's last kept transition when it did not succeed (bootstrapped)"""
    episodes: int = 0
    clipped_fraction: float = 0.0
    """share of demo steps whose correction exceeded the residual's scale in some action dimension"""
    reward_terms: dict[str, float] = field(default_factory=dict)
    """mean of each reward term over the transitions"""

    def __len__(self) -> int:
        return int(self.observations.shape[0])


class DemoReplayBuffer(NStepReplayBuffer):
    """`NStepReplayBuffer` whose every sampled batch holds `demo_fraction` demonstration transitions
    (module docstring). Without demos (or with fraction 0) it is exactly its parent."""

    def __init__(self, buffer_size, observation_space, action_space, device="auto", n_envs: int = 1,
                 optimize_memory_usage: bool = False, handle_timeout_termination: bool = True,
                 n_steps: int = 3, gamma: float = 0.99, demos: DemoTransitions | None = None,
                 demo_fraction: float = 0.5):
        super().__init__(buffer_size, observation_space, action_space, device=device, n_envs=n_envs,
                         optimize_memory_usage=optimize_memory_usage,
                         handle_timeout_termination=handle_timeout_termination, n_steps=n_steps, gamma=gamma)
        if not 0.0 <= demo_fraction < 1.0:
            raise ConfigError(f"demo_fraction={demo_fraction} must be in [0, 1): the online data needs a share")
        self.demo_fraction = float(demo_fraction)
        self.demo: NStepReplayBuffer | None = None
        if demos is not None and len(demos) and self.demo_fraction > 0:
            n = len(demos)
            if demos.observations.shape[1:] != self.obs_shape or demos.actions.shape[1:] != (self.action_dim,):
                raise ConfigError(f"demo transitions have observations {demos.observations.shape[1:]} and actions "
                                  f"{demos.actions.shape[1:]}; the learner has {self.obs_shape} and "
                                  f"({self.action_dim},)")
            d = NStepReplayBuffer(n, observation_space, action_space, device=device, n_envs=1,
                                  n_steps=n_steps, gamma=gamma)
            d.observations[:, 0] = demos.observations
            d.next_observations[:, 0] = demos.next_observations
            d.actions[:, 0] = demos.actions
            d.rewards[:, 0] = demos.rewards
            d.dones[:, 0] = demos.dones
            d.timeouts[:, 0] = demos.timeouts
            d.pos, d.full = 0, True  # pos - 1 (the last row) is an episode's end: n-step never wraps past it
            self.demo = d

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        n_demo = int(round(batch_size * self.demo_fraction)) if self.demo is not None else 0
        online = super().sample(batch_size - n_demo, env=env)
        if not n_demo:
            return online
        demo = self.demo.sample(n_demo, env=env)
        return ReplayBufferSamples(*(None if a is None else torch.cat([a, b]) for a, b in zip(online, demo)))
