"""Behaviour-cloning policies behind one interface (`Policy`), registered by name.

    make_policy("mlp", features, stats, {"horizon": 8})    a new, untrained policy
    load_policy("runs/bc/lift_mlp/checkpoints/last")       a trained one (any type)

A new policy is a new module that subclasses `Policy` plus one `register_policy` line below; its
module is imported only when that policy is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from robolearn.data.format import Feature
from robolearn.errors import ConfigError, UnknownNameError, did_you_mean
from robolearn.policies.base import (
    FORMAT_VERSION,
    CheckpointError,
    ObservationError,
    Policy,
    PolicyConfig,
    build_config,
    load_weights,
    read_checkpoint,
    resolve_checkpoint,
)

_POLICIES: dict[str, str] = {}  # name -> "module:Class"


def register_policy(name: str, target: str) -> None:
    _POLICIES[name] = target


register_policy("mlp", "robolearn.policies.mlp:MLPPolicy")
register_policy("diffusion", "robolearn.policies.diffusion.policy:DiffusionPolicy")
register_policy("residual", "robolearn.rl.residual:ResidualPolicy")


def policy_names() -> list[str]:
    return sorted(_POLICIES)


def get_policy_class(name: str) -> type[Policy]:
    if name not in _POLICIES:
        raise UnknownNameError(f"unknown policy {name!r}; registered: {', '.join(policy_names())}."
                               + did_you_mean(name, policy_names()))
    module, cls = _POLICIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_policy(name: str, features: dict[str, Feature], stats: dict, options: dict[str, Any] | None = None) -> Policy:
    """A new policy of type `name` for a dataset's features and stats; options set config fields."""
    cls = get_policy_class(name)
    cfg = build_config(cls.config_class, dict(options or {}), f"policy {name!r} options")
    return cls(cfg, features, stats)


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """Load a checkpoint directory written by `Policy.save`, refusing a mismatched one with the reason."""
    path = resolve_checkpoint(path)
    raw, features, stats = read_checkpoint(path)
    if raw.get("kind", "policy") != "policy":
        raise CheckpointError(f"{path} is a {raw['kind'].replace('_', ' ')} checkpoint, not a policy; pass it where "
                              "a reward is expected (e.g. --reward) and a `robolearn train bc` checkpoint here")
    cls = get_policy_class(raw["type"])
    try:
        cfg = build_config(cls.config_class, raw["config"], f"{Path(path) / 'config.json'}")
        policy = cls(cfg, features, stats)
    except ConfigError as e:  # config, features and stats that do not fit each other: a damaged checkpoint
        raise CheckpointError(f"{path}: {e}") from None
    load_weights(policy, path, f"{raw['type']} policy")
    policy.metadata = dict(raw.get("metadata") or {})
    return policy.to(device).eval()


__all__ = ["FORMAT_VERSION", "CheckpointError", "ObservationError", "Policy", "PolicyConfig", "get_policy_class",
           "load_policy", "make_policy", "policy_names", "register_policy"]
