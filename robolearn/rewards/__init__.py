"""Reward models behind one interface (`RewardModel`), registered by name, and reward shaping.

    make_reward_model("stage_progress", features, stats, stage_names=[...], stage_priors=[...])
    load_reward_model("runs/reward/pick_place/checkpoints/last")

A new reward model is a new module that subclasses `RewardModel` plus one `register_reward_model`
line below; its module is imported only when that model is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from robolearn.data.format import Feature
from robolearn.errors import ConfigError, UnknownNameError, did_you_mean
from robolearn.policies.base import (
    CheckpointError,
    build_config,
    load_weights,
    read_checkpoint,
    resolve_checkpoint,
)
from robolearn.rewards.base import RewardModel, RewardModelConfig

_REWARD_MODELS: dict[str, str] = {}  # name -> "module:Class"


def register_reward_model(name: str, target: str) -> None:
    _REWARD_MODELS[name] = target


register_reward_model("stage_progress", "robolearn.rewards.progress:StageProgressModel")
register_reward_model("clip", "robolearn.rewards.vlm.clip:ClipReward")
register_reward_model("preference", "robolearn.rewards.vlm.preference:PreferenceReward")


def reward_model_names() -> list[str]:
    return sorted(_REWARD_MODELS)


def get_reward_model_class(name: str) -> type[RewardModel]:
    if name not in _REWARD_MODELS:
        raise UnknownNameError(f"unknown reward model {name!r}; registered: {', '.join(reward_model_names())}."
                               + did_you_mean(name, reward_model_names()))
    module, cls = _REWARD_MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_reward_model(name: str, features: dict[str, Feature], stats: dict, options: dict[str, Any] | None = None,
                      **kwargs) -> RewardModel:
    """A new, untrained reward model of type `name`; options set its config fields, kwargs go to the
    class (e.g. stage_names, stage_priors)."""
    cls = get_reward_model_class(name)
    cfg = build_config(cls.config_class, dict(options or {}), f"reward model {name!r} options")
    return cls(cfg, features, stats, **kwargs)


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """Load a checkpoint directory written by `RewardModel.save`, refusing a mismatched one with the reason."""
    path = resolve_checkpoint(path)
    raw, features, stats = read_checkpoint(path, "reward model", "`robolearn train reward`")
    if raw.get("kind") != "reward_model":
        raise CheckpointError(f"{path} is a {raw.get('kind', 'policy')} checkpoint, not a reward model; pass a "
                              "`robolearn train reward` checkpoint")
    cls = get_reward_model_class(raw["type"])
    try:
        cfg = build_config(cls.config_class, raw["config"], f"{Path(path) / 'config.json'}")
        kwargs = {"stage_names": raw.get("stage_names") or []}
        if raw.get("stage_priors") is not None:
            kwargs["stage_priors"] = raw["stage_priors"]
        model = cls(cfg, features, stats, **kwargs)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    load_weights(model, path, f"{raw['type']} reward model")
    model.metadata = dict(raw.get("metadata") or {})
    return model.to(device).eval()


def check_stages(model: RewardModel, stage_names: list[str], where: str) -> None:
    """Raise unless a stage-aware model's stages are `stage_names` (a dataset's or a task's), in order."""
    if model.has_stages and list(model.stage_names) != list(stage_names):
        raise ConfigError(f"{where} has stages {' > '.join(stage_names) or '(none)'}, but the reward model was "
                          f"trained on {' > '.join(model.stage_names)}; train a reward model on this task's data")


__all__ = ["CheckpointError", "RewardModel", "RewardModelConfig", "check_stages", "get_reward_model_class",
           "load_reward_model", "make_reward_model", "register_reward_model", "reward_model_names"]
