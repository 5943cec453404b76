"""The on-disk layout of a dataset: LeRobot v3.0, field for field, plus what robolearn adds.

LeRobot's documented layout (codebase_version "v3.0"):

    meta/info.json                       features (dtype, shape, names), fps, totals, splits, path templates
    meta/stats.json                      per-feature min, max, mean, std, count and quantiles q01..q99
    meta/tasks.parquet                   task strings (index "task") -> task_index
    meta/episodes/chunk-XXX/file-XXX.parquet
                                         one row per episode: length, tasks, where its frames and video
                                         segments live (data/*, videos/<key>/*), dataset_from/to_index,
                                         and per-episode stats/<feature>/<stat>
    data/chunk-XXX/file-XXX.parquet      frame table: one row per frame, many episodes per file
    videos/<key>/chunk-XXX/file-XXX.mp4  one stream per camera, many episodes per file, an episode
                                         located by [from_timestamp, to_timestamp) in its file

What robolearn adds is invisible to a LeRobot reader: extra frame features (`next.reward`,
`next.done`, `next.success`, `observation.environment_state`), extra episode columns (the SARM stage
annotation `sparse_subtask_*`, `robolearn/*`), and extra `meta/` files (`robolearn.json`,
`temporal_proportions_sparse.json`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import RobolearnError

CODEBASE_VERSION = "v3.0"
FORMAT_VERSION = 1  # robolearn's own additions (meta/robolearn.json)

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
ROBOLEARN_META_PATH = "meta/robolearn.json"
CHUNK_FILE_PATTERN = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE_PATTERN + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE_PATTERN + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE_PATTERN + ".mp4"
DEFAULT_CHUNK_SIZE = 1000  # files per chunk directory
DEFAULT_DATA_FILE_SIZE_IN_MB = 100
DEFAULT_VIDEO_FILE_SIZE_IN_MB = 500
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count") + QUANTILE_KEYS

# the per-frame bookkeeping columns every LeRobot dataset has
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
VISUAL_DTYPES = ("video", "image")
# SARM's stage annotation columns in meta/episodes (annotation type "sparse": the task's own stages)
SUBTASK_PREFIX = "sparse_"


class DatasetError(RobolearnError, ValueError):
    """A dataset directory or file is missing, malformed, or disagrees with its metadata."""


@dataclass
class Feature:
    """One per-frame feature: `dtype` is a numpy dtype name, or "video" for an RGB camera stream
    (shape (H, W, 3), uint8 frames, stored as mp4)."""

    dtype: str
    shape: tuple[int, ...]
    names: list[str] | None = None
    info: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    def to_json(self) -> dict[str, Any]:
        names = self.names
        if self.is_video and names is None:
            names = ["height", "width", "channels"]
        out = {"dtype": self.dtype, "shape": list(self.shape), "names": names}
        if self.info is not None:
            out["info"] = self.info
        return out

    @classmethod
    def from_json(cls, key: str, raw: Any, where: str) -> Feature:
        if not isinstance(raw, dict) or "dtype" not in raw or "shape" not in raw:
            raise DatasetError(f"{where}: feature {key!r} must be an object with 'dtype' and 'shape'; got {raw!r}")
        dtype, shape = raw["dtype"], raw["shape"]
        if dtype not in NUMERIC_DTYPES + VISUAL_DTYPES + ("string",):
            raise DatasetError(f"{where}: feature {key!r} has dtype {dtype!r}; expected one of "
                               f"{', '.join(NUMERIC_DTYPES + VISUAL_DTYPES)}")
        if not isinstance(shape, list | tuple) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise DatasetError(f"{where}: feature {key!r} has shape {shape!r}; expected a list of positive ints")
        if dtype in VISUAL_DTYPES and (len(shape) != 3 or 3 not in (shape[0], shape[-1])):
            raise DatasetError(f"{where}: camera feature {key!r} has shape {shape}; expected [height, width, 3]")
        return cls(dtype, tuple(shape), raw.get("names"), raw.get("info"))


def chunk_file(index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk_index, file_index) of the `index`-th file of a kind (files fill chunk after chunk)."""
    return divmod(index, chunks_size)


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any, fsync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode(), fsync)


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file, naming the file and the fix when it is missing or malformed."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); restore it from a backup or re-record the dataset") \
            from None


def to_jsonable(x: Any) -> Any:
    """numpy arrays and scalars -> JSON lists and numbers (recursively)."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
