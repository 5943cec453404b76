"""Reward models in the batched engine: live per-env scoring and offline scoring of whole episodes.

A reward model's window is n_frames frames `frame_stride` control steps apart. Live, each env keeps a
ring of the embeddings of its last `span` frames (`RewardRunner`): a tick encodes only the new frame
of every env (one batched conv pass) and runs the window head on gathered embeddings, so the cost per
tick does not grow with the window. A new episode starts with its first frame's embedding repeated,
exactly as `EpisodeFrames` builds training windows at an episode's start, so live and offline scores
of the same frames agree. Offline (`score_episodes`), every frame of an episode is encoded once and
every window is read from those embeddings.

Shapes: RewardRunner.step(obs[key] (n, *shape)) -> {"reward", "progress", "stage": (n,)} numpy, for all
envs or the `env_ids` given; cameras may come as (n, H, W, 3) uint8 (what envs and datasets hold) or
(n, 3, H, W) float in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from robolearn.policies.base import ObservationError

OUTPUT_KEYS = ("reward", "progress", "stage", "stage_probs")


def frames_to_tensors(model, obs: dict, device: torch.device) -> dict[str, Tensor]:
    """One frame per row, checked: obs[key] (n, *shape) -> {key: (n, *model shape)} float tensors."""
    out: dict[str, Tensor] = {}
    for k in model.config.obs_keys:
        if k not in obs:
            raise ObservationError(f"reward model input has no {k!r}; the model reads "
                                   f"{', '.join(model.config.obs_keys)} (got {', '.join(obs) or 'nothing'})")
        x = torch.as_tensor(np.asarray(obs[k]) if not isinstance(obs[k], Tensor) else obs[k], device=device)
        if k in model.image_keys:
            h, w, c = model.features[k].shape
            if x.ndim == 4 and tuple(x.shape[1:]) == (h, w, c):
                x = x.permute(0, 3, 1, 2)
            if x.dtype == torch.uint8:
                x = x.float().div_(255.0)
        out[k] = x.float() if x.dtype != torch.float32 else x
    model.check_batch({k: v.unsqueeze(1) for k, v in out.items()}, n_frames=1)
    return out


class RewardRunner:
    """Live scoring of `num_envs` envs with per-env embedding histories (see the module docstring)."""

    def __init__(self, model, num_envs: int, device: torch.device | str | None = None):
        self.model, self.num_envs = model, num_envs
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        cfg = model.config
        self.n_frames, self.stride, self.span = cfg.n_frames, cfg.frame_stride, cfg.span
        self.hist: Tensor | None = None  # (num_envs, span, E), made at the first step
        self.head = np.zeros(num_envs, np.int64)  # ring slot of each env's newest frame
        self.fresh = np.ones(num_envs, bool)  # the next frame starts an episode
        self._back = np.arange(self.n_frames)[::-1] * self.stride  # oldest first

    def reset(self, env_ids=None) -> None:
        """The next frame of `env_ids` (all when None) starts a new episode."""
        self.fresh[np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids, np.int64)] = True

    def step(self, obs: dict, env_ids=None) -> dict[str, np.ndarray]:
        ids = np.arange(self.num_envs) if env_ids is None else np.asarray(env_ids, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_envs):
            raise ObservationError(f"env_ids {ids.tolist()} outside 0..{self.num_envs - 1}")
        frames = frames_to_tensors(self.model, obs, self.device)
        n = next(iter(frames.values())).shape[0]
        if n != len(ids):
            raise ObservationError(f"reward model input holds {n} frames for {len(ids)} envs")
        with torch.inference_mode():
            emb = self.model.encode_frames(frames)
            if self.hist is None:
                self.hist = torch.zeros(self.num_envs, self.span, emb.shape[1], device=self.device)
            fresh = self.fresh[ids]
            self.head[ids] = np.where(fresh, 0, (self.head[ids] + 1) % self.span)
            ids_t = torch.from_numpy(ids).to(self.device)
            if fresh.any():
                f = torch.from_numpy(np.flatnonzero(fresh)).to(self.device)
                self.hist[ids_t[f]] = emb[f].unsqueeze(1).expand(-1, self.span, -1)
            self.hist[ids_t, torch.from_numpy(self.head[ids]).to(self.device)] = emb
            self.fresh[ids] = False
            slots = (self.head[ids][:, None] - self._back[None, :]) % self.span  # (n, n_frames)
            window = self.hist[ids_t[:, None], torch.from_numpy(slots).to(self.device)]
            out = self.model.head(window)
        return {k: v.cpu().numpy() for k, v in out.items() if k in OUTPUT_KEYS}


def score_episodes(model, table, device: torch.device | str = "cpu",
                   batch_size: int = 512) -> list[dict[str, np.ndarray]]:
    """Every frame of every episode of an `EpisodeFrames` table, scored offline: one dict per episode,
    {"reward", "progress", ("stage", "stage_probs")}: (T,) arrays (stage_probs (T, K))."""
    device = torch.device(device)
    model = model.to(device).eval()
    cfg = model.config
    embs = []
    with torch.inference_mode():
        for lo in range(0, len(table), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(table)))
            frames = table.frames(rows, device)
            model.check_batch({k: v.unsqueeze(1) for k, v in frames.items()}, n_frames=1)
            embs.append(model.encode_frames(frames))
        if not embs:
            return []
        emb = torch.cat(embs)
        outs: dict[str, list[Tensor]] = {}
        for lo in range(0, len(table), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(table)))
            win = torch.from_numpy(table.window_rows(rows, cfg.n_frames, cfg.frame_stride)).to(device)
            for k, v in model.head(emb[win]).items():
                if k in OUTPUT_KEYS:
                    outs.setdefault(k, []).append(v)
        flat = {k: torch.cat(v).cpu().numpy() for k, v in outs.items()}
    return [{k: v[table.starts[i]:table.starts[i] + table.lengths[i]] for k, v in flat.items()}
            for i in range(len(table.lengths))]
