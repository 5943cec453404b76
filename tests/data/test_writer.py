"""DatasetWriter: statistics, packing, reopening, stage annotations (from files too)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robolearn.data import DatasetError, DatasetMeta, DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.stages import StageAnnotation, load_annotation_file

FEATS = {"observation.state": Feature("float32", (3,), ["a", "b", "c"]), "action": Feature("float32", (2,)),
         "observation.images.cam": Feature("video", (8, 8, 3))}


def _ep(rng, t):
    return {"observation.state": rng.normal(size=(t, 3)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
            "observation.images.cam": rng.integers(0, 255, (t, 8, 8, 3), dtype=np.uint8)}


def test_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    eps = [_ep(rng, t) for t in (5, 40, 17, 1)]
    with DatasetWriter.create(tmp_path / "d", FEATS, 10) as w:
        for e in eps:
            w.add_episode(e, EpisodeRecord("t"))
    stats = DatasetMeta.load(tmp_path / "d").stats
    x = np.concatenate([e["observation.state"] for e in eps]).astype(np.float64)
    s = stats["observation.state"]
    np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-9)
    np.testing.assert_array_equal(s["min"], x.min(0))
    np.testing.assert_array_equal(s["max"], x.max(0))
    assert int(s["count"][0]) == len(x)
    for q in ("q01", "q10", "q50", "q90", "q99"):  # count-weighted mean of episode quantiles: close, not exact
        assert s[q].shape == (3,)
        assert np.all(s["min"] <= s[q]) and np.all(s[q] <= s["max"])
    assert abs(s["q50"] - np.median(x, 0)).max() < 0.3
    img = stats["observation.images.cam"]
    assert img["mean"].shape == (3, 1, 1) and 0.4 < float(img["mean"].mean()) < 0.6
    assert stats["index"]["max"][0] == len(x) - 1


def test_packing_respects_size_limits(tmp_path):
    rng = np.random.default_rng(1)
    w = DatasetWriter.create(tmp_path / "d", FEATS, 10)
    w.info["data_files_size_in_mb"] = 0.008  # ~2 episodes (3.2 kB each) per data file
    for _ in range(6):
        w.add_episode(_ep(rng, 20), EpisodeRecord("t"))
    w.close()
    r = DatasetReader(tmp_path / "d")
    data_files = sorted((tmp_path / "d" / "data").rglob("*.parquet"))
    assert 2 <= len(data_files) < 6
    assert len(list((tmp_path / "d" / "videos").rglob("*.mp4"))) < 6
    for e in range(6):
        r.episode(e)


def test_reopen_appends_and_keeps_stats(tmp_path):
    rng = np.random.default_rng(2)
    eps = [_ep(rng, 7) for _ in range(4)]
    with DatasetWriter.create(tmp_path / "d", FEATS, 10) as w:
        for e in eps[:2]:
            w.add_episode(e, EpisodeRecord("first task"))
    with DatasetWriter.open(tmp_path / "d") as w:
        for e in eps[2:]:
            w.add_episode(e, EpisodeRecord("second task"))
    m = DatasetMeta.load(tmp_path / "d")
    assert m.num_episodes == 4 and m.tasks == ["first task", "second task"]
    assert [m.task(e) for e in range(4)] == ["first task"] * 2 + ["second task"] * 2
    x = np.concatenate([e["action"] for e in eps])
    np.testing.assert_allclose(m.stats["action"]["mean"], x.mean(0), rtol=1e-6)
    assert int(m.stats["action"]["count"][0]) == 28
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter.create(tmp_path / "d", FEATS, 10)


def test_stale_stats_are_recomputed_by_readers(tmp_path):
    rng = np.random.default_rng(3)
    w = DatasetWriter.create(tmp_path / "d", FEATS, 10)
    w.add_episode(_ep(rng, 5), EpisodeRecord("t"))
    w.add_episode(_ep(rng, 6), EpisodeRecord("t"))
    # not closed: as after a crash, stats.json lags behind; a reader merges the episodes' stats
    m = DatasetMeta.load(tmp_path / "d")
    assert int(m.stats["action"]["count"][0]) == 11


def test_stage_annotations_roundtrip_and_files(tmp_path):
    rng = np.random.default_rng(4)
    with DatasetWriter.create(tmp_path / "d", FEATS, 10, extra_meta={"stages": ["reach", "grasp"]}) as w:
        w.add_episode(_ep(rng, 10), EpisodeRecord("t", StageAnnotation(["reach", "grasp"], [0, 4], [3, 9], "expert")))
        w.add_episode(_ep(rng, 8), EpisodeRecord("t"))
    m = DatasetMeta.load(tmp_path / "d")
    assert m.stages(0).names == ["reach", "grasp"] and m.stages(0).end_frames == [3, 9] and m.stages(1) is None
    prior = json.loads((tmp_path / "d" / "meta" / "temporal_proportions_sparse.json").read_text())
    assert prior == {"reach": 0.4, "grasp": 0.6}
    # SARM's columns, as LeRobot reads them
    import pandas as pd

    df = pd.read_parquet(tmp_path / "d" / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert list(df.loc[0, "sparse_subtask_start_frames"]) == [0, 4]
    # a user's CSV file
    csv = tmp_path / "s.csv"
    csv.write_text("episode_index,name,start_frame,end_frame\n1,reach,0,2\n1,grasp,3,7\n")
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"episodes": {"0": [{"name": "reach", "start": 0, "end": 9}]}}))
    from robolearn.data.info import AnnotateConfig, annotate

    annotate(AnnotateConfig(dataset=str(tmp_path / "d"), file=str(csv)))
    annotate(AnnotateConfig(dataset=str(tmp_path / "d"), file=str(js)))
    m = DatasetMeta.load(tmp_path / "d")
    assert m.stages(1).names == ["reach", "grasp"] and m.stages(1).source == "user"
    assert m.stages(0).end_frames == [9]
    # bad annotations are refused before anything is written
    bad = tmp_path / "bad.json"
    for episodes, match in [({"1": [{"name": "reach", "start": 0, "end": 8}]}, "outside the episode"),
                            ({"0": [{"name": "reach", "start": 0, "end": 5}, {"name": "grasp", "start": 5,
                                                                               "end": 9}]}, "before the previous"),
                            ({"0": [{"name": "fly", "start": 0, "end": 5}]}, "not one of this dataset's stages"),
                            ({"5": [{"name": "reach", "start": 0, "end": 1}]}, "cannot annotate episode 5")]:
        bad.write_text(json.dumps({"episodes": episodes}))
        with pytest.raises(DatasetError, match=match):
            annotate(AnnotateConfig(dataset=str(tmp_path / "d"), file=str(bad)))
    bad.write_text("episode,start\n")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("episode,start\n1,2\n")
    with pytest.raises(DatasetError, match="CSV header"):
        load_annotation_file(bad_csv)


def test_stage_ids_roundtrip():
    ids = np.array([0, 0, 1, 1, 1, 2, 1, 1])
    ann = StageAnnotation.from_stage_ids(ids, ["a", "b", "c"])
    assert ann.names == ["a", "b", "c", "b"] and ann.start_frames == [0, 2, 5, 6] and ann.end_frames == [1, 4, 5, 7]
    np.testing.assert_array_equal(ann.stage_ids(8, ["a", "b", "c"]), ids)


def test_episode_metadata_spans_several_files(tmp_path, monkeypatch):
    import robolearn.data.writer as writer

    monkeypatch.setattr(writer, "META_ROWS", 3)
    rng = np.random.default_rng(5)
    with DatasetWriter.create(tmp_path / "d", FEATS, 10) as w:
        for _ in range(7):
            w.add_episode(_ep(rng, 4), EpisodeRecord("t"))
    files = sorted((tmp_path / "d" / "meta" / "episodes").rglob("*.parquet"))
    assert [f.name for f in files] == ["file-000.parquet", "file-001.parquet", "file-002.parquet"]
    with DatasetWriter.open(tmp_path / "d") as w:
        w.add_episode(_ep(rng, 4), EpisodeRecord("t"))
    m = DatasetMeta.load(tmp_path / "d")
    assert m.num_episodes == 8
    assert [r["meta/episodes/file_index"] for r in m.episode_rows] == [0, 0, 0, 1, 1, 1, 2, 2]
    DatasetReader(tmp_path / "d").episode(7)


def test_create_on_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        DatasetWriter.create(tmp_path / "f", FEATS, 10)
