"""Training windows over a dataset: observation history and future action chunks, as a torch Dataset.

Sample `i` is frame t of some episode. It holds, for every observation key, the frames
t - n_obs_steps + 1 .. t, and for the action key the `horizon` actions starting at t + action_offset
(Diffusion Policy uses action_offset = 1 - n_obs_steps, so that the chunk covers the observed steps
too). Indices outside the episode are clamped to its first or last frame and flagged in
`<key>_is_pad`, as LeRobot does. Only the camera frames a window needs are decoded.

Shapes of a sample (batch-first after collation):
    observation.state:          (n_obs_steps, D_s) float32
    observation.images.<cam>:   (n_obs_steps, 3, H, W) float32 in [0, 1]
    action:                     (horizon, D_a) float32
    <key>_is_pad:               (n_obs_steps,) or (horizon,) bool
    episode_index, frame_index, index, task_index: () int64
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robolearn.data.dataset import DatasetReader
from robolearn.data.format import DatasetError


class WindowDataset(torch.utils.data.Dataset):
    """Windows of `n_obs_steps` observations and `horizon` actions from a LeRobot-layout dataset."""

    def __init__(self, dataset: str | Path | DatasetReader, n_obs_steps: int = 2, horizon: int = 16,
                 action_offset: int = 0, obs_keys: list[str] | None = None, action_key: str = "action",
                 extra_keys: list[str] | None = None, episodes: list[int] | None = None):
        """obs_keys: default every `observation.*` feature; extra_keys: other per-frame features
        returned at frame t (e.g. next.reward); episodes: a subset (e.g. a train split)."""
        self.reader = dataset if isinstance(dataset, DatasetReader) else DatasetReader(dataset)
        r = self.reader
        if n_obs_steps < 1 or horizon < 1:
            raise DatasetError(f"n_obs_steps={n_obs_steps} and horizon={horizon} must both be at least 1")
        self.n_obs_steps, self.horizon, self.action_offset = n_obs_steps, horizon, action_offset
        feats = r.features
        self.obs_keys = list(obs_keys) if obs_keys is not None else [k for k in feats if k.startswith("observation.")]
        self.extra_keys = list(extra_keys or [])
        for k in self.obs_keys + [action_key] + self.extra_keys:
            if k not in feats:
                from robolearn.errors import did_you_mean

                raise DatasetError(f"{r.root}: no feature {k!r} to window over; it has {', '.join(feats)}."
                                   + did_you_mean(k, list(feats)))
        self.action_key = action_key
        self.video_keys = [k for k in self.obs_keys if feats[k].is_video]
        self.episodes = np.arange(r.num_episodes) if episodes is None else np.asarray(episodes, np.int64)
        bad = [e for e in self.episodes if not 0 <= e < r.num_episodes]
        if bad:
            raise DatasetError(f"{r.root}: episodes {bad} do not exist (0..{r.num_episodes - 1})")
        # flat sample table: (episode, frame) of every sample
        lengths = r.lengths[self.episodes]
        self._ep = np.repeat(self.episodes, lengths)
        self._frame = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.zeros(0, np.int64)
        self._obs_delta = np.arange(1 - n_obs_steps, 1)
        self._act_delta = np.arange(horizon) + action_offset

    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.reader
        ep, t = int(self._ep[i]), int(self._frame[i])
        n = int(r.lengths[ep])
        base = int(r.offsets[ep])
        obs_idx = t + self._obs_delta
        act_idx = t + self._act_delta
        obs_pad = (obs_idx < 0) | (obs_idx >= n)
        act_pad = (act_idx < 0) | (act_idx >= n)
        obs_idx = np.clip(obs_idx, 0, n - 1)
        act_idx = np.clip(act_idx, 0, n - 1)
        out: dict[str, torch.Tensor] = {}
        obs_pad_t = torch.from_numpy(obs_pad)
        for k in self.obs_keys:
            if k in self.video_keys:
                uniq, inv = np.unique(obs_idx, return_inverse=True)
                frames = r.video_frames(k, ep, uniq)[inv]  # (n_obs, H, W, 3) uint8
                out[k] = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
            else:
                out[k] = torch.from_numpy(r.numeric(k, base + obs_idx).astype(np.float32, copy=False))
            out[f"{k}_is_pad"] = obs_pad_t
        out[self.action_key] = torch.from_numpy(r.numeric(self.action_key, base + act_idx).astype(np.float32,
                                                                                                   copy=False))
        out[f"{self.action_key}_is_pad"] = torch.from_numpy(act_pad)
        for k in self.extra_keys:
            out[k] = torch.from_numpy(np.asarray(r.numeric(k, base + t)))
        out["episode_index"] = torch.tensor(ep)
        out["frame_index"] = torch.tensor(t)
        out["index"] = torch.tensor(int(r.ep_from[ep]) + t)
        out["task_index"] = torch.tensor(int(r.task_index[ep]))
        return out
