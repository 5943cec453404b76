"""Strict normalization of observations and actions from dataset statistics.

Each feature is normalized with one mode: `mean_std` ((x - mean) / std), `min_max` (to [-1, 1]),
or `identity` (camera images, already in [0, 1]). Statistics are checked when the normalizer is
built: a feature without statistics, a statistic of the wrong shape, or a non-finite value raises
naming the key (LeRobot once let a missing key pass through unnormalized into published checkpoints).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.errors import ConfigError

NormMode = Literal["mean_std", "min_max", "identity"]
EPS = 1e-6


class Normalizer(nn.Module):
    """normalize(key, x) / unnormalize(key, x) for a fixed set of features; x: (..., *shape)."""

    def __init__(self, stats: dict[str, dict[str, np.ndarray]], modes: dict[str, NormMode],
                 shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.modes = dict(modes)
        for key, mode in modes.items():
            if mode not in ("mean_std", "min_max", "identity"):
                raise ConfigError(f"normalization of {key!r}: {mode!r} is not one of mean_std, min_max, identity")
            if mode == "identity":
                continue
            if key not in stats:
                raise ConfigError(f"no statistics for {key!r} (needed for {mode} normalization); the dataset's "
                                  f"meta/stats.json has {', '.join(sorted(stats)) or 'nothing'}")
            need = ("mean", "std") if mode == "mean_std" else ("min", "max")
            for s in need:
                if s not in stats[key]:
                    raise ConfigError(f"statistics of {key!r} lack {s!r} (needed for {mode} normalization)")
                v = np.asarray(stats[key][s], np.float64)
                if v.size != int(np.prod(shapes[key])) or not np.isfinite(v).all():
                    raise ConfigError(f"statistics {key!r}/{s} have shape {v.shape} or non-finite values; "
                                      f"expected {shapes[key]} finite numbers")
            a, b = (np.asarray(stats[key][s], np.float32).reshape(shapes[key]) for s in need)
            if mode == "mean_std":
                scale, offset = np.maximum(b, EPS), a
            else:  # map [min, max] to [-1, 1]
                scale, offset = np.maximum((b - a) / 2, EPS), (a + b) / 2
            self.register_buffer(_buf(key, "scale"), torch.from_numpy(scale))
            self.register_buffer(_buf(key, "offset"), torch.from_numpy(offset))

    def normalize(self, key: str, x: Tensor) -> Tensor:
        if self._mode(key) == "identity":
            return x
        return (x - getattr(self, _buf(key, "offset"))) / getattr(self, _buf(key, "scale"))

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        if self._mode(key) == "identity":
            return x
        return x * getattr(self, _buf(key, "scale")) + getattr(self, _buf(key, "offset"))

    def _mode(self, key: str) -> str:
        try:
            return self.modes[key]
        except KeyError:
            raise ConfigError(f"the normalizer has no feature {key!r}; it normalizes "
                              f"{', '.join(self.modes)}") from None


def _buf(key: str, what: str) -> str:
    return f"{key.replace('.', '__')}__{what}"
