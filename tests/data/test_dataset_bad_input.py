"""Every damaged dataset and every bad recording call gets one clear `DatasetError` whose message names
the file that is wrong and the field in it (on the recording side, where no file is involved yet, the
feature), and, where there is one, the fix.

A small valid dataset (2 episodes, state, action, one 32x32 camera) is written once by robolearn's
writer; each test damages its own copy."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robolearn.data import DatasetError, DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.video import VideoOptions, encode_episode

FPS = 10
CAM = "observation.images.front"
LENGTHS = [6, 8]
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def features() -> dict[str, Feature]:
    return {"observation.state": Feature("float32", (6,)), "action": Feature("float32", (6,)),
            CAM: Feature("video", (32, 32, 3))}


def episode_frames(t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(size=(t, 6)).astype(np.float32),
            "action": rng.normal(size=(t, 6)).astype(np.float32),
            CAM: np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8)[None, None, :, None],
                                 (t, 32, 32, 3)).copy()}


@pytest.fixture(scope="module")
def valid_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("valid") / "ds"
    with DatasetWriter.create(root, features(), fps=FPS, fsync=False) as w:
        for ep, t in enumerate(LENGTHS):
            w.add_episode(episode_frames(t, ep), EpisodeRecord(task="lift the cube"))
    DatasetReader(root)  # valid as written
    return root


def only_file(root: Path, pattern: str) -> Path:
    """The one file matching `pattern` (close() packs both episodes into one file of each kind)."""
    files = sorted(root.glob(pattern))
    assert len(files) == 1, files
    return files[0]


def data_file(root: Path) -> Path:
    return only_file(root, "data/chunk-*/file-*.parquet")


def video_file(root: Path) -> Path:
    return only_file(root, f"videos/{CAM}/chunk-*/file-*.mp4")


@pytest.fixture
def ds(valid_dataset, tmp_path) -> Path:
    """A private copy of the valid dataset, to damage."""
    return Path(shutil.copytree(valid_dataset, tmp_path / "ds"))


def read_fails(root: Path, *fragments: str) -> str:
    """Open the dataset, expect a DatasetError whose message holds every fragment; return the message."""
    with pytest.raises(DatasetError) as e:
        DatasetReader(root)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in the message: {msg}"
    return msg


def edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    for k, v in changes.items():
        if v is None:
            del info[k]
        else:
            info[k] = v
    (root / "meta/info.json").write_text(json.dumps(info))


def edit_table(path: Path, **columns) -> None:
    """Rewrite a parquet file with columns replaced (an array) or dropped (None)."""
    t = pq.read_table(path)
    for name, col in columns.items():
        i = t.column_names.index(name)
        t = t.remove_column(i) if col is None else t.set_column(i, name, col)
    pq.write_table(t, path)


# ---- meta/info.json ------------------------------------------------------------------------------
def test_missing_info_json(ds):
    (ds / "meta/info.json").unlink()
    read_fails(ds, "meta/info.json", "is missing", "LeRobot-format")


def test_info_json_not_json(ds):
    (ds / "meta/info.json").write_text('{"codebase_version": "v3.0", "fps": 10,')
    read_fails(ds, "info.json", "not valid JSON", "restore it")


def test_info_json_without_features(ds):
    edit_info(ds, features=None)
    read_fails(ds, "info.json", "'features'")


def test_old_codebase_version_asks_for_conversion(ds):
    edit_info(ds, codebase_version="v2.1")
    read_fails(ds, "info.json", "codebase_version", "'v2.1'", "convert")


def test_total_frames_disagrees_with_episodes(ds):
    edit_info(ds, total_frames=sum(LENGTHS) + 1)
    read_fails(ds, "info.json", f"total_frames={sum(LENGTHS) + 1}", f"add up to {sum(LENGTHS)}")


# ---- the frame table -----------------------------------------------------------------------------
def test_data_column_missing(ds):
    edit_table(data_file(ds), action=None)
    read_fails(ds, data_file(ds).name, "'action'", "missing")


def test_data_vector_of_wrong_width(ds):
    n = sum(LENGTHS)
    narrow = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(n * 5, np.float32)), 5)
    edit_table(data_file(ds), **{"observation.state": narrow})
    read_fails(ds, data_file(ds).name, "'observation.state'", "5 values per frame", "shape [6]")


def test_data_vector_of_ragged_rows(ds):
    """Variable-length lists (as HF datasets writes them) of 5 and 7 values: 6 per frame on average,
    which a reader counting values alone would reshape across frames."""
    path = data_file(ds)
    rows = [[0.5] * (5 if i % 2 else 7) for i in range(sum(LENGTHS))]
    edit_table(path, action=pa.array(rows, pa.list_(pa.float32())))
    read_fails(ds, path.name, "'action'", "rows of 5 to 7 values", "shape [6]")


def test_nan_in_numeric_column(ds):
    path = data_file(ds)
    state = np.stack(pq.read_table(path).column("observation.state").to_numpy(zero_copy_only=False))
    state[LENGTHS[0] + 3, 2] = np.nan
    edit_table(path, **{"observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 6)})
    read_fails(ds, path.name, "'observation.state'", "NaN", "episode 1, frame 3", "drop that episode")


@pytest.mark.parametrize("ep", [0, 1])
def test_episode_longer_than_its_rows(ds, ep):
    """meta/episodes says episode `ep` has 3 more frames than the frame table holds (info.json's total
    agreeing with meta/episodes). For episode 0 the extra index range overlaps episode 1's rows."""
    t = pq.read_table(ds / EPISODES)
    length = t.column("length").to_numpy().copy()
    length[ep] += 3
    edit_table(ds / EPISODES, length=pa.array(length))
    edit_info(ds, total_frames=int(length.sum()))
    read_fails(ds, data_file(ds).name, f"episode {ep}", f"length={LENGTHS[ep] + 3}")


def test_episode_start_inside_another_episode(ds):
    """meta/episodes points episode 1 two rows early, into episode 0's frames (lengths all agree)."""
    t = pq.read_table(ds / EPISODES)
    start = t.column("dataset_from_index").to_numpy().copy()
    start[1] -= 2
    edit_table(ds / EPISODES, dataset_from_index=pa.array(start))
    read_fails(ds, data_file(ds).name, "dataset_from_index=4", "episode 1", "hold episode_index [0, 1]")


# ---- videos --------------------------------------------------------------------------------------
def test_truncated_video(ds):
    path = video_file(ds)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    read_fails(ds, CAM, path.name, "truncated", "Re-record")


def test_video_shorter_than_its_episodes(ds):
    short = episode_frames(LENGTHS[0])[CAM]  # only the first episode's frames
    encode_episode(video_file(ds), short, FPS, VideoOptions(), CAM)
    read_fails(ds, CAM, video_file(ds).name, "meta/episodes needs", "truncated")


# ---- recording -----------------------------------------------------------------------------------
@pytest.fixture
def writer(tmp_path):
    w = DatasetWriter.create(tmp_path / "rec", features(), fps=FPS, fsync=False)
    yield w
    w.close()


def nothing_written(w: DatasetWriter) -> bool:
    return w.info["total_episodes"] == 0 and not any((w.root / "data").rglob("*")) and \
        not (w.root / "meta/tasks.parquet").exists()


def test_add_episode_with_nan(writer):
    frames = episode_frames(5)
    frames["action"][2, 0] = np.nan
    with pytest.raises(DatasetError, match=r"feature 'action' has NaN or inf at frame 2; nothing was written"):
        writer.add_episode(frames, EpisodeRecord(task="t"))
    assert nothing_written(writer)


@pytest.mark.parametrize(("key", "bad"), [("observation.state", (5, 4)), (CAM, (5, 31, 32, 3))],
                         ids=["state-width", "camera-odd-size"])
def test_add_episode_with_wrong_shape(writer, key, bad):
    frames = episode_frames(5)
    frames[key] = np.zeros(bad, frames[key].dtype)
    want = re.escape(f"feature '{key}': frames have shape {bad[1:]}, the dataset declares {features()[key].shape}")
    with pytest.raises(DatasetError, match=want):
        writer.add_episode(frames, EpisodeRecord(task="t"))
    assert nothing_written(writer)


def test_add_episode_with_missing_feature(writer):
    frames = episode_frames(5)
    del frames["action"]
    with pytest.raises(DatasetError, match=r"episode frames do not match the dataset's features: missing \['action'\]"):
        writer.add_episode(frames, EpisodeRecord(task="t"))
    assert nothing_written(writer)


@pytest.mark.parametrize("shape", [(31, 32, 3), (32, 33, 3), (32, 32)])
def test_camera_of_odd_size(tmp_path, shape):
    """yuv420p needs even sides: refused when the camera is declared, before anything is written."""
    feats = {**features(), CAM: Feature("video", shape)}
    with pytest.raises(DatasetError, match=rf"camera '{CAM}': shape {re.escape(str(shape))} .* even height and width"):
        DatasetWriter.create(tmp_path / "rec", feats, fps=FPS)
    assert not (tmp_path / "rec").exists()


def test_create_into_non_empty_directory(valid_dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"already exists and is not empty.*holds a dataset.*choose another"):
        DatasetWriter.create(valid_dataset, features(), fps=FPS)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=rf"{re.escape(tmp_path.name)} already exists and is not empty"):
        DatasetWriter.create(tmp_path, features(), fps=FPS)
