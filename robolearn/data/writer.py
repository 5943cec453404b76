"""Recording episodes into a dataset, so that a crash never costs a finished episode.

Commit protocol of `add_episode` (each file is written to a temp name and renamed over, so every
file is always either its old or its new version):
  1. the episode's frame table, as its own data file, and each camera's video, as its own mp4;
  2. meta/tasks.parquet when the episode brings a new task;
  3. meta/episodes (every row, rewritten);
  4. meta/info.json with the new totals: the commit point.
meta/stats.json and meta/temporal_proportions_sparse.json are derived from meta/episodes (each row
keeps its episode's stats, as in LeRobot) and are rewritten on `close()`, on `open()`, and every
`derived_every` episodes; a reader that finds them behind the episodes recomputes them. Readers see the first
     `total_episodes` rows of meta/episodes; a row past them is an episode that was being committed
     when the process died, and `DatasetWriter.open` removes it with its files.
`close()` then packs the one-episode files into many-episode files (`data_files_size_in_mb`,
`video_files_size_in_mb`), copying video packets rather than re-encoding, switches meta/episodes to
them in one rename, and only then deletes the one-episode files. A dataset killed at any moment
reopens for appending (`DatasetWriter.open`) and is readable as it is.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robolearn.data.format import (
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DATA_FILE_SIZE_IN_MB,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_FILE_SIZE_IN_MB,
    EPISODES_DIR,
    EPISODES_PATH,
    FORMAT_VERSION,
    INFO_PATH,
    ROBOLEARN_META_PATH,
    STATS_PATH,
    SUBTASK_PREFIX,
    TASKS_PATH,
    VIDEO_PATH,
    DatasetError,
    Feature,
    atomic_write_bytes,
    atomic_write_json,
    chunk_file,
    to_jsonable,
)
from robolearn.data.stages import StageAnnotation, temporal_proportions
from robolearn.data.stats import RunningStats, episode_stats, numeric_episode_stats
from robolearn.data.video import VideoOptions, concat_videos, encode_episode

META_ROWS = 100  # episodes per meta/episodes file
_FILE_RE = re.compile(r"chunk-(\d{3,})/file-(\d{3,})\.(parquet|mp4)$")


def arrow_type(ft: Feature) -> pa.DataType:
    """The parquet column type LeRobot (through HF datasets) gives a feature: a scalar for shape (1,),
    a fixed-size list for (D,), nested fixed-size lists for more dimensions."""
    t = pa.bool_() if ft.dtype == "bool" else pa.from_numpy_dtype(np.dtype(ft.dtype))
    if ft.shape == (1,):
        return t
    for d in reversed(ft.shape):
        t = pa.list_(t, d)
    return t


def frame_column(values: np.ndarray, ft: Feature) -> pa.Array:
    """(T, *shape) values -> one parquet column of `arrow_type(ft)`."""
    t = len(values)
    flat = pa.array(np.ascontiguousarray(values, dtype=np.dtype(ft.dtype)).reshape(-1))
    if ft.shape == (1,):
        return flat
    arr = flat
    for d in reversed(ft.shape):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    assert len(arr) == t
    return arr


@dataclass
class EpisodeRecord:
    """What one finished episode carries besides its frames."""

    task: str
    stages: StageAnnotation | None = None
    success: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)
    """JSON-able details kept with the episode (seed, reset state for replay, injected failure, ...)"""


class DatasetWriter:
    """Appends episodes to a dataset directory (`create` a new one or `open` one to append)."""

    def __init__(self, root: Path, info: dict, episodes: list[dict], tasks: list[str], extra_meta: dict,
                 video: VideoOptions, fsync: bool):
        self.root, self.info, self.episodes, self.tasks = root, info, episodes, tasks
        self.extra_meta, self.video, self.fsync = extra_meta, video, fsync
        self.derived_every = 25  # episodes between rewrites of stats.json and temporal proportions
        self._table: pa.Table | None = None  # the meta/episodes file last written, and its number
        self._table_file = -1
        self.features = {k: Feature.from_json(k, v, str(root / INFO_PATH)) for k, v in info["features"].items()
                         if k not in DEFAULT_FEATURES}
        self.video_keys = [k for k, f in self.features.items() if f.is_video]
        self.fps = int(info["fps"])
        self._stats = RunningStats()
        for row in episodes:
            self._stats.update(_row_stats(row, list(self.features)))
        self._next_file = {kind: self._scan_next_file(kind) for kind in ["data", *self.video_keys]}
        self.closed = False

    # ---- creating and reopening --------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, features: dict[str, Feature], fps: int, robot_type: str | None = None,
               video: VideoOptions | None = None, extra_meta: dict | None = None, fsync: bool = True,
               chunks_size: int = DEFAULT_CHUNK_SIZE) -> DatasetWriter:
        """A new, empty dataset at `root` (which must not exist or be empty)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DatasetError(f"{root} is a file; choose a directory for the dataset")
        if root.exists() and any(root.iterdir()):
            hint = " (it holds a dataset: append to it with resume=true)" if (root / INFO_PATH).exists() else ""
            raise DatasetError(f"{root} already exists and is not empty{hint}; choose another output directory")
        if int(fps) != fps or fps <= 0:
            raise DatasetError(f"fps={fps}: a LeRobot dataset needs a whole positive frame rate")
        for key in features:
            if "/" in key:
                raise DatasetError(f"feature {key!r}: feature names cannot contain '/'")
            if key in DEFAULT_FEATURES:
                raise DatasetError(f"feature {key!r} is written by the recorder itself; drop it from the features")
            ft = features[key]
            if ft.is_video and (len(ft.shape) != 3 or ft.shape[2] != 3 or ft.shape[0] % 2 or ft.shape[1] % 2):
                # refused here, not at the first add_episode, which would leave files behind on every try
                raise DatasetError(f"camera {key!r}: shape {ft.shape} cannot be stored as yuv420p video; declare it "
                                   "as (height, width, 3) with an even height and width")
        video = video or VideoOptions()
        feats = {}
        for key, ft in features.items():
            if ft.is_video:
                h, w, c = ft.shape
                ft = Feature("video", ft.shape, ["height", "width", "channels"], {
                    "video.height": h, "video.width": w, "video.codec": _codec_name(video.codec),
                    "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": int(fps),
                    "video.channels": c, "has_audio": False,
                })
            feats[key] = ft.to_json()
        feats.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": chunks_size,
            "data_files_size_in_mb": DEFAULT_DATA_FILE_SIZE_IN_MB,
            "video_files_size_in_mb": DEFAULT_VIDEO_FILE_SIZE_IN_MB,
            "fps": int(fps),
            "splits": {},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if any(f.is_video for f in features.values()) else None,
            "features": feats,
        }
        root.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "video": video.__dict__, **(extra_meta or {})}
        atomic_write_json(root / ROBOLEARN_META_PATH, to_jsonable(meta), fsync)
        atomic_write_json(root / INFO_PATH, info, fsync)
        return cls(root, info, [], [], meta, video, fsync)

    @classmethod
    def open(cls, root: str | Path, fsync: bool = True) -> DatasetWriter:
        """Reopen a dataset to append episodes, first undoing whatever a crash left half-done."""
        from robolearn.data.dataset import DatasetMeta

        root = Path(root)
        meta = DatasetMeta.load(root, include_uncommitted=True, with_stats=True)
        n = meta.info["total_episodes"]
        episodes = [dict(r) for r in meta.episode_rows[:n]]  # rows past total_episodes never committed
        extra = meta.robolearn
        video = VideoOptions(**extra.get("video", {})) if extra else VideoOptions()
        w = cls(root, meta.info, episodes, list(meta.tasks), extra, video, fsync)
        w._recover(uncommitted=len(meta.episode_rows) > n)
        return w

    def _recover(self, uncommitted: bool) -> None:
        """Delete temp files and files no committed episode points at; rewrite derived metadata."""
        for tmp in self.root.rglob(".*.tmp*"):
            tmp.unlink()
        used = {self._rel("data", r) for r in self.episodes}
        used |= {self._rel(k, r) for r in self.episodes for k in self.video_keys}
        for kind_dir in [self.root / "data"] + [self.root / "videos" / k for k in self.video_keys]:
            for f in kind_dir.rglob("file-*.*") if kind_dir.is_dir() else ():
                if f.relative_to(self.root).as_posix() not in used:
                    f.unlink()
        if uncommitted:
            self._write_episodes_meta()
        self._write_derived()
        self._next_file = {kind: self._scan_next_file(kind) for kind in ["data", *self.video_keys]}

    # ---- appending ---------------------------------------------------------------------------
    def add_episode(self, frames: dict[str, np.ndarray], record: EpisodeRecord) -> int:
        """Write one finished episode; returns its episode index. When this returns, the episode
        survives any later crash.

        frames: {feature: (T, *shape)} for every feature of the dataset (video: (T, H, W, 3) uint8)."""
        if self.closed:
            raise DatasetError(f"{self.root}: the writer is closed; reopen it with DatasetWriter.open")
        t = self._check_frames(frames)
        ep = len(self.episodes)
        if record.stages is not None:
            record.stages.validate(t, f"episode {ep} stage annotation")
        if record.task not in self.tasks:
            self.tasks.append(record.task)
            self._write_tasks()
        start = self.info["total_frames"]
        row: dict[str, Any] = {
            "episode_index": ep, "tasks": [record.task], "length": t,
            "dataset_from_index": start, "dataset_to_index": start + t,
        }
        # 1. frame table and videos, each in files of their own
        table = self._frame_table(frames, ep, start, self.tasks.index(record.task))
        c, f = self._alloc("data")
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(self.root / DATA_PATH.format(chunk_index=c, file_index=f), buf.getvalue(), self.fsync)
        row["data/chunk_index"], row["data/file_index"] = c, f
        for key in self.video_keys:
            c, f = self._alloc(key)
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
            encode_episode(path, np.asarray(frames[key]), self.fps, self.video, key)
            if self.fsync:
                _fsync(path)
            row.update({f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
                        f"videos/{key}/from_timestamp": 0.0, f"videos/{key}/to_timestamp": t / self.fps})
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = chunk_file(ep // META_ROWS,
                                                                                       self.info["chunks_size"])
        numeric = {k: v for k, v in frames.items() if not self.features[k].is_video}
        numeric.update(self._default_columns(ep, start, t, self.tasks.index(record.task)))
        stats = numeric_episode_stats(numeric)
        stats.update({k: episode_stats(np.asarray(frames[k]), is_image=True) for k in self.video_keys})
        for key, s in stats.items():
            for name, v in s.items():
                row[f"stats/{key}/{name}"] = np.asarray(v).tolist()
        row.update(_stage_columns(record.stages, self.fps))
        row["robolearn/success"] = record.success
        row["robolearn/info"] = json.dumps(to_jsonable(record.info))
        # 2-4. metadata; info.json last: the commit point
        self.episodes.append(row)
        self._write_episodes_meta(appended=row)
        self._stats.update(stats)
        if (ep + 1) % self.derived_every == 0:
            self._write_derived()
        self.info["total_episodes"] = ep + 1
        self.info["total_frames"] = start + t
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{ep + 1}"}
        atomic_write_json(self.root / INFO_PATH, self.info, self.fsync)
        return ep

    def _check_frames(self, frames: dict[str, np.ndarray]) -> int:
        missing = sorted(set(self.features) - set(frames))
        extra = sorted(set(frames) - set(self.features))
        if missing or extra:
            raise DatasetError(f"episode frames do not match the dataset's features: missing {missing}, "
                               f"unexpected {extra}")
        lengths = {k: len(v) for k, v in frames.items()}
        if len(set(lengths.values())) != 1:
            raise DatasetError(f"every feature of an episode needs the same number of frames; got {lengths}")
        t = next(iter(lengths.values()))
        if t == 0:
            raise DatasetError("an episode needs at least one frame")
        for k, v in frames.items():
            ft, v = self.features[k], np.asarray(v)
            want = ft.shape if ft.shape != (1,) else None
            got = v.shape[1:]
            if want is not None and got != want or want is None and got not in ((), (1,)):
                raise DatasetError(f"feature {k!r}: frames have shape {got}, the dataset declares {ft.shape}")
            if ft.is_video and v.dtype != np.uint8:
                raise DatasetError(f"camera {k!r}: frames must be uint8 RGB, got {v.dtype}")
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                bad = int(np.flatnonzero(~np.isfinite(v.reshape(t, -1)).all(1))[0])
                raise DatasetError(f"feature {k!r} has NaN or inf at frame {bad}; nothing was written for this "
                                   "episode. Fix the source of the values (or drop the episode)")
        return t

    def _frame_table(self, frames: dict[str, np.ndarray], ep: int, start: int, task_index: int) -> pa.Table:
        t = len(next(iter(frames.values())))
        cols = {k: frame_column(np.asarray(frames[k]), ft) for k, ft in self.features.items() if not ft.is_video}
        idx = np.arange(t, dtype=np.int64)
        cols["timestamp"] = pa.array((idx / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(idx)
        cols["episode_index"] = pa.array(np.full(t, ep, np.int64))
        cols["index"] = pa.array(idx + start)
        cols["task_index"] = pa.array(np.full(t, task_index, np.int64))
        return pa.table(cols)

    def _default_columns(self, ep: int, start: int, t: int, task_index: int) -> dict[str, np.ndarray]:
        idx = np.arange(t, dtype=np.float64)[:, None]
        return {"timestamp": idx / self.fps, "frame_index": idx, "episode_index": np.full((t, 1), ep, np.float64),
                "index": idx + start, "task_index": np.full((t, 1), task_index, np.float64)}

    def set_stages(self, annotations: dict[int, StageAnnotation]) -> None:
        """Replace the stage annotations of some episodes (all checked before anything is written)."""
        known = self.extra_meta.get("stages") or None
        for ep, ann in annotations.items():
            if not 0 <= ep < len(self.episodes):
                raise DatasetError(f"{self.root}: cannot annotate episode {ep}; the dataset has episodes "
                                   f"0..{len(self.episodes) - 1}")
            ann.validate(int(self.episodes[ep]["length"]), f"episode {ep} stage annotation", known)
        for ep, ann in annotations.items():
            self.episodes[ep].update(_stage_columns(ann, self.fps))
        self._write_episodes_meta()
        self._write_derived()

    # ---- files -------------------------------------------------------------------------------
    def _rel(self, kind: str, row: dict) -> str:
        if kind == "data":
            return DATA_PATH.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        return VIDEO_PATH.format(video_key=kind, chunk_index=row[f"videos/{kind}/chunk_index"],
                                 file_index=row[f"videos/{kind}/file_index"])

    def _kind_dir(self, kind: str) -> Path:
        return self.root / "data" if kind == "data" else self.root / "videos" / kind

    def _scan_next_file(self, kind: str) -> int:
        """One past the highest file number of this kind on disk or in the metadata."""
        size = self.info["chunks_size"]
        top = -1
        d = self._kind_dir(kind)
        if d.is_dir():
            for p in d.rglob("file-*.*"):
                m = _FILE_RE.search(p.as_posix())
                if m:
                    top = max(top, int(m.group(1)) * size + int(m.group(2)))
        for row in self.episodes:
            ck = "data" if kind == "data" else f"videos/{kind}"
            top = max(top, row[f"{ck}/chunk_index"] * size + row[f"{ck}/file_index"])
        return top + 1

    def _alloc(self, kind: str) -> tuple[int, int]:
        k = self._next_file[kind]
        self._next_file[kind] = k + 1
        return chunk_file(k, self.info["chunks_size"])

    def _write_tasks(self) -> None:
        import pandas as pd

        df = pd.DataFrame({"task_index": np.arange(len(self.tasks), dtype=np.int64)},
                          index=pd.Index(self.tasks, name="task"))
        buf = io.BytesIO()
        df.to_parquet(buf)
        atomic_write_bytes(self.root / TASKS_PATH, buf.getvalue(), self.fsync)

    def _write_episodes_meta(self, appended: dict | None = None) -> None:
        """Rewrite meta/episodes: files of `META_ROWS` episodes each, so that committing an episode
        rewrites one small file; `appended`: only that row is new (the others are not converted again)."""
        size = self.info["chunks_size"]
        if appended is not None:
            k = appended["episode_index"] // META_ROWS
            new = pa.Table.from_pylist([appended])
            if self._table is not None and self._table_file == k:
                # one chunk per column: parquet writes many tiny chunks ~3x slower than one
                table = pa.concat_tables([self._table, new], promote_options="permissive").combine_chunks()
            else:
                table = pa.Table.from_pylist(self.episodes[k * META_ROWS:])
            self._write_meta_file(k, table)
            return
        n_files = -(-len(self.episodes) // META_ROWS)
        for k in range(n_files):
            self._write_meta_file(k, pa.Table.from_pylist(self.episodes[k * META_ROWS:(k + 1) * META_ROWS]))
        for p in (self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"):  # files of dropped episodes
            c, f = int(p.parent.name.split("-")[1]), int(p.stem.split("-")[1])
            if c * size + f >= n_files:
                p.unlink()

    def _write_meta_file(self, k: int, table: pa.Table) -> None:
        c, f = chunk_file(k, self.info["chunks_size"])
        buf = io.BytesIO()
        # ~140 small columns (per-episode stats): dictionaries and column statistics would double the
        # time of this per-episode rewrite and buy nothing for a file that is read whole
        pq.write_table(table, buf, use_dictionary=False, write_statistics=False)
        atomic_write_bytes(self.root / EPISODES_PATH.format(chunk_index=c, file_index=f), buf.getvalue(), self.fsync)
        self._table, self._table_file = table, k

    def _write_derived(self) -> None:
        """meta/stats.json and the stage prior (meta/temporal_proportions_sparse.json)."""
        atomic_write_json(self.root / STATS_PATH, to_jsonable(self._stats.result()), self.fsync)
        anns = [(_row_stages(r), r["length"]) for r in self.episodes]
        anns = [(a, n) for a, n in anns if a is not None]
        if anns:
            names = list(dict.fromkeys(name for a, _ in anns for name in a.names))
            names = self.extra_meta.get("stages") or names
            atomic_write_json(self.root / "meta" / f"temporal_proportions_{SUBTASK_PREFIX[:-1]}.json",
                              temporal_proportions(anns, names), self.fsync)

    # ---- packing and closing -----------------------------------------------------------------
    def close(self) -> None:
        """Pack one-episode files into many-episode files (see the module docstring)."""
        if self.closed:
            return
        self.closed = True
        self._write_derived()
        counts: dict[str, int] = {}
        for row in self.episodes:
            counts[self._rel("data", row)] = counts.get(self._rel("data", row), 0) + 1
        loose = [i for i, r in enumerate(self.episodes) if counts[self._rel("data", r)] == 1]
        if len(loose) < 2:
            return
        rows = [dict(r) for r in self.episodes]
        # group consecutive loose episodes under the size limits
        groups, cur, size = [], [], {"data": 0.0, **dict.fromkeys(self.video_keys, 0.0)}
        limit = {"data": self.info["data_files_size_in_mb"], **dict.fromkeys(
            self.video_keys, self.info["video_files_size_in_mb"])}
        for i in loose:
            sz = {k: (self.root / self._rel(k, rows[i])).stat().st_size / 2**20 for k in size}
            if cur and (i != cur[-1] + 1 or any(size[k] + sz[k] > limit[k] for k in size)):
                groups.append(cur)
                cur, size = [], dict.fromkeys(size, 0.0)
            cur.append(i)
            size = {k: size[k] + sz[k] for k in size}
        groups.append(cur)
        groups = [g for g in groups if len(g) >= 2]  # a lone episode stays in its own file
        old = {self._rel(k, self.episodes[i]) for g in groups for i in g for k in ["data", *self.video_keys]}
        for g in groups:
            c, f = self._alloc("data")
            tables = [pq.read_table(self.root / self._rel("data", rows[i])) for i in g]
            buf = io.BytesIO()
            pq.write_table(pa.concat_tables(tables), buf)
            atomic_write_bytes(self.root / DATA_PATH.format(chunk_index=c, file_index=f), buf.getvalue(), self.fsync)
            for i in g:
                rows[i]["data/chunk_index"], rows[i]["data/file_index"] = c, f
            for key in self.video_keys:
                c, f = self._alloc(key)
                out = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
                starts = concat_videos([self.root / self._rel(key, rows[i]) for i in g],
                                       [rows[i]["length"] for i in g], self.fps, out)
                if self.fsync:
                    _fsync(out)
                for i, s in zip(g, starts):
                    rows[i].update({f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
                                    f"videos/{key}/from_timestamp": s,
                                    f"videos/{key}/to_timestamp": s + rows[i]["length"] / self.fps})
        self.episodes = rows
        self._write_episodes_meta()  # the switch to the packed files
        for rel in old:
            (self.root / rel).unlink(missing_ok=True)
        for d in [self._kind_dir(k) for k in ["data", *self.video_keys]]:
            for sub in sorted(d.rglob("chunk-*"), reverse=True):
                if sub.is_dir() and not any(sub.iterdir()):
                    shutil.rmtree(sub)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _codec_name(encoder: str) -> str:
    return {"libx264": "h264", "libsvtav1": "av1", "libaom-av1": "av1", "libx265": "hevc"}.get(encoder, encoder)


def _stage_columns(stages: StageAnnotation | None, fps: int) -> dict[str, Any]:
    p = SUBTASK_PREFIX
    if stages is None:
        return {f"{p}subtask_names": None, f"{p}subtask_start_frames": None, f"{p}subtask_end_frames": None,
                f"{p}subtask_start_times": None, f"{p}subtask_end_times": None, "robolearn/stage_source": None}
    return {
        f"{p}subtask_names": list(stages.names),
        f"{p}subtask_start_frames": [int(s) for s in stages.start_frames],
        f"{p}subtask_end_frames": [int(e) for e in stages.end_frames],
        f"{p}subtask_start_times": [s / fps for s in stages.start_frames],
        f"{p}subtask_end_times": [e / fps for e in stages.end_frames],
        "robolearn/stage_source": stages.source,
    }


def _row_stages(row: dict) -> StageAnnotation | None:
    p = SUBTASK_PREFIX
    names = row.get(f"{p}subtask_names")
    if names is None:
        return None
    return StageAnnotation(list(names), list(row[f"{p}subtask_start_frames"]), list(row[f"{p}subtask_end_frames"]),
                           row.get("robolearn/stage_source") or "user")


def _row_stats(row: dict, keys: list[str]) -> dict:
    out = {}
    for key in keys + list(DEFAULT_FEATURES):
        s = {name.rsplit("/", 1)[1]: np.asarray(v) for name, v in row.items()
             if name.startswith(f"stats/{key}/") and v is not None}
        if s:
            out[key] = s
    return out
