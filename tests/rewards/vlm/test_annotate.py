"""Stage annotation by a VLM (`robolearn.rewards.vlm.annotate`) against a real loopback OpenAI-compatible
server whose answers are computed from each request: the frame numbers in the prompt and the expert's
true boundaries of the episode it names. Uses the session's small pick_place dataset (`pp_dataset`:
4 expert successes, 2 drops whose expert annotations regress), copied wherever a test writes into it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.dataset import DatasetMeta
from robolearn.data.format import DatasetError
from robolearn.data.stages import load_annotation_file
from robolearn.errors import ConfigError
from robolearn.rewards.vlm.annotate import (
    VLMAnnotateConfig,
    boundary_errors,
    check_answer,
    format_report,
    run,
    sample_frames,
)
from robolearn.rewards.vlm.client import VLMAnswerError, VLMConfig
from robolearn.rewards.vlm.server import FixtureServer, request_images, request_text

FRAME_LINE = re.compile(r"Image (\d+) is frame (\d+) \(t = (\d+\.\d\d) s\)")
EPISODE = re.compile(r"frames of episode (\d+)")
PROPOSE = "Split the task into its stages"


def first_starts(ann) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, s in zip(ann.names, ann.start_frames):
        out.setdefault(name, int(s))
    return out


def snapped_answer(truth: dict[str, int], stages: list[str], shown: list[int]) -> list[dict]:
    """Each stage the expert reached, starting at the shown frame nearest its true start (after the
    previous stage's); stage one at frame 0."""
    out, prev = [], -1
    for name in stages:
        if name not in truth:
            break
        start = 0 if not out else min((f for f in shown if f > prev), key=lambda f: abs(f - truth[name]))
        out.append({"name": name, "start_frame": start})
        prev = start
    return out


def expert_responder(truths: dict[int, dict[str, int]], stages: list[str]):
    def respond(req: dict) -> str:
        text = request_text(req)
        ep = int(EPISODE.search(text).group(1))
        shown = [int(f) for _, f, _ in FRAME_LINE.findall(text)]
        assert len(shown) == len(request_images(req))
        return json.dumps({"stages": snapped_answer(truths[ep], stages, shown)})
    return respond


@pytest.fixture(scope="module")
def expert(pp_dataset):
    """(stage names, {episode: first start of each stage}, fps, lengths) of the expert annotations."""
    meta = DatasetMeta.load(pp_dataset)
    truths = {ep: first_starts(meta.stages(ep)) for ep in range(meta.num_episodes)}
    return meta.stage_names, truths, meta.fps, [int(r["length"]) for r in meta.episode_rows]


@pytest.fixture
def dataset(pp_dataset, tmp_path) -> Path:
    """A private copy of the pick_place dataset (tests write annotations into it)."""
    return Path(shutil.copytree(pp_dataset, tmp_path / "pp"))


def vlm(server: FixtureServer, tmp_path: Path, **kw) -> VLMConfig:
    return VLMConfig(base_url=server.base_url, model=server.model, cache_dir=str(tmp_path / "cache"), backoff_s=0.01,
                     **kw)


def test_annotate_scores_against_expert_writes_backs_up_and_reruns_from_cache(dataset, expert, tmp_path,
                                                                               monkeypatch):
    stages, truths, fps, lengths = expert
    secret = "sk-test-do-not-write-7f3a9c"
    monkeypatch.setenv("ROBOLEARN_TEST_VLM_KEY", secret)
    out = tmp_path / "run"
    with FixtureServer(expert_responder(truths, stages), model="fixture-qwen", api_key=secret) as server:
        cfg = VLMAnnotateConfig(dataset=str(dataset), stages=",".join(stages), out=str(out), progress=False,
                                vlm=vlm(server, tmp_path, api_key_env="ROBOLEARN_TEST_VLM_KEY"))
        assert cfg.stages == stages  # the comma-separated form the CLI may pass
        report = run(cfg)
        requests = list(server.requests)

        # what was sent: 16 frames per episode, in order, labelled with frame number and time
        assert len(requests) == len(lengths)
        for req in requests:
            text = request_text(req)
            ep = int(EPISODE.search(text).group(1))
            labels = FRAME_LINE.findall(text)
            assert [int(f) for _, f, _ in labels] == sample_frames(lengths[ep], 16).tolist()
            assert [int(i) for i, _, _ in labels] == list(range(1, 17))
            assert labels[0] == ("1", "0", "0.00") and int(labels[-1][1]) == lengths[ep] - 1
            assert float(labels[5][2]) == pytest.approx(int(labels[5][1]) / fps, abs=0.005)
            assert len(request_images(req)) == 16

        # the boundary error, recomputed by hand from the snapped answers
        errs: dict[str, list[int]] = {}
        for ep, truth in truths.items():
            answer = snapped_answer(truth, stages, sample_frames(lengths[ep], 16).tolist())
            for item in answer[1:]:
                errs.setdefault(item["name"], []).append(abs(item["start_frame"] - truth[item["name"]]))
        every = [e for v in errs.values() for e in v]
        be = report["boundary_error"]
        assert be["episodes"] == len(lengths) and be["boundaries"] == len(every)
        assert be["mean_frames"] == pytest.approx(np.mean(every))
        assert be["mean_s"] == pytest.approx(np.mean(every) / fps)
        assert be["per_stage_frames"] == pytest.approx({k: np.mean(v) for k, v in errs.items()})
        assert 0 < be["mean_frames"] <= 2  # snapped to frames at most ~4 apart
        assert f"boundary error vs the expert: {np.mean(every):.2f} frames" in format_report(report)
        assert set(errs) == set(stages[1:])
        # the drops stop at lift: trailing stages left out
        meta = DatasetMeta.load(dataset)
        for ep in range(meta.num_episodes):
            ann = meta.stages(ep)
            assert ann.source == "vlm"
            want = snapped_answer(truths[ep], stages, sample_frames(lengths[ep], 16).tolist())
            assert ann.names == [w["name"] for w in want]
            assert ann.start_frames == [w["start_frame"] for w in want]
            assert ann.end_frames == [s - 1 for s in ann.start_frames[1:]] + [lengths[ep] - 1]
            assert len(ann.names) == (5 if meta.success(ep) else 3)

        # the backup holds the expert's annotations, annotations.json what was written
        backup = json.loads((out / "previous_annotations.json").read_text())
        assert set(backup["sources"].values()) == {"expert"}
        restored = load_annotation_file(out / "previous_annotations.json")
        written = load_annotation_file(out / "annotations.json")
        for ep in range(meta.num_episodes):
            assert (written[ep].names, written[ep].start_frames, written[ep].end_frames) == \
                (meta.stages(ep).names, meta.stages(ep).start_frames, meta.stages(ep).end_frames)
        assert {ep: first_starts(a) for ep, a in restored.items()} == truths
        assert {json.loads(line)["episode"] for line in (out / "vlm_log.jsonl").read_text().splitlines()} == \
            set(range(len(lengths)))
        assert json.loads((out / "report.json").read_text())["boundary_error"] == be

        # a rerun asks nothing (cache), still scores against the expert (from the backup), keeps the backup
        again = run(cfg)
        assert len(server.requests) == len(requests)
        assert again["cache_hits"] == len(lengths) and again["requests"] == 1  # GET /models only
        assert again["boundary_error"] == be
        assert json.loads((out / "previous_annotations.json").read_text()) == backup

    # the key is in no file anything wrote
    for root in (out, dataset, tmp_path / "cache"):
        for f in root.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f


def test_restoring_the_backup_with_the_annotate_verb(dataset, expert, tmp_path, pp_dataset):
    from robolearn.data.info import AnnotateConfig, annotate

    stages, truths, _, _ = expert
    with FixtureServer(expert_responder(truths, stages)) as server:
        run(VLMAnnotateConfig(dataset=str(dataset), stages=stages, episodes=[0, 4], out=str(tmp_path / "run"),
                              progress=False, vlm=vlm(server, tmp_path)))
    meta = DatasetMeta.load(dataset)
    assert [meta.stages(ep).source for ep in range(6)] == ["vlm", "expert", "expert", "expert", "vlm", "expert"]
    annotate(AnnotateConfig(dataset=str(dataset), file=str(tmp_path / "run" / "previous_annotations.json")))
    meta, original = DatasetMeta.load(dataset), DatasetMeta.load(pp_dataset)
    for ep in range(6):
        a, b = meta.stages(ep), original.stages(ep)
        assert (a.names, a.start_frames, a.end_frames) == (b.names, b.start_frames, b.end_frames)
    assert meta.stages(0).source == "user"  # as `robolearn annotate --file` marks what it writes

    # annotations that are not the expert's (and no backup of the expert's) are not scored against
    with FixtureServer(expert_responder(truths, stages)) as server:
        report = run(VLMAnnotateConfig(dataset=str(dataset), stages=stages, episodes=[0], write=False,
                                       out=str(tmp_path / "run2"), progress=False, vlm=vlm(server, tmp_path)))
        assert not server.requests  # cached
    assert report["boundary_error"] is None and report["per_episode"][0]["boundary_error_frames"] is None


def test_out_of_order_answer_is_reasked_with_the_problem_quoted(dataset, expert, tmp_path):
    stages, truths, _, _ = expert
    good = expert_responder(truths, stages)

    def respond(req: dict) -> str:
        if sum(m["role"] == "user" for m in req["messages"]) > 1:  # the re-ask
            return good(req)
        starts = [0, 30, 20, 40, 50]  # lift before grasp
        return json.dumps({"stages": [{"name": n, "start_frame": s} for n, s in zip(stages, starts)]})

    with FixtureServer(respond) as server:
        report = run(VLMAnnotateConfig(dataset=str(dataset), stages=stages, episodes=[0], write=False,
                                       out=str(tmp_path / "run"), progress=False, vlm=vlm(server, tmp_path)))
        assert len(server.requests) == 2
        reask = request_text(server.requests[1])
        assert "'lift' starts at frame 20, not after 'grasp' at frame 30" in reask
    assert report["reasks"] == 1
    want = snapped_answer(truths[0], stages, sample_frames(55, 16).tolist())
    assert [s["start"] for s in report["per_episode"][0]["stages"]] == [w["start_frame"] for w in want]
    assert DatasetMeta.load(dataset).stages(0).source == "expert"  # write=false
    assert not (tmp_path / "run" / "previous_annotations.json").exists()


def test_garbage_answers_fail_with_one_clear_error_naming_the_model(dataset, tmp_path, expert):
    with FixtureServer("The robot first reaches for the cube, then grasps it.", model="tiny-vlm") as server:
        cfg = VLMAnnotateConfig(dataset=str(dataset), stages=expert[0], episodes=[2], out=str(tmp_path / "run"),
                                progress=False, vlm=vlm(server, tmp_path))
        with pytest.raises(VLMAnswerError, match=r"episode 2: tiny-vlm at http://127\.0\.0\.1:\d+/v1 gave an "
                                                 r"unusable answer twice \(the answer is not JSON"):
            run(cfg)
        assert len(server.requests) == 2
    assert DatasetMeta.load(dataset).stages(2).source == "expert"


def test_stages_proposed_by_the_vlm(dataset, expert, tmp_path):
    stages, truths, _, _ = expert
    good = expert_responder(truths, stages)
    proposals = iter([["reach", "grasp", "reach"], stages])  # duplicates first: re-asked

    def respond(req: dict) -> str:
        if PROPOSE in request_text(req):
            return json.dumps({"stages": next(proposals)})
        return good(req)

    with FixtureServer(respond) as server:
        report = run(VLMAnnotateConfig(dataset=str(dataset), episodes=[0, 5], out=str(tmp_path / "run"),
                                       progress=False, vlm=vlm(server, tmp_path)))
        assert PROPOSE in request_text(server.requests[0]) and len(request_images(server.requests[0])) == 6
        assert "reach appears more than once" in request_text(server.requests[1])
        assert len(server.requests) == 4
    assert report["stages"] == stages and report["stages_from"] == "vlm"
    assert report["reasks"] == 1
    assert DatasetMeta.load(dataset).stages(5).source == "vlm"


def test_proposed_stages_the_dataset_does_not_declare_are_refused_before_annotating(dataset, tmp_path):
    with FixtureServer('{"stages": ["approach_cube", "pick_cube", "drop_in_bin"]}') as server:
        with pytest.raises(ConfigError, match=r"approach_cube, pick_cube, drop_in_bin.*pass stages=\[reach,grasp,"
                                              r"lift,transport,place\] or write=false"):
            run(VLMAnnotateConfig(dataset=str(dataset), out=str(tmp_path / "run"), progress=False,
                                  vlm=vlm(server, tmp_path)))
        assert len(server.requests) == 1  # the proposal only


def test_user_errors_are_named_before_any_request(pp_dataset, tmp_path):
    from robolearn.config import load_config
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    base = dict(out=str(tmp_path / "run"), progress=False,
                vlm=VLMConfig(base_url="http://127.0.0.1:9/v1", cache_dir=None))  # nothing listens there
    with pytest.raises(ConfigError, match=r"has no camera 'wrsit'; it has front"):
        run(VLMAnnotateConfig(dataset=str(pp_dataset), camera="wrsit", stages=["reach", "grasp"], **base))
    with pytest.raises(DatasetError, match=r"episodes \[6, 99\] do not exist \(the dataset has episodes 0\.\.5\)"):
        run(VLMAnnotateConfig(dataset=str(pp_dataset), episodes=[1, 6, 99], stages=["reach", "grasp"], **base))
    with pytest.raises(ConfigError, match=r"names reach more than once"):
        run(VLMAnnotateConfig(dataset=str(pp_dataset), stages="reach, grasp, reach", **base))
    with pytest.raises(ConfigError, match=r"include pick, which .* does not declare"):
        run(VLMAnnotateConfig(dataset=str(pp_dataset), stages="reach,pick", **base))
    state_only = tmp_path / "state_only"
    collect(CollectConfig(task="lift", episodes=1, out=str(state_only), cameras=[], num_envs=1, fsync=False,
                          progress=False))
    with pytest.raises(DatasetError, match=r"has no camera \(no video features\); the VLM needs images"):
        run(VLMAnnotateConfig(dataset=str(state_only), stages=["reach", "grasp"], **base))

    # the config system takes the stages as a YAML list or as one comma-separated string
    for value in ("[reach, grasp, lift]", "reach,grasp,lift", '"reach, grasp, lift"'):
        cfg = load_config(VLMAnnotateConfig, overrides=[f"dataset={pp_dataset}", f"stages={value}"])
        assert cfg.stages == ["reach", "grasp", "lift"]
    with pytest.raises(ConfigError, match="more than once"):
        load_config(VLMAnnotateConfig, overrides=["dataset=d", "stages=[reach,reach]"])


def test_answer_rules():
    stages = ["reach", "grasp", "lift"]

    def item(*pairs):
        return {"stages": [{"name": n, "start_frame": s} for n, s in pairs]}

    check_answer(item(("reach", 0), ("grasp", 10), ("lift", 20)), stages, 30)
    check_answer(item(("reach", 0), ("grasp", 10)), stages, 30)  # never lifted
    for bad, msg in [(item(("reach", 0), ("lift", 10)), "must be reach, grasp, lift in this order"),
                     (item(("reach", 3), ("grasp", 10)), "must start at frame 0, not 3"),
                     (item(("reach", 0), ("grasp", 10), ("lift", 10)), "start frames must increase strictly"),
                     (item(("reach", 0), ("grasp", 30)), "after the episode's last frame 29")]:
        with pytest.raises(ValueError, match=msg):
            check_answer(bad, stages, 30)
    assert sample_frames(31, 16).tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    assert sample_frames(5, 16).tolist() == [0, 1, 2, 3, 4]


def test_boundary_errors_match_the_first_start_of_a_revisited_stage():
    from robolearn.data.stages import StageAnnotation

    ref = StageAnnotation(["reach", "grasp", "lift", "grasp", "reach"], [0, 20, 25, 30, 31], [19, 24, 29, 30, 39],
                          "expert")
    pred = StageAnnotation(["reach", "grasp", "lift"], [0, 22, 24], [21, 23, 39], "vlm")
    assert boundary_errors(pred, ref) == {"grasp": 2, "lift": 1}
