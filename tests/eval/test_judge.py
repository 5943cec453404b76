"""`robolearn judge` on the reward tests' small pick_place dataset (4 successes, 2 drops) and the progress model
trained on it for 20 steps: the files and their contents, per-policy summaries, determinism, bad input.

The 20-step model is too weak for agreement figures to mean anything, so the run() tests check the
mechanics; the metric functions are checked on hand-made rows and on an oracle whose progress and stages
are the dataset's own labels."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from reward_fixtures import one_torch_thread

from robolearn.data.format import DatasetError
from robolearn.data.stages import StageAnnotation
from robolearn.errors import ConfigError, RobolearnError
from robolearn.eval.judge import (
    CSV_COLUMNS,
    JudgeConfig,
    JudgeError,
    diagnosis_frame,
    format_result,
    judge_episode,
    model_fps,
    policy_rank_agreement,
    process_figures,
    run,
    stall_stage_agreement,
    true_failure_stage,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The reward model's tests' setting (tests/rewards/conftest.py): tiny models, one torch thread."""
    with one_torch_thread():
        yield


VOLATILE = ("wall_s", "out", "files", "config")


def _with_policies(src: Path, out: Path, policy_of) -> Path:
    """A copy of dataset `src` whose episodes' info names a policy (`policy_of(ep, success)`)."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.writer import DatasetWriter, EpisodeRecord

    r = DatasetReader(src)
    extra = {k: v for k, v in r.meta.robolearn.items() if k not in ("format_version", "video")}
    with DatasetWriter.create(out, r.features, r.fps, extra_meta=extra, fsync=False) as w:
        for ep in range(r.num_episodes):
            info = r.meta.episode_info(ep) | {"policy": policy_of(ep, r.meta.success(ep))}
            w.add_episode(r.episode(ep), EpisodeRecord(r.meta.task(ep), r.meta.stages(ep), r.meta.success(ep), info))
    return out


@pytest.fixture(scope="module")
def policy_dataset(pp_dataset, tmp_path_factory) -> Path:
    """pp_dataset with three policies: steady (3 successes), shaky (1 success, 1 drop), dropper (1 drop)."""
    from robolearn.data.dataset import DatasetMeta

    meta = DatasetMeta.load(pp_dataset)
    ok = [e for e in range(meta.num_episodes) if meta.success(e)]
    bad = [e for e in range(meta.num_episodes) if meta.success(e) is False]
    assert len(ok) == 4 and len(bad) == 2
    names = {**dict.fromkeys(ok[:3], "steady"), ok[3]: "shaky", bad[0]: "shaky", bad[1]: "dropper"}
    return _with_policies(pp_dataset, tmp_path_factory.mktemp("judge_data") / "pp_policies",
                          lambda ep, success: names[ep])


def _cfg(dataset, reward, out, **kw) -> JudgeConfig:
    return JudgeConfig(dataset=str(dataset), reward=str(reward), out=str(out), device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def judged(policy_dataset, reward_run, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("judge_out") / "full"
    return run(_cfg(policy_dataset, reward_run, out, video_episodes=1))


# ---- run(): files and contents ----------------------------------------------------------------------------------


def test_judge_json_rows_and_summary(judged):
    out = Path(judged["out"])
    saved = json.loads((out / "judge.json").read_text())
    assert saved == json.loads(json.dumps(judged))
    rows = judged["rows"]
    assert [r["episode"] for r in rows] == list(range(6)) and judged["skipped"] == []
    names = judged["stage_names"]
    assert names == ["reach", "grasp", "lift", "transport", "place"]
    for r in rows:
        assert r["success_source"] == "label" and r["success"] == r["success_label"]
        assert 0.0 <= r["process_score"] <= 1.0
        assert 0.0 <= r["final_progress"] <= r["max_progress"] <= 1.0
        assert 0.0 <= r["consistency"] <= 1.0 and 0.0 <= r["stalled_fraction"] <= 1.0
        assert r["regressions"] >= 0 and r["regression_depth"] >= 0.0 and r["stalled_s"] >= 0.0
        assert r["duration_s"] == pytest.approx(r["length"] / judged["fps"])
        assert (out / r["curve"]).is_file()
        if r["success"]:
            assert r["diagnosis_frame"] is None and r["diagnosis_stage"] is None and r["true_failure_stage"] is None
        else:
            assert 0 <= r["diagnosis_frame"] < r["length"]
            assert r["diagnosis_time_s"] == pytest.approx(r["diagnosis_frame"] / judged["fps"])
            assert r["diagnosis_stage"] in names and r["diagnosis_kind"] in ("stalled", "regressed")
            assert r["true_failure_stage"] in names and r["recorded_failure"] == "drop"
    assert sum(r["video"] is not None for r in rows) == 1  # video_episodes=1: the first failure is filmed

    pol = judged["summary"]["policies"]
    assert list(pol) == ["steady", "shaky", "dropper"] or set(pol) == {"steady", "shaky", "dropper"}
    assert pol["steady"]["true_success_rate"] == 1.0 and pol["shaky"]["true_success_rate"] == 0.5
    assert pol["dropper"]["true_success_rate"] == 0.0 and pol["dropper"]["episodes"] == 1
    assert judged["summary"]["overall"]["episodes"] == 6 and judged["summary"]["overall"]["successes"] == 4
    for g in pol.values():
        assert 0.0 <= g["mean_process_score"] <= 1.0
    checks = judged["checks"]
    assert checks["stall_stage_agreement"]["failed_episodes"] == 2
    assert checks["policy_rank_agreement"]["policies"] == list(pol)
    rho = checks["policy_rank_agreement"]["spearman"]
    assert rho is None or -1.0 <= rho <= 1.0
    assert checks["outcome_agreement"]["labelled_episodes"] == 6
    text = format_result(judged)
    assert "steady" in text and "stall-stage agreement" in text and "report.html" in text


def test_csv_and_report(judged):
    out = Path(judged["out"])
    with open(out / "episodes.csv") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == CSV_COLUMNS and len(lines) == 7
    by_ep = {int(line[0]): dict(zip(CSV_COLUMNS, line)) for line in lines[1:]}
    for r in judged["rows"]:
        assert float(by_ep[r["episode"]]["process_score"]) == pytest.approx(r["process_score"])
        assert by_ep[r["episode"]]["policy"] == r["policy"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6 + 2  # a curve per episode, a thumbnail per failure
    assert page.count("data:video/mp4;base64,") == 1
    assert "dataset video" in page  # the failure not filmed links into the dataset's video
    for part in ("Policies", "steady", "shaky", "dropper", "overall", "stall-stage agreement", "Failed episodes (2)"):
        assert part in page
    assert "src=\"curves/" not in page and "src='videos/" not in page  # nothing points at files next to it


def test_rerun_is_identical_and_single_group(judged, policy_dataset, pp_dataset, reward_run, tmp_path):
    again = run(_cfg(policy_dataset, reward_run, tmp_path / "again", report=False))
    assert not (tmp_path / "again" / "report.html").exists() and (tmp_path / "again" / "episodes.csv").is_file()
    strip = ("curve", "video")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k not in strip} for r in judged["rows"]]
    assert {k: v for k, v in again.items() if k not in VOLATILE + ("rows",)} == \
        {k: v for k, v in judged.items() if k not in VOLATILE + ("rows",)}

    one = run(_cfg(pp_dataset, reward_run, tmp_path / "one", report=False, episodes=[4, 1, 4]))
    assert [r["episode"] for r in one["rows"]] == [4, 1]
    assert list(one["summary"]["policies"]) == ["all"]
    assert one["checks"]["policy_rank_agreement"]["spearman"] is None  # one policy: nothing to rank


# ---- the metric functions -----------------------------------------------------------------------------------------


def test_process_figures_on_hand_made_curves():
    cfg = JudgeConfig(dataset="d", reward="r", smooth_s=0.0, stall_s=1.0, eps=0.02, regression_delta=0.1)
    ramp = np.linspace(0.0, 1.0, 41)
    f = process_figures(ramp, 20.0, cfg)
    assert f["regressions"] == 0 and f["consistency"] == 1.0 and f["stalled_s"] == 0.0
    assert f["voc"] == pytest.approx(1.0) and f["max_progress"] == pytest.approx(1.0)
    assert f["diagnosis_frame"] == 40 and f["progress_per_s"] == pytest.approx(0.5)
    assert f["process_score"] == pytest.approx(1.0)

    # up to 0.5 in 1 s, a fall to 0.1, 2 s standing still there
    drop = np.concatenate([np.linspace(0, 0.5, 21), np.linspace(0.5, 0.1, 5)[1:], np.full(40, 0.1)])
    f = process_figures(drop, 20.0, cfg)
    assert f["diagnosis_frame"] == 20 and f["time_to_max_s"] == pytest.approx(1.0)
    assert f["regressions"] == 1 and f["regression_depth"] == pytest.approx(0.4)
    assert f["stalled_s"] == pytest.approx(2.0, abs=0.1)
    assert f["consistency"] == pytest.approx(1 - 43 / len(drop), abs=0.02)
    assert f["process_score"] < 0.3 * 0.75 + 1e-9

    # noise around the regression threshold is one regression, not many (hysteresis)
    jitter = np.concatenate([np.linspace(0, 0.6, 20), 0.6 - 0.1 + 0.01 * (-1) ** np.arange(30)])
    assert process_figures(jitter, 20.0, cfg)["regressions"] == 1
    # a bump smaller than eps after the best does not move the diagnosis frame
    assert diagnosis_frame(np.array([0.0, 0.5, 0.3, 0.51, 0.2]), 0.02) == 1
    assert diagnosis_frame(np.array([0.0, 0.5, 0.3, 0.6, 0.2]), 0.02) == 3


def test_stall_stage_agreement_on_hand_made_rows():
    names = ["reach", "grasp", "lift"]
    anns = {0: StageAnnotation(["reach", "grasp", "lift", "grasp"], [0, 5, 9, 12], [4, 8, 11, 20]),  # dropped
            1: StageAnnotation(["reach", "grasp"], [0, 5], [4, 30]),  # stalled in grasp
            2: StageAnnotation(["reach", "grasp", "lift"], [0, 3, 6], [2, 5, 9]),  # a success
            3: None}  # a failure without annotation: not counted
    labels = {0: False, 1: False, 2: True, 3: False}
    meta = SimpleNamespace(stage_names=names, stages=anns.get, success=labels.get)
    assert true_failure_stage(meta, 0) == "lift" and true_failure_stage(meta, 1) == "grasp"
    rows = [{"episode": 0, "diagnosis_stage": "lift"}, {"episode": 1, "diagnosis_stage": "reach"},
            {"episode": 2, "diagnosis_stage": None}, {"episode": 3, "diagnosis_stage": "grasp"}]
    r = stall_stage_agreement(rows, meta)
    assert r["agreement"] == 0.5 and r["failed_episodes"] == 2 and r["matches"] == 1
    assert [d["episode"] for d in r["episodes"]] == [0, 1]
    assert stall_stage_agreement(rows[2:3], meta)["agreement"] is None


def test_policy_rank_agreement_on_hand_made_summaries():
    def s(*pairs):
        return {"policies": {f"p{i}": {"mean_process_score": a, "true_success_rate": b} for i, (a, b) in
                             enumerate(pairs)}}

    assert policy_rank_agreement(s((0.9, 0.95), (0.5, 0.6), (0.2, 0.1)))["spearman"] == pytest.approx(1.0)
    assert policy_rank_agreement(s((0.2, 0.95), (0.5, 0.6), (0.9, 0.1)))["spearman"] == pytest.approx(-1.0)
    r = policy_rank_agreement(s((0.9, 0.95), (0.5, None), (0.2, 0.1)))
    assert r["policies"] == ["p0", "p2"] and r["spearman"] == pytest.approx(1.0)
    assert policy_rank_agreement(s((0.9, 0.95)))["spearman"] is None
    # the policies mapping alone works too
    assert policy_rank_agreement(s((0.9, 0.9), (0.1, 0.2))["policies"])["spearman"] == pytest.approx(1.0)


def test_oracle_progress_diagnoses_the_true_failure_stage(pp_dataset):
    """With the dataset's own labels as the 'model' (progress and stage of every frame), the diagnosis lands
    in the true failure stage of every failed episode: the definitions agree with each other."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.rewards.labels import dataset_episode_labels
    from robolearn.rewards.train import stage_stats

    reader = DatasetReader(pp_dataset)
    priors, mean_frames = stage_stats(reader, np.arange(reader.num_episodes))
    cfg = JudgeConfig(dataset="d", reward="r")
    rows = []
    for ep in range(reader.num_episodes):
        lab = dataset_episode_labels(reader, ep, priors, mean_frames)
        row, _ = judge_episode(ep, {"progress": lab.progress, "stage": lab.stage}, reader,
                               reader.meta.stage_names, cfg)
        rows.append(row)
    r = stall_stage_agreement(rows, reader)
    assert r["failed_episodes"] == 2 and r["agreement"] == 1.0, r
    ok = [x["process_score"] for x in rows if x["success"]]
    bad = [x["process_score"] for x in rows if not x["success"]]
    assert min(ok) > max(bad)


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_bad_config_and_unknown_episodes(pp_dataset, reward_run, tmp_path):
    with pytest.raises(ConfigError, match="name the dataset"):
        run(JudgeConfig(reward=str(reward_run)))
    with pytest.raises(ConfigError, match="success_threshold"):
        run(_cfg(pp_dataset, reward_run, tmp_path, success_threshold=0.0))
    with pytest.raises(DatasetError, match=r"episodes \[6, 99\] do not exist.*0\.\.5"):
        run(_cfg(pp_dataset, reward_run, tmp_path, episodes=[0, 6, 99]))
    with pytest.raises(JudgeError, match="camera 'wrist'.*observation.images.front"):
        run(_cfg(pp_dataset, reward_run, tmp_path, camera="wrist"))


def test_dataset_without_the_models_camera(reward_run, tmp_path):
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    ds = collect(CollectConfig(task="pick_place", episodes=1, out=str(tmp_path / "nocam"), cameras=[], num_envs=1,
                               fsync=False, progress=False, max_episode_steps=5))
    with pytest.raises(JudgeError, match=r"lacks observation.images.front.*train reward") as e:
        run(_cfg(ds, reward_run, tmp_path / "out"))
    assert isinstance(e.value, RobolearnError)


def test_fps_mismatch_and_unknown_fps(pp_dataset, reward_run, tmp_path):
    from robolearn.rewards import load_reward_model

    model = load_reward_model(reward_run / "checkpoints" / "last")
    assert model_fps(model) == 20.0  # the env it was recorded in ran at 20 Hz
    model.metadata["fps"] = 10
    ckpt = model.save(tmp_path / "ckpt10")
    with pytest.raises(JudgeError, match=r"recorded at 20 fps, but the reward model was trained at 10 fps"):
        run(_cfg(pp_dataset, ckpt, tmp_path / "out", episodes=[0]))
    assert model_fps(SimpleNamespace(metadata={"dataset": str(tmp_path / "gone")})) is None  # unknown: no check


def test_zero_length_episode_is_skipped(pp_dataset, reward_run, tmp_path):
    """A converted dataset may hold an episode without frames (the recorder refuses to write one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = tmp_path / "zero"
    shutil.copytree(pp_dataset, ds)
    path = ds / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    last = table.slice(table.num_rows - 1).to_pylist()[0]
    end = last["dataset_to_index"]
    last.update({"episode_index": table.num_rows, "length": 0, "dataset_from_index": end, "dataset_to_index": end})
    for k in [c for c in last if c.startswith("videos/") and c.endswith("/from_timestamp")]:
        last[k.replace("from_", "to_")] = last[k]
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([last], schema=table.schema)]), path)
    info = json.loads((ds / "meta" / "info.json").read_text())
    info["total_episodes"] += 1
    (ds / "meta" / "info.json").write_text(json.dumps(info))
    zero = info["total_episodes"] - 1

    with pytest.warns(UserWarning, match=f"episode {zero} has no frames"):
        r = run(_cfg(ds, reward_run, tmp_path / "out", episodes=[0, zero], report=False))
    assert [x["episode"] for x in r["rows"]] == [0]
    assert r["skipped"] == [{"episode": zero, "reason": "zero-length episode (no frames)"}]
    with pytest.raises(DatasetError, match="zero length"), pytest.warns(UserWarning):
        run(_cfg(ds, reward_run, tmp_path / "out2", episodes=[zero]))
