"""Episodes of a dataset in memory, as reward-model windows.

A reward model trains on windows of frames t - (n_frames - 1) * stride, ..., t of one episode, with
the labels of frame t. Videos are decoded once (84x84 cameras take ~21 kB a frame, so a few thousand
episodes of a few hundred frames fit) instead of per batch, which is what makes a few thousand
training steps take minutes on a CPU. A window never crosses an episode's edge: frames before the
episode's first are its first frame repeated, as the inference engine does at the start of a live
episode.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from robolearn.data.dataset import DatasetReader
from robolearn.errors import ConfigError


class EpisodeFrames:
    """Frames of `episodes` of a dataset: data[key] (N, *shape) (cameras uint8 (N, H, W, 3)), with each
    row's episode (`episode`), its index in the episode (`frame`) and its episode's first row (`first`)."""

    def __init__(self, reader: DatasetReader, keys: list[str], episodes: list[int] | np.ndarray,
                 max_memory_gb: float = 8.0, progress: bool = False):
        from tqdm import tqdm

        self.keys = list(keys)
        self.episodes = np.asarray(episodes, np.int64)
        lengths = reader.lengths[self.episodes] if len(self.episodes) else np.zeros(0, np.int64)
        per_frame = sum(int(np.prod(reader.features[k].shape)) * (1 if reader.features[k].is_video else 4)
                        for k in self.keys)
        need = per_frame * int(lengths.sum()) / 2**30
        if need > max_memory_gb:
            raise ConfigError(f"{reader.root}: {len(self.episodes)} episodes take {need:.1f} GB in memory, more "
                              f"than max_memory_gb={max_memory_gb}; raise it or train on fewer episodes")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
        for ep in tqdm(self.episodes, desc="load episodes", unit="ep", disable=not progress, leave=False):
            data = reader.episode(int(ep), self.keys)
            for k in self.keys:
                parts[k].append(data[k])
        self.data = {k: (np.concatenate(v) if v else np.zeros((0, *reader.features[k].shape), np.float32))
                     for k, v in parts.items()}
        self.lengths = lengths.astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.episode = np.repeat(self.episodes, self.lengths)
        self.frame = np.concatenate([np.arange(n) for n in self.lengths]) if len(self.lengths) else np.zeros(0, int)
        self.first = np.repeat(self.starts, self.lengths)
        self.video_keys = [k for k in self.keys if reader.features[k].is_video]

    def __len__(self) -> int:
        return len(self.episode)

    def rows_of(self, i: int) -> np.ndarray:
        """Rows of the i-th episode held (in the order of `episodes`)."""
        return np.arange(self.starts[i], self.starts[i] + self.lengths[i])

    def window_rows(self, rows: np.ndarray, n_frames: int, stride: int) -> np.ndarray:
        """(B,) rows -> (B, n_frames) rows of their windows, oldest first, clamped to the episode's start."""
        rows = np.asarray(rows, np.int64)
        back = (np.arange(n_frames)[::-1] * stride)[None, :]
        return np.maximum(rows[:, None] - back, self.first[rows][:, None])

    def frames(self, rows: np.ndarray, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Rows of any shape S -> {key: (*S, *shape)} tensors; cameras (*S, 3, H, W) float in [0, 1]."""
        rows = np.asarray(rows, np.int64)
        out = {}
        for k in self.keys:
            x = torch.from_numpy(self.data[k][rows.reshape(-1)]).to(device, non_blocking=True)
            if k in self.video_keys:
                x = x.permute(0, 3, 1, 2).float().div_(255.0)
            out[k] = x.reshape(*rows.shape, *x.shape[1:])
        return out

    def windows(self, rows: np.ndarray, n_frames: int, stride: int,
                device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """(B,) rows -> {key: (B, n_frames, *shape)} windows ending at those rows."""
        return self.frames(self.window_rows(rows, n_frames, stride), device)
