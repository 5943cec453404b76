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

    def __getitem__(self, i: int | list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """One window, or a whole batch when `i` is a list of indices (leading batch dimension);
        `loader()` uses the batch form, which decodes and converts a batch at a time."""
        if np.ndim(i) == 0:
            return {k: v[0] for k, v in self._windows(np.array([int(i)])).items()}
        return self._windows(np.asarray(i, np.int64))

    def _windows(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        r = self.reader
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range 0..{len(self) - 1}")
        ep, t = self._ep[idx], self._frame[idx]
        n, base = r.lengths[ep][:, None], r.offsets[ep][:, None]
        obs_idx = t[:, None] + self._obs_delta  # (B, n_obs)
        act_idx = t[:, None] + self._act_delta  # (B, horizon)
        obs_pad = (obs_idx < 0) | (obs_idx >= n)
        act_pad = (act_idx < 0) | (act_idx >= n)
        obs_idx = np.clip(obs_idx, 0, n - 1)
        act_idx = np.clip(act_idx, 0, n - 1)
        out: dict[str, torch.Tensor] = {}
        obs_pad_t = torch.from_numpy(obs_pad)
        for k in self.obs_keys:
            if k in self.video_keys:
                out[k] = self._video(k, ep, obs_idx)
            else:
                out[k] = torch.from_numpy(r.numeric(k, base + obs_idx).astype(np.float32, copy=False))
            out[f"{k}_is_pad"] = obs_pad_t
        act = r.numeric(self.action_key, base + act_idx)
        out[self.action_key] = torch.from_numpy(act.astype(np.float32, copy=False))
        out[f"{self.action_key}_is_pad"] = torch.from_numpy(act_pad)
        for k in self.extra_keys:
            out[k] = torch.from_numpy(np.asarray(r.numeric(k, base[:, 0] + t)))
        out["episode_index"] = torch.from_numpy(ep.copy())
        out["frame_index"] = torch.from_numpy(t.copy())
        out["index"] = torch.from_numpy(r.ep_from[ep] + t)
        out["task_index"] = torch.from_numpy(r.task_index[ep])
        return out

    def _video(self, key: str, ep: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        """(B, n_obs, 3, H, W) float in [0, 1]. Windows are decoded in (episode, frame) order, so
        neighbouring windows of a batch continue one decode instead of seeking again."""
        h, w, _ = self.reader.features[key].shape
        buf = np.empty((len(ep), frames.shape[1], h, w, 3), np.uint8)
        for b in np.lexsort((frames[:, 0], ep)):
            uniq, inv = np.unique(frames[b], return_inverse=True)
            buf[b] = self.reader.video_frames(key, int(ep[b]), uniq)[inv]
        return torch.from_numpy(buf).permute(0, 1, 4, 2, 3).float().div_(255.0)

    def loader(self, batch_size: int = 64, shuffle: bool = True, num_workers: int = 0, drop_last: bool = False,
               seed: int | None = None, **kwargs) -> torch.utils.data.DataLoader:
        """A DataLoader that fetches whole batches (one `__getitem__` call per batch)."""
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        base = RandomSampler(self, generator=gen) if shuffle else SequentialSampler(self)
        return DataLoader(self, sampler=BatchSampler(base, batch_size, drop_last), batch_size=None,
                          num_workers=num_workers, persistent_workers=num_workers > 0, **kwargs)
