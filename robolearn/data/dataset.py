"""Reading datasets in the LeRobot v3 layout, whoever wrote them (robolearn, LeRobot, a converter).

`DatasetMeta` reads and checks `meta/`; `DatasetReader` adds the frame tables (read once, kept as
numpy arrays) and decodes camera frames on demand. Every inconsistency is reported as one
`DatasetError` naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from robolearn.data.format import (
    CODEBASE_VERSION,
    DEFAULT_FEATURES,
    EPISODES_DIR,
    INFO_PATH,
    ROBOLEARN_META_PATH,
    STATS_PATH,
    SUBTASK_PREFIX,
    TASKS_PATH,
    DatasetError,
    Feature,
    read_json,
)
from robolearn.data.stages import StageAnnotation
from robolearn.data.video import VideoDecoder

_INFO_KEYS = ("codebase_version", "fps", "features", "total_episodes", "total_frames", "data_path")
_EPISODE_KEYS = ("episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index",
                 "data/file_index")


@dataclass
class DatasetMeta:
    """Everything under `meta/`: info, features, tasks, one row per episode, statistics."""

    root: Path
    info: dict[str, Any]
    features: dict[str, Feature]
    tasks: list[str]
    episode_rows: list[dict[str, Any]]
    stats: dict[str, dict[str, np.ndarray]] | None
    robolearn: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path, include_uncommitted: bool = False, with_stats: bool = False) -> DatasetMeta:
        """Read and check `meta/`. include_uncommitted: also the episode rows past total_episodes (a
        recorder died committing them); with_stats: keep the per-episode stats/* columns."""
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: no such dataset directory")
        info_path = root / INFO_PATH
        info = read_json(info_path, "it is not a LeRobot-format dataset (record one with `robolearn collect` "
                                    "or convert one with `robolearn convert`)")
        if not isinstance(info, dict):
            raise DatasetError(f"{info_path}: expected a JSON object")
        missing = [k for k in _INFO_KEYS if k not in info]
        if missing:
            raise DatasetError(f"{info_path}: missing {', '.join(repr(k) for k in missing)}; a LeRobot v3 "
                               "info.json has codebase_version, fps, features, totals and path templates")
        version = str(info["codebase_version"])
        if not version.startswith("v3."):
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported (this reader reads "
                               f"{CODEBASE_VERSION}); convert older datasets with LeRobot's "
                               "convert_dataset_v21_to_v30 script")
        if not isinstance(info["features"], dict) or not info["features"]:
            raise DatasetError(f"{info_path}: 'features' must be a non-empty object")
        if not (isinstance(info["fps"], int | float) and info["fps"] > 0):
            raise DatasetError(f"{info_path}: 'fps' must be a positive number, got {info['fps']!r}")
        info.setdefault("chunks_size", 1000)
        features = {k: Feature.from_json(k, v, str(info_path)) for k, v in info["features"].items()
                    if k not in DEFAULT_FEATURES}
        if any(f.is_video for f in features.values()) and not info.get("video_path"):
            raise DatasetError(f"{info_path}: features include videos but 'video_path' is not set")
        for key, f in features.items():
            if f.dtype == "image":
                raise DatasetError(f"{info_path}: feature {key!r} stores images inside parquet; this reader "
                                   "reads camera streams from videos only. Re-encode it as video with LeRobot")

        tasks = _load_tasks(root / TASKS_PATH) if info["total_episodes"] else []
        rows = _load_episode_rows(root, info, features, with_stats)
        n = int(info["total_episodes"])
        if len(rows) < n:
            raise DatasetError(f"{root / EPISODES_DIR}: {len(rows)} episode rows, but info.json says "
                               f"total_episodes={n}; the metadata is damaged")
        if not include_uncommitted:
            rows = rows[:n]  # rows past total_episodes were being committed when a recorder died
        total = sum(int(r["length"]) for r in rows[:n])
        if total != int(info["total_frames"]):
            raise DatasetError(f"{info_path}: total_frames={info['total_frames']} but the episodes' lengths "
                               f"add up to {total}; the metadata and the data disagree")
        stats = None
        if (root / STATS_PATH).is_file():
            raw = read_json(root / STATS_PATH, "")
            stats = {k: {s: np.asarray(v, np.float64) for s, v in d.items()} for k, d in raw.items()}
        counts = {int(np.ravel(d["count"])[0]) for d in (stats or {}).values() if "count" in d}
        if n and counts != {total}:
            # a recorder died between rewrites of stats.json: merge the committed episodes' own stats
            stats = _merge_episode_stats(root, info, features, n) or stats
        extra = read_json(root / ROBOLEARN_META_PATH, "") if (root / ROBOLEARN_META_PATH).is_file() else {}
        return cls(root, info, features, tasks, rows, stats, extra)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def num_episodes(self) -> int:
        return int(self.info["total_episodes"])

    @property
    def num_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_video]

    @property
    def stage_names(self) -> list[str]:
        """The task's stages in order (from robolearn.json), else the names found in annotations."""
        if self.robolearn.get("stages"):
            return list(self.robolearn["stages"])
        seen: dict[str, None] = {}
        for r in self.episode_rows:
            for name in r.get(f"{SUBTASK_PREFIX}subtask_names") or []:
                seen[name] = None
        return list(seen)

    def stages(self, ep: int) -> StageAnnotation | None:
        r = self.episode_rows[ep]
        names = r.get(f"{SUBTASK_PREFIX}subtask_names")
        if names is None:
            return None
        return StageAnnotation(list(names), [int(x) for x in r[f"{SUBTASK_PREFIX}subtask_start_frames"]],
                               [int(x) for x in r[f"{SUBTASK_PREFIX}subtask_end_frames"]],
                               r.get("robolearn/stage_source") or "user")

    def episode_info(self, ep: int) -> dict[str, Any]:
        raw = self.episode_rows[ep].get("robolearn/info")
        return json.loads(raw) if raw else {}

    def success(self, ep: int) -> bool | None:
        v = self.episode_rows[ep].get("robolearn/success")
        return None if v is None else bool(v)

    def task(self, ep: int) -> str:
        tasks = self.episode_rows[ep].get("tasks")
        return str(tasks[0]) if tasks is not None and len(tasks) else ""

    def data_path(self, row: dict) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=int(row["data/chunk_index"]),
                                                         file_index=int(row["data/file_index"]))

    def video_path(self, row: dict, key: str) -> Path:
        return self.root / self.info["video_path"].format(video_key=key,
                                                          chunk_index=int(row[f"videos/{key}/chunk_index"]),
                                                          file_index=int(row[f"videos/{key}/file_index"]))


def _merge_episode_stats(root: Path, info: dict, features: dict[str, Feature], n: int) -> dict | None:
    from robolearn.data.stats import RunningStats

    rows = _load_episode_rows(root, info, features, with_stats=True)[:n]
    merged = RunningStats()
    for r in rows:
        per: dict[str, dict[str, np.ndarray]] = {}
        for name, v in r.items():
            if name.startswith("stats/") and v is not None:
                key, stat = name[len("stats/"):].rsplit("/", 1)
                per.setdefault(key, {})[stat] = np.asarray(v, np.float64)
        if not per:
            return None  # no per-episode stats in this dataset: keep what stats.json says
        merged.update(per)
    return merged.result()


def _load_tasks(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; every LeRobot dataset lists its task strings there")
    try:
        t = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path}: not a readable parquet file ({e})") from None
    cols = t.column_names
    name_col = "task" if "task" in cols else "__index_level_0__" if "__index_level_0__" in cols else None
    if name_col is None or "task_index" not in cols:
        raise DatasetError(f"{path}: expected the task strings (index 'task') and a 'task_index' column; "
                           f"found {cols}")
    names, idx = t.column(name_col).to_pylist(), t.column("task_index").to_pylist()
    out = [""] * len(names)
    for n, i in zip(names, idx):
        if not 0 <= i < len(names):
            raise DatasetError(f"{path}: task_index {i} of {n!r} is out of range 0..{len(names) - 1}")
        out[i] = str(n)
    return out


def _load_episode_rows(root: Path, info: dict, features: dict[str, Feature], with_stats: bool = False) -> list[dict]:
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        if int(info["total_episodes"]) == 0:
            return []
        raise DatasetError(f"{root / EPISODES_DIR}: no episode metadata files (chunk-*/file-*.parquet)")
    rows = []
    for f in files:
        try:
            t = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{f}: not a readable parquet file ({e})") from None
        need = list(_EPISODE_KEYS) + [f"videos/{k}/{c}" for k, ft in features.items() if ft.is_video
                                      for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        missing = [k for k in need if k not in t.column_names]
        if missing:
            raise DatasetError(f"{f}: missing episode columns {missing}")
        # per-episode stats are read only when asked for (they are most of the bytes)
        keep = [c for c in t.column_names if with_stats or not c.startswith("stats/")]
        rows.extend(t.select(keep).to_pylist())
    rows.sort(key=lambda r: r["episode_index"])
    for i, r in enumerate(rows):
        if r["episode_index"] != i:
            raise DatasetError(f"{root / EPISODES_DIR}: episode indices must be 0..N-1 without gaps; "
                               f"found {r['episode_index']} where {i} was expected")
    return rows


class DatasetReader:
    """Frames of a dataset: numeric features as arrays in memory, camera frames decoded on demand.

    Frames are addressed by global index (LeRobot's `index` column) or by (episode, frame)."""

    def __init__(self, root: str | Path, check_videos: bool = True):
        self.meta = meta = DatasetMeta.load(root)
        self.root = meta.root
        self.features = meta.features
        self.fps = meta.fps
        rows = meta.episode_rows
        self.lengths = np.array([int(r["length"]) for r in rows], np.int64)
        self.ep_from = np.array([int(r["dataset_from_index"]) for r in rows], np.int64)
        tasks = meta.tasks
        self.task_index = np.array([tasks.index(meta.task(e)) if meta.task(e) in tasks else 0
                                    for e in range(len(rows))], np.int64)
        self.numeric_keys = [k for k, f in self.features.items() if not f.is_video and f.dtype != "string"]
        self.video_keys = meta.video_keys
        self._arrays = self._load_frames()
        # video segment of each episode: file and start time, per camera
        self._video_file = {k: [meta.video_path(r, k) for r in rows] for k in self.video_keys}
        self._video_t0 = {k: np.array([float(r[f"videos/{k}/from_timestamp"]) for r in rows]) for k in
                          self.video_keys}
        self.decoder = VideoDecoder(tolerance_s=0.4 / self.fps)
        if check_videos:
            self._check_videos()

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def _load_frames(self) -> dict[str, np.ndarray]:
        """Read every data file the episodes point at; arrays ordered by episode then frame."""
        meta = self.meta
        by_file: dict[Path, list[int]] = {}
        for i, r in enumerate(meta.episode_rows):
            by_file.setdefault(meta.data_path(r), []).append(i)
        total = int(self.lengths.sum())
        out = {k: np.empty((total, *self.features[k].shape), _np_dtype(self.features[k])) for k in
               self.numeric_keys}
        out["timestamp"] = np.empty(total, np.float32)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.offsets = offsets
        for path, eps in by_file.items():
            if not path.is_file():
                raise DatasetError(f"{path} is missing; meta/episodes says episode {eps[0]} is stored there")
            try:
                table = pq.read_table(path)
            except (pa.ArrowInvalid, OSError) as e:
                raise DatasetError(f"{path}: not a readable parquet file ({e})") from None
            cols = set(table.column_names)
            for key in self.numeric_keys + ["index", "frame_index", "timestamp"]:
                if key not in cols:
                    raise DatasetError(f"{path}: column {key!r} declared in meta/info.json is missing from the "
                                       f"frame table (it has {sorted(cols)})")
            index = table.column("index").to_numpy()
            # the rows' own episode_index, where there is one: a length or dataset_from_index too big would
            # otherwise take the next episode's rows for this one's, silently
            owner = table.column("episode_index").to_numpy() if "episode_index" in cols else None
            counts = dict(zip(*np.unique(owner, return_counts=True))) if owner is not None else {}
            for ep in eps:
                lo, n = int(self.ep_from[ep]), int(self.lengths[ep])
                sel = np.flatnonzero((index >= lo) & (index < lo + n))
                have = len(sel) if owner is None else int(counts.get(ep, 0))
                if len(sel) != n or have != n:
                    raise DatasetError(f"{path}: episode {ep} has {have} frames in the frame table but its "
                                       f"meta/episodes row says length={n}; the data and metadata disagree")
                if owner is not None and (owner[sel] != ep).any():
                    raise DatasetError(f"{path}: rows index {lo}..{lo + n - 1} (dataset_from_index={lo} and length={n} "
                                       f"of episode {ep} in meta/episodes) hold episode_index "
                                       f"{sorted(set(owner[sel].tolist()))}; the data and metadata disagree")
                sel = sel[np.argsort(index[sel], kind="stable")]
                dst = slice(offsets[ep], offsets[ep] + n)
                for key in self.numeric_keys:
                    out[key][dst] = _column_to_numpy(table.column(key).take(sel), self.features[key], path, key)
                out["timestamp"][dst] = table.column("timestamp").take(sel).to_numpy()
        for key in self.numeric_keys:
            a = out[key]
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                flat = int(np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))[0])
                ep = int(np.searchsorted(offsets, flat, side="right") - 1)
                raise DatasetError(f"{meta.data_path(meta.episode_rows[ep])}: column {key!r} has NaN or inf at "
                                   f"episode {ep}, frame {flat - offsets[ep]}; repair or drop that episode")
        return out

    def _check_videos(self) -> None:
        """Each video opens and holds at least the frames its episodes need (catches truncation)."""
        import av

        need: dict[Path, float] = {}
        for k in self.video_keys:
            for ep, p in enumerate(self._video_file[k]):
                end = self._video_t0[k][ep] + self.lengths[ep] / self.fps
                need[p] = max(need.get(p, 0.0), end)
        for p, end in need.items():
            if not p.is_file():
                raise DatasetError(f"{p} is missing; meta/episodes points at it")
            try:
                with av.open(str(p)) as c:
                    s = c.streams.video[0]
                    n = s.frames
                    dur = float(s.duration * s.time_base) if s.duration else None
            except (av.error.FFmpegError, IndexError) as e:
                raise DatasetError(f"{p}: not a readable video ({e}); the file is truncated or damaged. "
                                   "Re-record or re-convert the episodes stored in it") from None
            have = n / self.fps if n else dur
            if have is not None and have + 0.5 / self.fps < end:
                raise DatasetError(f"{p}: holds {have:.3f}s of video but meta/episodes needs {end:.3f}s; "
                                   "the file is truncated or the frame counts disagree")

    # ---- access ------------------------------------------------------------------------------
    def global_index(self, ep: int, frame: np.ndarray | int) -> np.ndarray:
        return self.offsets[ep] + np.asarray(frame)

    def numeric(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Values of a numeric feature at global frame positions `rows`."""
        return self._arrays[key][rows]

    def video_frames(self, key: str, ep: int, frames: np.ndarray) -> np.ndarray:
        """(K, H, W, 3) uint8 frames `frames` (ascending frame indices) of episode `ep`, camera `key`."""
        ts = self._video_t0[key][ep] + np.asarray(frames, np.float64) / self.fps
        return self.decoder.frames(self._video_file[key][ep], ts)

    def episode(self, ep: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """All frames of one episode: {feature: (T, *shape)}; cameras as (T, H, W, 3) uint8."""
        if not 0 <= ep < self.num_episodes:
            raise DatasetError(f"{self.root}: episode {ep} does not exist (the dataset has episodes "
                               f"0..{self.num_episodes - 1})")
        keys = keys or list(self.features)
        sl = slice(self.offsets[ep], self.offsets[ep + 1])
        out = {}
        for k in keys:
            if k in self._arrays:
                out[k] = self._arrays[k][sl]
            elif k in self.video_keys:
                out[k] = self.video_frames(k, ep, np.arange(self.lengths[ep]))
            else:
                raise DatasetError(f"{self.root}: no feature {k!r}; it has {', '.join(self.features)}")
        return out


def _np_dtype(ft: Feature) -> np.dtype:
    return np.dtype(bool) if ft.dtype == "bool" else np.dtype(ft.dtype)


def _column_to_numpy(col: pa.ChunkedArray, ft: Feature, path: Path, key: str) -> np.ndarray:
    """A frame-table column (scalar, list or fixed-size list, possibly nested) -> (T, *shape)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        raise DatasetError(f"{path}: column {key!r} has {arr.null_count} missing values")
    values = arr
    depth = 0
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type) or \
            pa.types.is_large_list(values.type):
        if not pa.types.is_fixed_size_list(values.type) and len(values):
            # variable-length lists (HF datasets' Sequence): ragged rows could add up to T * D values
            # and be silently reshaped across frames
            lo, hi = pc.min_max(pc.list_value_length(values)).values()
            if lo != hi:
                raise DatasetError(f"{path}: column {key!r} has rows of {lo.as_py()} to {hi.as_py()} values, but "
                                   f"meta/info.json declares shape {list(ft.shape)} for every frame")
        values = values.flatten()
        depth += 1
    flat = values.to_numpy(zero_copy_only=False)
    want = int(np.prod(ft.shape))
    if len(flat) != n * want or (depth == 0 and ft.shape != (1,)):
        raise DatasetError(f"{path}: column {key!r} holds {len(flat) // max(n, 1)} values per frame, but "
                           f"meta/info.json declares shape {list(ft.shape)}")
    try:
        return flat.astype(_np_dtype(ft), copy=False).reshape(n, *ft.shape)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: column {key!r} cannot be read as {ft.dtype} ({e})") from None
