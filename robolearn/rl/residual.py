"""`ResidualPolicy`: a frozen BC base plus a small residual that learns corrections (ResiP, ResFiT).

    action_t = clip(base_t + scale * tanh(residual(x_t)), low, high)
    x_t      = [normalized low-dimensional observations_t (state, object poses), base_t mapped to [-1, 1]]

`base_t` is the action the base policy executes at tick t (from its own chunk queue, as it runs
alone); the residual sees the current proprioception and that action and adds at most `scale` per
action dimension. The residual's last layer starts at zero, so an untrained ResidualPolicy acts
exactly as its base. It is itself a `Policy`: saved (the base's weights and config travel inside the
checkpoint), loaded with `load_policy`, evaluated and deployed like any other.

The residual network is the actor of the RL algorithm that trains it (stable-baselines3's PPO or SAC
actor: hidden layers, then a linear output), copied in after training; `residual_input` builds the
exact vector the RL algorithm observed, so what was trained is what runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.data.format import Feature, to_jsonable
from robolearn.errors import ConfigError
from robolearn.policies.base import Policy, PolicyConfig, build_config

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@dataclass
class ResidualConfig(PolicyConfig):
    """The residual's architecture and the frozen base it corrects."""

    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1
    scale: float = 0.1
    """largest correction per action dimension, in the env's action units ([-1, 1] for ee_delta)"""
    dim_scales: dict[str, float] = field(default_factory=dict)
    """per-dimension scales by action name overriding `scale`, e.g. {gripper: 1.0}: a residual that may
    overrule the base's gripper (a base that learned to drop from failed demos) but nudges its motion"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """hidden layers of the residual"""
    activation: Literal["tanh", "relu"] = "tanh"
    """activation of the hidden layers"""
    residual_keys: list[str] = field(default_factory=list)
    """observation features the residual reads (besides the base action); empty: every non-camera
    feature the base reads (e.g. observation.state and observation.environment_state)"""
    action_low: list[float] = field(default_factory=list)
    """the env's action bounds (empty: the dataset's action min)"""
    action_high: list[float] = field(default_factory=list)
    """the env's action bounds (empty: the dataset's action max)"""
    base: dict[str, Any] = field(default_factory=dict)
    """the frozen base: {type, config, features, stats, metadata}, written by `ResidualPolicy.from_base`"""

    def validate(self) -> None:
        super().validate()
        if (self.n_obs_steps, self.horizon, self.n_action_steps) != (1, 1, 1):
            raise ConfigError("residual: the residual acts on one tick (n_obs_steps = horizon = n_action_steps = 1)")
        if not self.scale > 0:
            raise ConfigError(f"residual: scale={self.scale} must be > 0")
        bad = {k: v for k, v in self.dim_scales.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ConfigError(f"residual: dim_scales {bad} must be positive numbers")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"residual: activation={self.activation!r} must be one of {', '.join(ACTIVATIONS)}")
        if not self.base or not {"type", "config", "features", "stats"} <= set(self.base):
            raise ConfigError("residual: the base policy is missing from the config; make one with "
                              "ResidualPolicy.from_base(load_policy(DIR))")


def residual_mlp(d_in: int, hidden: list[int], d_out: int, activation: str) -> nn.Sequential:
    """Linear/activation layers then a linear output whose weights and bias start at zero."""
    layers: list[nn.Module] = []
    d = d_in
    for h in hidden:
        layers += [nn.Linear(d, h), ACTIVATIONS[activation]()]
        d = h
    out = nn.Linear(d, d_out)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*layers, out)


class ResidualPolicy(Policy):
    """base action + scale * tanh(residual(state, base action)) (see the module docstring)."""

    name = "residual"
    config_class = ResidualConfig

    def __init__(self, config: ResidualConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]]):
        from robolearn.policies import get_policy_class

        config.validate()
        b = config.base
        base_cls = get_policy_class(b["type"])
        if base_cls is ResidualPolicy:
            raise ConfigError("residual: the base of a residual policy cannot itself be a residual policy")
        base_features = {k: Feature.from_json(k, v, "residual base") for k, v in b["features"].items()}
        base = base_cls(build_config(base_cls.config_class, b["config"], "residual base config"), base_features,
                        b["stats"])
        base.metadata = dict(b.get("metadata") or {})
        if not config.residual_keys:
            config.residual_keys = [k for k in base.config.obs_keys if k in features and not features[k].is_video]
            if not config.residual_keys:
                raise ConfigError("residual: the base reads only cameras; name the low-dimensional features the "
                                  "residual reads with residual_keys=[observation.state]")
        missing = [k for k in config.residual_keys if k not in features]
        if missing:
            raise ConfigError(f"residual: residual_keys {missing} are not features ({', '.join(features)})")
        config.obs_keys = list(dict.fromkeys(list(base.config.obs_keys) + list(config.residual_keys)))
        super().__init__(config, features, stats)
        self.base = base.eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        low = np.asarray(config.action_low or stats["action"]["min"], np.float32).reshape(-1)
        high = np.asarray(config.action_high or stats["action"]["max"], np.float32).reshape(-1)
        if low.shape != (self.action_dim,) or high.shape != (self.action_dim,) or not (high > low).all():
            raise ConfigError(f"residual: action bounds {low.tolist()}..{high.tolist()} must be {self.action_dim} "
                              "pairs with low < high")
        names = list(features["action"].names or [])
        unknown = [k for k in config.dim_scales if k not in names]
        if unknown:
            raise ConfigError(f"residual: dim_scales names {unknown} are not action dimensions "
                              f"({', '.join(names) or 'the action feature has no names'})")
        scales = np.array([float(config.dim_scales.get(n, config.scale)) for n in names] if names
                          else [config.scale] * self.action_dim, np.float32)
        self.register_buffer("scales", torch.from_numpy(scales), persistent=False)
        self.register_buffer("action_low", torch.from_numpy(low))
        self.register_buffer("action_high", torch.from_numpy(high))
        d_in = sum(int(np.prod(features[k].shape)) for k in config.residual_keys) + self.action_dim
        self.residual = residual_mlp(d_in, list(config.hidden), self.action_dim, config.activation)
        self.input_dim = d_in

    @classmethod
    def from_base(cls, base: Policy, action_low=None, action_high=None, **options) -> ResidualPolicy:
        """A residual policy over a trained base (copied in, frozen) that starts by acting exactly as it."""
        if isinstance(base, ResidualPolicy):
            raise ConfigError("residual: the base of a residual policy cannot itself be a residual policy")
        spec = {"type": base.name, "config": to_jsonable(asdict(base.config)),
                "features": {k: f.to_json() for k, f in base.features.items()},
                "stats": to_jsonable(base.stats), "metadata": to_jsonable(base.metadata)}
        cfg = build_config(ResidualConfig, {**options, "base": spec}, "residual options")
        if action_low is not None:
            cfg.action_low = [float(x) for x in np.asarray(action_low).reshape(-1)]
            cfg.action_high = [float(x) for x in np.asarray(action_high).reshape(-1)]
        policy = cls(cfg, dict(base.features), {k: v for k, v in base.stats.items()})
        policy.base.load_state_dict(base.state_dict())
        policy.metadata = dict(base.metadata)
        return policy.to(next(base.parameters()).device)

    # ---- the residual ------------------------------------------------------------------------
    def residual_input(self, obs: dict[str, Tensor], base_action: Tensor) -> Tensor:
        """obs[key] (B, *shape) of the current tick and the base's action (B, D_a) -> (B, input_dim)."""
        parts = [self.normalizer.normalize(k, obs[k].float()).flatten(1) for k in self.config.residual_keys]
        span = (self.action_high - self.action_low).clamp(min=1e-6)
        parts.append((base_action.float() - self.action_low) / span * 2.0 - 1.0)
        return torch.cat(parts, dim=1)

    def correction(self, x: Tensor) -> Tensor:
        """(B, input_dim) residual inputs -> (B, D_a) corrections in [-scales, scales]."""
        return self.scales * torch.tanh(self.residual(x))

    def combine(self, base_action: Tensor, correction: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(base_action + correction, self.action_high), self.action_low)

    # ---- Policy ------------------------------------------------------------------------------
    def forward_chunk(self, obs: dict[str, Tensor]) -> Tensor:
        raise ConfigError("a residual policy acts one tick at a time: use select_action or the inference engine")

    def compute_loss(self, obs, actions, action_is_pad, weights=None):
        raise ConfigError("a residual policy is trained by RL (`robolearn train residual`), not by BC")

    def predict_action_chunk(self, obs: dict[str, Tensor]) -> Tensor:
        """obs[key] (B, base n_obs_steps, *shape) -> (B, 1, D_a): the base's action at t, corrected."""
        self.base.check_obs(obs, history=True)
        chunk = self.base.predict_action_chunk({k: obs[k] for k in self.base.config.obs_keys})
        base_action = chunk[:, -self.base.config.action_offset]
        now = {k: obs[k][:, -1] for k in self.config.residual_keys}
        return self.combine(base_action, self.correction(self.residual_input(now, base_action)))[:, None]

    def make_runner(self, num_envs: int, device: torch.device | str | None = None):
        """Per-env state for select_action / the inference engine: the base's chunk queues."""
        return ResidualRunner(self, num_envs, device if device is not None else next(self.parameters()).device)


class ResidualRunner:
    """A residual policy over `num_envs` envs: the base's `ChunkRunner` gives each env's base action,
    the residual corrects all of them in one forward pass."""

    def __init__(self, policy: ResidualPolicy, num_envs: int, device: torch.device | str):
        from robolearn.inference.queues import ChunkRunner

        self.policy, self.num_envs = policy, num_envs
        self.device = torch.device(device)
        self.base = ChunkRunner(policy.base, num_envs, device=self.device)
        self.last_base_action: np.ndarray | None = None
        """(num_envs, D_a) the base actions of the last tick (what the residual corrected)"""

    def reset(self, env_ids=None) -> None:
        self.base.reset(env_ids)

    def step(self, obs: dict) -> Tensor:
        """obs[key] (num_envs, *shape) -> actions (num_envs, D_a) on the device."""
        return torch.as_tensor(self._step(obs), device=self.device)

    def _step(self, obs: dict) -> np.ndarray:
        missing = [k for k in self.policy.config.residual_keys if k not in obs]
        if missing:
            from robolearn.policies.base import ObservationError

            raise ObservationError(f"observation has no {missing[0]!r}; the residual reads "
                                   f"{', '.join(self.policy.config.residual_keys)}")
        base = self.base._step(obs)
        base_t = torch.as_tensor(base, device=self.device, dtype=torch.float32)
        now = {k: torch.as_tensor(np.asarray(obs[k]) if not isinstance(obs[k], Tensor) else obs[k],
                                  device=self.device, dtype=torch.float32) for k in self.policy.config.residual_keys}
        with torch.inference_mode():
            x = self.policy.residual_input(now, base_t)
            if not bool(torch.isfinite(x).all()):
                from robolearn.policies.base import ObservationError

                raise ObservationError(f"observation {', '.join(self.policy.config.residual_keys)} contains NaN or "
                                       "inf; check the sensor or the env")
            action = self.policy.combine(base_t, self.policy.correction(x))
        self.last_base_action = base_t.cpu().numpy()
        return action.cpu().numpy().astype(np.float32, copy=False)
