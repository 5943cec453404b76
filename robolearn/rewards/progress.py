"""The stage-aware progress model (as in SARM, Chen et al. 2025), and its frame-index baseline.

    frame t of each camera --conv encoder--\
    observation.state (normalized) --MLP---+--> frame embedding e_t (E)
    [e_{t-(n-1)s}, ..., e_{t-s}, e_t] --MLP--> stage logits (K) and per-stage tau (K)

    progress = sum_k P(stage k) * (P_k + sigmoid(tau_k) * p_k)

with p_k the stage priors (mean share of a successful training episode each stage takes) and P_k
their cumulative sum over the stages before k (`robolearn.rewards.labels`). The expectation over the
stage distribution keeps progress continuous where the classifier hesitates between two stages (at
their boundary), which a reward needs; `stage` is the most likely stage.

The camera encoder sees what a real robot sees: an 84x84 RGB frame, average-pooled by `image_pool`
first (a 2-core CPU scores thousands of frames a second that way), three strided 3x3 convs with
GroupNorm, then the feature map flattened (positions matter for progress: where the cube is, where
the gripper is) into a linear layer. Training adds random shifts (DrQ) to the frames.
`privileged=true` adds `observation.environment_state` (object poses) for sim-only ablations.

`head: frame_index` is the baseline the quality benchmark compares against: the same network with
one output regressing normalized time t / (T - 1), no stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robolearn.data.format import Feature
from robolearn.errors import ConfigError
from robolearn.rewards.base import RewardModel, RewardModelConfig


@dataclass
class StageProgressConfig(RewardModelConfig):
    """Architecture and labels of the stage-aware progress model."""

    head: Literal["stages", "frame_index"] = "stages"
    """stages: stage classifier + within-stage progress (SARM); frame_index: regress normalized time (baseline)"""
    privileged: bool = False
    """also read observation.environment_state (object poses): sim-only ablations, never on hardware"""
    failure_aware: bool = True
    """label failed episodes so that progress falls at regressions and stands still after a failure"""
    image_pool: int = 2
    """average-pool camera frames by this factor before the convs (1: full resolution)"""
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """conv channels, each conv 3x3 with stride 2"""
    image_dim: int = 128
    """features per camera frame"""
    state_dim: int = 64
    """features of the proprioception (and privileged state)"""
    embed_dim: int = 128
    """frame embedding size"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """hidden layers of the window head"""
    shift: int = 4
    """random-shift augmentation in training, pixels (0: off)"""
    dropout: float = 0.1
    """dropout in the window head (training only)"""

    def validate(self) -> None:
        super().validate()
        if self.head not in ("stages", "frame_index"):
            raise ConfigError(f"stage_progress: head={self.head!r} must be stages or frame_index")
        if self.image_pool < 1 or not self.channels or min(self.channels) < 1:
            raise ConfigError("stage_progress: image_pool must be >= 1 and channels a non-empty list of sizes")
        if self.shift < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("stage_progress: shift must be >= 0 and dropout in [0, 1)")


def default_obs_keys(features: dict[str, Feature], privileged: bool) -> list[str]:
    """Every camera plus observation.state (plus observation.environment_state when privileged)."""
    keys = [k for k, f in features.items() if k.startswith("observation.images.") and f.is_video]
    keys += [k for k in ("observation.state",) + (("observation.environment_state",) if privileged else ())
             if k in features]
    return keys


class CameraEncoder(nn.Module):
    """(N, 3, H, W) in [0, 1] -> (N, out_dim)."""

    def __init__(self, hw: tuple[int, int], pool: int, channels: list[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.GroupNorm(max(c // 16, 1), c), nn.ReLU(inplace=True)]
            c_in = c
        self.convs = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, 3, *hw)).numel()
        self.out = nn.Sequential(nn.Flatten(), nn.Linear(flat, out_dim), nn.LayerNorm(out_dim), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.convs(x * 2.0 - 1.0))


def random_shift(x: Tensor, pad: int) -> Tensor:
    """DrQ's augmentation: pad by replication and crop back at a random integer offset per image."""
    n, _, h, w = x.shape
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    eps = 1.0 / (h + 2 * pad)
    ar = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad, device=x.device)[:h]
    ar = ar.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    base = torch.cat([ar, ar.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    shift = torch.randint(0, 2 * pad + 1, (n, 1, 1, 2), device=x.device, dtype=x.dtype) * (2.0 / (h + 2 * pad))
    return F.grid_sample(x, base + shift, padding_mode="zeros", align_corners=False)


class StageProgressModel(RewardModel):
    """Stage-aware progress from camera frames and proprioception (see the module docstring)."""

    name = "stage_progress"
    config_class = StageProgressConfig
    has_progress = True

    def __init__(self, config: StageProgressConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]],
                 stage_names: list[str] | None = None, stage_priors: list[float] | None = None):
        if not config.obs_keys:
            config.obs_keys = default_obs_keys(features, config.privileged)
        if not config.obs_keys:
            raise ConfigError("stage_progress: the dataset has no camera and no observation.state to read")
        super().__init__(config, features, stats, stage_names)
        stages = config.head == "stages"
        self.has_stages = stages  # the frame-index baseline has none
        if stages:
            if not self.stage_names:
                raise ConfigError("stage_progress: head=stages needs the task's stage names")
            k = len(self.stage_names)
            priors = np.asarray(stage_priors if stage_priors is not None else np.full(k, 1.0 / k), np.float32)
            if priors.shape != (k,) or not np.isfinite(priors).all() or (priors <= 0).any():
                raise ConfigError(f"stage_progress: stage_priors {priors.tolist()} must be {k} positive numbers")
            priors = priors / priors.sum()
        else:
            priors = np.ones(1, np.float32)
        self.register_buffer("priors", torch.from_numpy(priors))
        self.register_buffer("cum_priors", torch.from_numpy(np.concatenate([[0.0], np.cumsum(priors)[:-1]])
                                                            .astype(np.float32)))
        self.cameras = nn.ModuleDict({
            k.replace(".", "__"): CameraEncoder(features[k].shape[:2], config.image_pool, config.channels,
                                                config.image_dim) for k in self.image_keys})
        state_in = sum(int(np.prod(features[k].shape)) for k in self.state_keys)
        self.state_enc = (nn.Sequential(nn.Linear(state_in, config.state_dim), nn.LayerNorm(config.state_dim),
                                        nn.ReLU(inplace=True)) if state_in else None)
        frame_in = config.image_dim * len(self.image_keys) + (config.state_dim if state_in else 0)
        self.embed = nn.Linear(frame_in, config.embed_dim)
        layers: list[nn.Module] = []
        d = config.embed_dim * config.n_frames
        for h in config.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
            d = h
        self.trunk = nn.Sequential(*layers)
        self.num_out = 2 * len(self.stage_names) if stages else 1
        self.out = nn.Linear(d, self.num_out)

    def extra_config(self) -> dict[str, Any]:
        return {"stage_priors": self.priors.tolist() if self.has_stages else None}

    # ---- forward -----------------------------------------------------------------------------
    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        parts = []
        for k in self.image_keys:
            x = frames[k]
            if self.training and self.config.shift:
                x = random_shift(x, self.config.shift)
            parts.append(self.cameras[k.replace(".", "__")](x))
        if self.state_enc is not None:
            s = torch.cat([self.normalizer.normalize(k, frames[k]).flatten(1) for k in self.state_keys], dim=1)
            parts.append(self.state_enc(s))
        return self.embed(torch.cat(parts, dim=1))

    def head(self, emb: Tensor) -> dict[str, Tensor]:
        y = self.out(self.trunk(F.relu(emb).flatten(1)))
        if not self.has_stages:
            p = torch.sigmoid(y[:, 0])
            return {"reward": p, "progress": p}
        k = len(self.stage_names)
        logits, tau = y[:, :k], torch.sigmoid(y[:, k:])
        probs = torch.softmax(logits, dim=1)
        progress = (probs * (self.cum_priors + tau * self.priors)).sum(dim=1).clamp(0.0, 1.0)
        return {"reward": progress, "progress": progress, "stage": probs.argmax(dim=1), "stage_probs": probs,
                "stage_logits": logits, "tau": tau}

    def training_loss(self, batch: dict[str, Tensor], labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """labels: stage (B,) long, tau (B,), progress (B,), time (B,) of each window's last frame.

        stages: cross-entropy on the stage + MSE of the true stage's tau + MSE of the expected progress
        (the quantity a reward reads); frame_index: MSE of normalized time."""
        b, t = next(iter(batch.values())).shape[:2]
        frames = {k: batch[k].flatten(0, 1) for k in self.config.obs_keys}
        out = self.head(self.encode_frames(frames).unflatten(0, (b, t)))
        if not self.has_stages:
            loss = F.mse_loss(out["progress"], labels["time"])
            return loss, {"loss": loss.item()}
        stage = labels["stage"]
        ce = F.cross_entropy(out["stage_logits"], stage)
        tau = out["tau"].gather(1, stage[:, None])[:, 0]
        tau_loss = F.mse_loss(tau, labels["tau"])
        prog_loss = F.mse_loss(out["progress"], labels["progress"])
        loss = ce + tau_loss + 10.0 * prog_loss
        acc = (out["stage"] == stage).float().mean().item()
        return loss, {"loss": loss.item(), "stage_loss": ce.item(), "tau_loss": tau_loss.item(),
                      "progress_loss": prog_loss.item(), "stage_accuracy": acc}
