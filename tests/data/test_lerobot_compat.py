"""robolearn reads a dataset that LeRobot (0.4+/0.5, codebase_version "v3.0") wrote, and writes one that
LeRobot reads. The LeRobot-side dataset is built here straight from the documented layout with
pyarrow, pandas and PyAV, column for column as LeRobot and HF `datasets` lay it out, without robolearn's
writer, so a drift of robolearn from the format fails here rather than on a user's Hub download."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature

FPS = 30
H, W = 48, 64  # svtav1 also takes sides that are not multiples of 8 (it pads); 64x48 needs no padding
CAM = "observation.images.laptop"
LENGTHS = [12, 17, 9]  # odd lengths: episode boundaries fall mid-GOP (g=2)
TASKS = ["pick up the cube", "put the cube in the bin"]
EPISODE_TASK = [0, 1, 0]  # task_index of each episode
JOINTS = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
# AV1 at crf 30 (yuv420p) on these 64x48 gradients: the per-frame mean abs error measured is 2.7-3.0
# gray levels (largest pixel error ~20); 5 leaves room for other svtav1/dav1d builds, while a neighbouring
# frame (an off-by-one in the timestamps) scores ~21.
MAX_MEAN_ABS_ERROR = 5.0


def camera_frame(i: int) -> np.ndarray:
    """Frame `i` (counted over the whole dataset) of a smooth gradient that drifts right and down,
    (H, W, 3) uint8: lossy codecs keep it, and consecutive frames differ by far more than the codec's error."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * (x / W + i / 12))
    g = 128 + 100 * np.cos(2 * np.pi * (y / H + i / 15))
    b = np.full_like(x, 20 + 5 * i)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def encode_av1(path: Path, frames: np.ndarray) -> None:
    """Encode all episodes' frames as one stream, as LeRobot's encode_video_frames does (libsvtav1,
    yuv420p, g=2, crf=30), pts in 1/fps continuing across episodes."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libsvtav1", FPS, options={"g": "2", "crf": "30"})
        stream.pix_fmt, stream.width, stream.height = "yuv420p", W, H
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())


def stat_columns(key: str, values: np.ndarray, image: bool = False) -> dict[str, list]:
    """LeRobot's per-episode stats/<key>/<stat>: lists of the feature's shape, images (3, 1, 1) in [0, 1]."""
    x = values.reshape(-1, 3).astype(np.float64) / 255 if image else values.reshape(len(values), -1)
    shape = (3, 1, 1) if image else values.shape[1:] or (1,)
    out = {s: getattr(np, s)(x, axis=0).reshape(shape).tolist() for s in ("min", "max", "mean", "std")}
    out["count"] = [len(values)]
    return {f"stats/{key}/{s}": v for s, v in out.items()}


@pytest.fixture(scope="module")
def lerobot_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """A 3-episode, 2-task dataset in LeRobot's v3.0 layout; returns (root, what was written)."""
    root = tmp_path_factory.mktemp("lerobot_v30")
    rng = np.random.default_rng(0)
    n = sum(LENGTHS)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    state = rng.normal(size=(n, 6)).astype(np.float32)
    action = rng.normal(size=(n, 6)).astype(np.float32)
    frames = np.stack([camera_frame(i) for i in range(n)])
    episode_index = np.repeat(np.arange(len(LENGTHS)), LENGTHS).astype(np.int64)
    frame_index = np.concatenate([np.arange(t) for t in LENGTHS]).astype(np.int64)
    task_index = np.repeat(EPISODE_TASK, LENGTHS).astype(np.int64)

    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}
    features = {
        "observation.state": {"dtype": "float32", "shape": [6], "names": JOINTS},
        "action": {"dtype": "float32", "shape": [6], "names": JOINTS},
        CAM: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"], "info": {
            "video.height": H, "video.width": W, "video.codec": "av1", "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}},
        "timestamp": scalar("float32"),
        "frame_index": scalar("int64"),
        "episode_index": scalar("int64"),
        "index": scalar("int64"),
        "task_index": scalar("int64"),
    }
    info = {
        "codebase_version": "v3.0", "robot_type": "so101_follower", "total_episodes": len(LENGTHS),
        "total_frames": n, "total_tasks": len(TASKS), "chunks_size": 1000, "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500, "fps": FPS, "splits": {"train": f"0:{len(LENGTHS)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": features,
    }
    (root / "meta").mkdir()
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))

    # frame table: every episode in one file, vectors as variable-length lists (HF datasets' Sequence)
    vec = lambda a: pa.array(list(a), type=pa.list_(pa.float32()))
    table = pa.table({
        "observation.state": vec(state), "action": vec(action),
        "timestamp": pa.array((frame_index / FPS).astype(np.float32)),
        "frame_index": pa.array(frame_index), "episode_index": pa.array(episode_index),
        "index": pa.array(np.arange(n, dtype=np.int64)), "task_index": pa.array(task_index),
    })
    hf_seq = {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"}
    hf = {"info": {"features": {"observation.state": hf_seq, "action": hf_seq,
                                **{k: {"dtype": features[k]["dtype"], "_type": "Value"}
                                   for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")}}}}
    table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")

    pd.DataFrame({"task_index": np.arange(len(TASKS))}, index=pd.Index(TASKS, name="task")).to_parquet(
        root / "meta/tasks.parquet")

    encode_av1(root / f"videos/{CAM}/chunk-000/file-000.mp4", frames)

    rows = []
    for ep, (s, t) in enumerate(zip(starts, LENGTHS)):
        sl = slice(s, s + t)
        row = {
            "episode_index": ep, "tasks": [TASKS[EPISODE_TASK[ep]]], "length": t,
            "data/chunk_index": 0, "data/file_index": 0,
            "dataset_from_index": int(s), "dataset_to_index": int(s + t),
            f"videos/{CAM}/chunk_index": 0, f"videos/{CAM}/file_index": 0,
            f"videos/{CAM}/from_timestamp": s / FPS, f"videos/{CAM}/to_timestamp": (s + t) / FPS,
            "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
        }
        row.update(stat_columns("observation.state", state[sl]))
        row.update(stat_columns("action", action[sl]))
        row.update(stat_columns(CAM, frames[sl], image=True))
        row.update(stat_columns("frame_index", frame_index[sl]))
        rows.append(row)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta/episodes/chunk-000/file-000.parquet")

    stats = {}
    for key, v in [("observation.state", state), ("action", action)]:
        x = v.astype(np.float64)
        stats[key] = {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
                      "std": x.std(0).tolist(), "count": [n],
                      **{f"q{q:02d}": np.quantile(x, q / 100, axis=0).tolist() for q in (1, 10, 50, 90, 99)}}
    (root / "meta/stats.json").write_text(json.dumps(stats, indent=4))
    return root, {"state": state, "action": action, "frames": frames, "starts": starts}


def test_reads_lerobot_counts_and_tasks(lerobot_dataset):
    root, _ = lerobot_dataset
    r = DatasetReader(root)
    assert r.meta.num_episodes == r.num_episodes == len(LENGTHS)
    assert r.meta.num_frames == r.num_frames == sum(LENGTHS)
    assert r.meta.fps == FPS
    assert r.meta.tasks == TASKS
    assert [r.meta.task(ep) for ep in range(len(LENGTHS))] == [TASKS[i] for i in EPISODE_TASK]
    assert r.lengths.tolist() == LENGTHS
    assert r.meta.features["observation.state"].names == JOINTS
    assert r.meta.features[CAM].shape == (H, W, 3) and r.meta.video_keys == [CAM]
    assert r.meta.stats["observation.state"]["mean"].shape == (6,)


def test_reads_lerobot_numbers_exactly(lerobot_dataset):
    root, written = lerobot_dataset
    r = DatasetReader(root)
    for ep, (s, t) in enumerate(zip(written["starts"], LENGTHS)):
        got = r.episode(ep, keys=["observation.state", "action"])
        assert got["observation.state"].dtype == np.float32 and got["observation.state"].shape == (t, 6)
        np.testing.assert_array_equal(got["observation.state"], written["state"][s:s + t])
        np.testing.assert_array_equal(got["action"], written["action"][s:s + t])


def test_reads_lerobot_av1_frames(lerobot_dataset):
    root, written = lerobot_dataset
    assert b"av01" in (root / f"videos/{CAM}/chunk-000/file-000.mp4").read_bytes()  # the mp4 sample entry of AV1
    r = DatasetReader(root)
    for ep, (s, t) in enumerate(zip(written["starts"], LENGTHS)):
        got = r.episode(ep, keys=[CAM])[CAM]
        assert got.shape == (t, H, W, 3) and got.dtype == np.uint8
        want = written["frames"][s:s + t].astype(np.int16)
        err = np.abs(got.astype(np.int16) - want).mean(axis=(1, 2, 3))
        assert err.max() < MAX_MEAN_ABS_ERROR, f"episode {ep}: per-frame mean abs error {err.round(2)}"
        # and each decoded frame is its own, not a neighbour (an off-by-one in from_timestamp)
        shifted = np.abs(got[1:].astype(np.int16) - want[:-1]).mean(axis=(1, 2, 3))
        assert shifted.min() > 2 * MAX_MEAN_ABS_ERROR


def test_lerobot_video_frames_subset_matches_episode(lerobot_dataset):
    root, _ = lerobot_dataset
    r = DatasetReader(root)
    whole = r.episode(1, keys=[CAM])[CAM]
    pick = np.array([0, 3, 4, 9, 16])  # a skip, a neighbour, a jump past a keyframe, the last frame
    np.testing.assert_array_equal(r.video_frames(CAM, 1, pick), whole[pick])
    # a fresh reader (cold decoder: seeks rather than decodes forward) gives the same frames
    np.testing.assert_array_equal(DatasetReader(root).video_frames(CAM, 1, pick[2:]), whole[pick[2:]])


# ---- the other direction: robolearn writes, LeRobot's own reading path (pandas/pyarrow) reads ----
LEROBOT_INFO_KEYS = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                     "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                     "data_path", "video_path", "features"}
LEROBOT_EPISODE_COLUMNS = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                           "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                           "meta/episodes/file_index"] + [f"videos/{CAM}/{c}" for c in
                                                          ("chunk_index", "file_index", "from_timestamp",
                                                           "to_timestamp")]


def test_training_windows_from_a_lerobot_dataset(lerobot_dataset):
    """The training loader works on LeRobot's own layout: windows, padding, task indices, workers."""
    from robolearn.data.windows import WindowDataset

    root, _ = lerobot_dataset
    ds = WindowDataset(root, n_obs_steps=2, horizon=4)
    assert len(ds) == DatasetReader(root).num_frames
    batches = list(ds.loader(batch_size=8, shuffle=True, num_workers=2, seed=0))
    assert sum(len(b["action"]) for b in batches) == len(ds)
    b = batches[0]
    assert b[CAM].shape[1:] == (2, 3, H, W) and b["action"].shape[1:] == (4, 6)
    first = ds[0]
    assert first[f"{CAM}_is_pad"].tolist() == [True, False] and first["task_index"] == 0


@pytest.fixture(scope="module")
def robolearn_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robolearn") / "ds"
    rng = np.random.default_rng(1)
    w = DatasetWriter.create(root, {"observation.state": Feature("float32", (6,), JOINTS),
                                    "action": Feature("float32", (6,)),
                                    CAM: Feature("video", (32, 32, 3))}, fps=FPS, robot_type="so101_follower",
                             fsync=False)
    for ep, t in enumerate([5, 7, 4]):
        w.add_episode({"observation.state": rng.normal(size=(t, 6)).astype(np.float32),
                       "action": rng.normal(size=(t, 6)).astype(np.float32),
                       CAM: rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8)},
                      EpisodeRecord(task=TASKS[EPISODE_TASK[ep]]))
    w.close()
    return root


def test_robolearn_info_json_has_lerobot_keys(robolearn_dataset):
    info = json.loads((robolearn_dataset / "meta/info.json").read_text())
    assert LEROBOT_INFO_KEYS <= set(info), f"missing {LEROBOT_INFO_KEYS - set(info)}"
    assert info["codebase_version"] == "v3.0" and info["splits"] == {"train": "0:3"}
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 16, 2)
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert info["features"][key]["shape"] == [1]
    cam = info["features"][CAM]
    assert cam["names"] == ["height", "width", "channels"]
    assert {"video.height", "video.width", "video.codec", "video.pix_fmt", "video.fps"} <= set(cam["info"])


def test_robolearn_meta_parquets_read_as_lerobot_does(robolearn_dataset):
    root = robolearn_dataset
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks.loc[TASKS[1], "task_index"] == 1 and tasks.index.tolist() == TASKS
    eps = pd.read_parquet(root / "meta/episodes/chunk-000/file-000.parquet")
    missing = [c for c in LEROBOT_EPISODE_COLUMNS if c not in eps.columns]
    assert not missing, f"meta/episodes lacks {missing}"
    assert any(c.startswith("stats/observation.state/") for c in eps.columns)
    assert eps["length"].tolist() == [5, 7, 4]
    assert (eps["dataset_to_index"] - eps["dataset_from_index"]).tolist() == [5, 7, 4]
    assert [list(t) for t in eps["tasks"]] == [[TASKS[i]] for i in EPISODE_TASK]
    # after close() the episodes share one packed file of each kind, located by from_timestamp
    assert eps["data/file_index"].nunique() == 1 and eps[f"videos/{CAM}/file_index"].nunique() == 1
    np.testing.assert_allclose(eps[f"videos/{CAM}/from_timestamp"], np.array([0, 5, 12]) / FPS)


def test_robolearn_frame_table_reads_as_lerobot_does(robolearn_dataset):
    files = sorted((robolearn_dataset / "data").rglob("*.parquet"))
    assert len(files) == 1, "close() packs the episodes into one data file"
    df = pd.read_parquet(files[0])
    assert df["index"].tolist() == list(range(16))
    assert df["episode_index"].tolist() == [0] * 5 + [1] * 7 + [2] * 4
    assert df["frame_index"].tolist() == list(range(5)) + list(range(7)) + list(range(4))
    assert df["task_index"].tolist() == [0] * 5 + [1] * 7 + [0] * 4
    assert np.stack(df["observation.state"]).shape == (16, 6)
    assert df["timestamp"].dtype == np.float32
    # and robolearn's reader agrees with itself on the packed files
    assert DatasetReader(robolearn_dataset).num_frames == 16
