"""The one `RewardModel` interface and its checkpoints.

A reward model scores windows of observations:

    compute_reward(batch) -> (B,)          dense reward of each window's last frame
    progress(batch)       -> (B,) in [0, 1] task progress (models that estimate it)
    stage(batch)          -> (B,) int      current stage index into `stage_names` (stage-aware models)

    batch[key]: (B, n_frames, *shape), the frames t - (n_frames - 1) * frame_stride, ..., t; cameras
    (B, n_frames, 3, H, W) float in [0, 1], other features in the dataset's units.

It splits into `encode_frames` (one frame -> an embedding) and `head` (a window of embeddings ->
outputs), so that the inference engine encodes every new frame once and keeps per-env embedding
histories (`robolearn.inference.reward.RewardRunner`) instead of re-encoding a window per tick.

A checkpoint is a directory like a policy's: `config.json` (`kind: reward_model`, type, config,
features, stage names and priors, `format_version`), `model.safetensors` and `stats.json`; it loads
without the training code and is refused, with the reason, when it does not fit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.data.format import Feature
from robolearn.errors import ConfigError
from robolearn.policies.base import ObservationError, write_checkpoint
from robolearn.policies.normalize import Normalizer


@dataclass
class RewardModelConfig:
    """Fields every reward model has; a model's own config adds its architecture."""

    obs_keys: list[str] = field(default_factory=list)
    """features the model reads; empty: the model's default (cameras + observation.state)"""
    n_frames: int = 3
    """frames per window (the current one and n_frames - 1 earlier ones)"""
    frame_stride: int = 4
    """control steps between the frames of a window"""

    def validate(self) -> None:
        if self.n_frames < 1 or self.frame_stride < 1:
            raise ConfigError(f"reward model: n_frames={self.n_frames} and frame_stride={self.frame_stride} "
                              "must be at least 1")

    @property
    def span(self) -> int:
        """frames from the oldest frame of a window to the newest, inclusive"""
        return (self.n_frames - 1) * self.frame_stride + 1


class RewardModel(nn.Module, ABC):
    """Observation windows -> reward (and progress / stage where the model has them)."""

    name: ClassVar[str]
    config_class: ClassVar[type[RewardModelConfig]]
    has_progress: ClassVar[bool] = False
    has_stages: ClassVar[bool] = False

    def __init__(self, config: RewardModelConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]],
                 stage_names: list[str] | None = None):
        super().__init__()
        config.validate()
        self.config = config
        missing = [k for k in config.obs_keys if k not in features]
        if missing:
            raise ConfigError(f"reward model obs_keys {missing} are not features of the dataset "
                              f"({', '.join(features)})")
        self.features = {k: features[k] for k in config.obs_keys}
        self.image_keys = [k for k in config.obs_keys if features[k].is_video]
        self.state_keys = [k for k in config.obs_keys if not features[k].is_video]
        self.stage_names = list(stage_names or [])
        self.stats = {k: {s: np.asarray(v) for s, v in stats[k].items()} for k in self.state_keys if k in stats}
        self.normalizer = Normalizer(stats, dict.fromkeys(self.state_keys, "mean_std"),
                                     {k: features[k].shape for k in self.state_keys})
        self.metadata: dict[str, Any] = {}
        """JSON-able facts saved with the checkpoint (the dataset it learned from, its env config)"""

    # ---- what subclasses define --------------------------------------------------------------
    @abstractmethod
    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        """One frame per row: frames[key] (N, *shape) (cameras (N, 3, H, W) in [0, 1]) -> (N, E)."""

    @abstractmethod
    def head(self, emb: Tensor) -> dict[str, Tensor]:
        """Windows of embeddings (B, n_frames, E), oldest first -> {"reward": (B,), and where the model
        has them "progress": (B,), "stage": (B,) long, "stage_probs": (B, K)}."""

    @abstractmethod
    def training_loss(self, batch: dict[str, Tensor], labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Loss on a batch of windows and the labels of their last frames (`robolearn.rewards.labels`)."""

    # ---- shared ------------------------------------------------------------------------------
    def outputs(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """All outputs for a batch of windows (see the module docstring for shapes)."""
        self.check_batch(batch)
        b, t = next(iter(batch[k] for k in self.config.obs_keys)).shape[:2]
        frames = {k: batch[k].flatten(0, 1) for k in self.config.obs_keys}
        return self.head(self.encode_frames(frames).unflatten(0, (b, t)))

    def compute_reward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) dense reward of each window's last frame."""
        return self.outputs(batch)["reward"]

    def progress(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) task progress in [0, 1]."""
        if not self.has_progress:
            raise ConfigError(f"reward model {self.name!r} does not estimate progress")
        return self.outputs(batch)["progress"]

    def stage(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) index of the current stage in `stage_names`."""
        if not self.has_stages:
            raise ConfigError(f"reward model {self.name!r} has no stages")
        return self.outputs(batch)["stage"]

    def check_batch(self, batch: dict[str, Tensor], n_frames: int | None = None) -> None:
        """Raise ObservationError unless every key is there as (B, n_frames, *shape) of finite numbers
        (n_frames: the model's window unless given)."""
        t = self.config.n_frames if n_frames is None else n_frames
        for k in self.config.obs_keys:
            if k not in batch:
                raise ObservationError(f"reward model input has no {k!r}; the model reads "
                                       f"{', '.join(self.config.obs_keys)} (got {', '.join(batch) or 'nothing'})")
            x, ft = batch[k], self.features[k]
            want = (ft.shape[2], *ft.shape[:2]) if ft.is_video else ft.shape
            if x.ndim < 2 or x.shape[1] != t or tuple(x.shape[2:]) != tuple(want):
                raise ObservationError(f"reward model input {k!r} has shape {tuple(x.shape)}; expected "
                                       f"(B, {t}, {', '.join(map(str, want))}): {t} frames of {want}")
            if not x.is_floating_point():
                raise ObservationError(f"reward model input {k!r} has dtype {x.dtype}; expected floats "
                                       "(cameras as float in [0, 1])")
            if not bool(torch.isfinite(x).all()):
                raise ObservationError(f"reward model input {k!r} contains NaN or inf; check the sensor or the env")

    def step_shape(self, key: str) -> tuple[int, ...]:
        """Shape of one frame of `key` as the model takes it (cameras channel-first)."""
        ft = self.features[key]
        return (ft.shape[2], *ft.shape[:2]) if ft.is_video else tuple(ft.shape)

    def extra_config(self) -> dict[str, Any]:
        """Model-specific facts for config.json besides its config (e.g. stage priors)."""
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the checkpoint directory (files written atomically; an existing one is replaced)."""
        return write_checkpoint(path, self, "reward_model", {"stage_names": self.stage_names, **self.extra_config()})
