"""The rehearsal oracle (`robolearn.rewards.vlm.oracle`): every VLM path run end to end against the ground
truth of the session's small pick_place dataset (`pp_dataset`: 4 expert successes, 2 drops whose expert
annotations regress), over a real loopback server and the real client; the request classifier on the
modules' own prompts; noise; and one clear refusal per request it cannot answer."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from robolearn.data.dataset import DatasetMeta, DatasetReader
from robolearn.data.format import DatasetError
from robolearn.data.stages import StageAnnotation
from robolearn.errors import ConfigError
from robolearn.rewards.vlm import annotate, gvl, preference
from robolearn.rewards.vlm.annotate import sample_frames
from robolearn.rewards.vlm.client import VLMClient, VLMConfig, VLMError
from robolearn.rewards.vlm.oracle import (
    OracleConfig,
    OracleResponder,
    classify_prompt,
    classify_request,
    frame_progress,
)
from robolearn.rewards.vlm.server import FixtureServer

CAM = "observation.images.front"
PROGRAM = '''
def compute_reward(obs, action):
    d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
    return {"reach": 1.0 - np.tanh(10.0 * d)}
'''
SMALL = {"channels": [8, 16], "image_dim": 32, "hidden": [64], "shift": 1, "image_pool": 1}


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("oracle") / "reward.py"
    path.write_text(PROGRAM)
    return path


@pytest.fixture(scope="module")
def oracle(pp_dataset, program) -> OracleResponder:
    return OracleResponder(pp_dataset, program=program)


@pytest.fixture(scope="module")
def server(oracle):
    with FixtureServer(oracle, model="oracle") as s:
        yield s


@pytest.fixture(scope="module")
def meta(pp_dataset) -> DatasetMeta:
    return DatasetMeta.load(pp_dataset)


def vlm(server: FixtureServer, **kw) -> VLMConfig:
    return VLMConfig(base_url=server.base_url, model=server.model, cache_dir=None, backoff_s=0.01, max_retries=0,
                     **kw)


def kinds_since(server: FixtureServer, n: int) -> list[str | None]:
    return [classify_request(r) for r in server.requests[n:]]


def truth_starts(ann: StageAnnotation) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, s in zip(ann.names, ann.start_frames):
        out.setdefault(name, int(s))
    return out


# ---- ground truth ------------------------------------------------------------------------------------
def test_progress_rises_through_the_stages_and_reaches_one_on_success(oracle, meta):
    ann = StageAnnotation(["reach", "grasp", "place"], [0, 4, 6], [3, 5, 9], "expert")
    stages = ["reach", "grasp", "place"]
    np.testing.assert_allclose(frame_progress(ann, 10, stages, True) * 12,
                               [0, 1, 2, 3, 4, 6, 8, 8 + 4 / 3, 8 + 8 / 3, 12])
    np.testing.assert_allclose(frame_progress(ann, 10, stages, False) * 12, [0, 1, 2, 3, 4, 6, 8, 9, 10, 11])
    for ep, p in oracle.progress.items():
        assert p[0] == 0 and len(p) == meta.episode_rows[ep]["length"] and ((0 <= p) & (p <= 1)).all()
        if meta.success(ep):
            assert p[-1] == 1.0 and (np.diff(p) > 0).all()
        else:  # the drops regress: progress falls back, and never gets past lift
            assert (np.diff(p) < 0).any() and p.max() < 3 / 5


# ---- the four paths end to end -------------------------------------------------------------------------
def test_annotate_with_a_perfect_labeller_leaves_only_the_snapping_error(pp_dataset, server, meta, tmp_path):
    n = len(server.requests)
    report = annotate.run(annotate.VLMAnnotateConfig(dataset=str(pp_dataset), write=False, out=str(tmp_path / "run"),
                                                     progress=False, vlm=vlm(server)))
    assert report["stages"] == meta.stage_names and report["stages_from"] == "vlm"  # proposed by the oracle
    assert kinds_since(server, n) == ["propose_stages"] + ["annotate"] * meta.num_episodes
    assert report["reasks"] == 0

    # each stage's true first start, snapped to the nearest of the 16 frames shown
    errors, half_gaps = [], []
    for r in report["per_episode"]:
        ep, shown = r["episode"], sample_frames(r["length"], 16)
        truth = truth_starts(meta.stages(ep))
        assert [s["name"] for s in r["stages"]] == [s for s in meta.stage_names if s in truth]  # unreached: omitted
        for s in r["stages"][1:]:
            assert s["start"] in shown
            assert abs(s["start"] - truth[s["name"]]) == min(abs(shown - truth[s["name"]]))
            errors.append(abs(s["start"] - truth[s["name"]]))
            half_gaps.append(np.diff(shown).max() / 2)
            assert errors[-1] <= half_gaps[-1]
    be = report["boundary_error"]
    assert be["boundaries"] == len(errors) == 4 * 4 + 2 * 2
    assert be["mean_frames"] == pytest.approx(np.mean(errors))
    mean_interval = np.mean([(r["length"] - 1) / 15 for r in report["per_episode"]])
    assert 0 < be["mean_frames"] <= mean_interval / 2
    print(f"oracle annotate: boundary error {be['mean_frames']:.3f} frames (mean sampling interval "
          f"{mean_interval:.2f} frames)")


def test_gvl_with_a_perfect_labeller_orders_the_successes(pp_dataset, server, oracle, meta, tmp_path):
    n = len(server.requests)
    report = gvl.run(gvl.GVLConfig(dataset=str(pp_dataset), out=str(tmp_path / "run"), plot_episodes=0,
                                   progress=False, vlm=vlm(server)))
    assert kinds_since(server, n) == ["gvl"] * meta.num_episodes
    for r in report["per_episode"]:
        want = np.array([100 * oracle.true_progress(r["episode"], f) for f in r["frames"]])
        # frames whose pixels recur in the episode get the mean of their places: within a point or two
        np.testing.assert_allclose(r["progress"], want, atol=2.0)
    assert report["mean_voc_success"] > 0.9
    assert report["mean_voc_failure"] < report["mean_voc_success"] - 0.3  # the drops' progress falls back
    print(f"oracle gvl: VOC success {report['mean_voc_success']:.3f}, failure {report['mean_voc_failure']:.3f}")


def side_truth(oracle: OracleResponder, ep: int, frames: list[int]) -> float:
    return float(np.mean([oracle.true_progress(ep, f) for f in frames]))


def check_labels(oracle: OracleResponder, out: Path, n: int) -> None:
    rows = list(preference.read_labels(out / preference.LABELS_FILE).values())
    assert len(rows) == n
    for r in rows:
        a, b = side_truth(oracle, r["episode_a"], r["frames_a"]), side_truth(oracle, r["episode_b"], r["frames_b"])
        if abs(a - b) > 0.04:  # clear of the tie (0.02), whatever recurring frames do
            assert r["preferred"] == int(b > a), r
        assert "not a model" in r["analysis"]


def test_preferences_with_a_perfect_labeller(pp_dataset, server, oracle, tmp_path):
    train = preference.PreferenceTrainConfig(steps=4, batch_size=8, warmup_steps=1, val_fraction=0.2, log_every=2,
                                             save_every=4, device="cpu")
    n = len(server.requests)
    cfg = preference.PreferenceConfig(dataset=str(pp_dataset), out=str(tmp_path / "single"), pairs=20,
                                      progress=False, model_options=dict(SMALL), train=train, vlm=vlm(server))
    result = preference.run(cfg)
    assert result["labels"]["labelled"] == 20 and result["labels"]["failed"] == 0 and result["steps"] == 4
    assert set(kinds_since(server, n)) == {"preference_single"}
    check_labels(oracle, tmp_path / "single", 20)

    # RL-VLM-F's two stages: the label is read back from the oracle's analysis
    n = len(server.requests)
    two = preference.PreferenceConfig(dataset=str(pp_dataset), out=str(tmp_path / "two"), pairs=6, query="two_stage",
                                      progress=False, vlm=vlm(server))
    assert preference.label_pairs(two)["labelled"] == 6
    assert sorted(kinds_since(server, n)) == ["preference_analysis"] * 6 + ["preference_label"] * 6
    check_labels(oracle, tmp_path / "two", 6)

    # clips: each side a filmstrip, cut back into frames
    clips = preference.PreferenceConfig(dataset=str(pp_dataset), out=str(tmp_path / "clips"), pairs=6,
                                        pair_kind="clips", clip_len=3, clip_stride=2, progress=False, vlm=vlm(server))
    assert preference.label_pairs(clips)["labelled"] == 6
    check_labels(oracle, tmp_path / "clips", 6)


def test_reward_code_hands_out_the_program(server, program):
    from robolearn.rewards.vlm.codegen import SYSTEM, designer_prompt, extract_code

    prompt = designer_prompt("Task `lift`: lift the cube.", 'obs["cube_to_tcp"] (N, 3) m', "", 0, 2)
    answer = VLMClient(vlm(server)).ask(prompt, system=SYSTEM)
    assert classify_request(server.requests[-1]) == "reward_code"
    assert extract_code(answer) == PROGRAM.strip() + "\n" and answer.startswith("The rehearsal oracle hands out")
    with pytest.raises(ConfigError, match="does not exist"):
        OracleResponder("unused", program=program.parent / "missing.py")
    bad = program.parent / "bad.py"
    bad.write_text("def reward(obs, action):\n    return {}\n")
    with pytest.raises(ConfigError, match="defines no compute_reward"):
        OracleResponder("unused", program=bad)


# ---- the classifier ------------------------------------------------------------------------------------
def test_classifier_on_the_modules_prompts(pp_dataset, server):
    from robolearn.rewards.vlm.codegen import designer_prompt
    from robolearn.rewards.vlm.gvl import gvl_prompt
    from robolearn.rewards.vlm.preference import (
        ANALYSIS_PROMPT,
        ANALYSIS_QUESTIONS,
        CLIP_NOTE,
        LABEL_PROMPT,
        SINGLE_PROMPT,
    )

    questions = ANALYSIS_QUESTIONS.format(first="Image 1", second="Image 2", task="put a cube into a bin")
    note = CLIP_NOTE.format(n=3)
    prompts = {
        "annotate": annotate.episode_prompt("put a cube into a bin", ["reach", "grasp", "lift"], 4,
                                            sample_frames(80, 16), 80, 20.0, False),
        "gvl": gvl_prompt("put a cube into a bin", 16),
        "preference_single": SINGLE_PROMPT.format(clip_note=note, questions=questions),
        "preference_analysis": ANALYSIS_PROMPT.format(clip_note="", questions=questions),
        "preference_label": LABEL_PROMPT.format(questions=questions, analysis="Image 2 shows the cube in the bin."),
        "reward_code": designer_prompt("Task `pick_place`: put a cube into a bin.\nStages, in order: reach.",
                                       'obs["q"] (N, 7) rad\nobs["cube_pos"] (N, 3) m', "Candidate 0 fell.", 3, 4),
    }
    for kind, prompt in prompts.items():
        assert classify_prompt(prompt) == kind, kind
        assert classify_prompt(prompt + "\n\nAnswer with one JSON value only, valid against this JSON schema:\n{}") \
            == kind  # as the client sends a schema request
    # the stage proposal is built inside annotate.propose_stages: ask it for real
    reader = DatasetReader(pp_dataset)
    stages, entry = annotate.propose_stages(VLMClient(vlm(server)), reader, CAM, 2)
    reader.decoder.close()
    assert classify_prompt(entry["prompt"]) == classify_request(server.requests[-1]) == "propose_stages"
    assert stages == ["reach", "grasp", "lift", "transport", "place"]
    assert classify_prompt("What is in this image?") is None
    assert classify_request({"messages": [{"role": "system", "content": "You are helpful."},
                                          {"role": "user", "content": [{"type": "text", "text": prompts["gvl"]}]}]}) \
        == "gvl"


# ---- noise ---------------------------------------------------------------------------------------------
def test_noise_changes_the_answers_but_keeps_them_valid(pp_dataset, server, oracle, tmp_path):
    noisy = OracleResponder(pp_dataset, noise=0.05, seed=1)
    with FixtureServer(noisy, model="oracle") as s:
        g = gvl.run(gvl.GVLConfig(dataset=str(pp_dataset), episodes=[0, 4], out=str(tmp_path / "g"), plot_episodes=0,
                                  progress=False, vlm=vlm(s)))
        a = annotate.run(annotate.VLMAnnotateConfig(dataset=str(pp_dataset), stages=oracle.stage_names, write=False,
                                                    out=str(tmp_path / "a"), progress=False, vlm=vlm(s)))
        assert g["reasks"] == a["reasks"] == 0
        # a request always gets the same answer (noise seeded by its content); another seed, another answer
        body = s.requests[0]
        assert noisy(body).content == noisy(body).content
        assert OracleResponder(pp_dataset, noise=0.05, seed=2)(body).content != noisy(body).content
        # the oracle without a program refuses reward code
        with pytest.raises(VLMError, match=r"answered 422: oracle \(reward_code\): the rehearsal oracle cannot write "
                                           r"reward code; start it with --program FILE"):
            from robolearn.rewards.vlm.codegen import designer_prompt

            VLMClient(vlm(s)).ask(designer_prompt("Task `lift`.", "obs", "", 0, 1))
    for r in g["per_episode"]:
        clean = [100 * oracle.true_progress(r["episode"], f) for f in r["frames"]]
        assert r["progress"] != pytest.approx(clean, abs=0.5)
        assert all(0 <= p <= 100 for p in r["progress"])
    clean = annotate.run(annotate.VLMAnnotateConfig(dataset=str(pp_dataset), stages=oracle.stage_names, write=False,
                                                    out=str(tmp_path / "c"), progress=False, vlm=vlm(server)))
    assert [r["stages"] for r in a["per_episode"]] != [r["stages"] for r in clean["per_episode"]]
    assert a["boundary_error"]["mean_frames"] > clean["boundary_error"]["mean_frames"]
    print(f"oracle annotate with noise 0.05: boundary error {a['boundary_error']['mean_frames']:.3f} frames")


# ---- refusals ------------------------------------------------------------------------------------------
def test_requests_it_cannot_answer_are_refused_with_the_reason(pp_dataset, server):
    from robolearn.rewards.vlm.gvl import gvl_prompt, progress_schema

    client = VLMClient(vlm(server))
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    with pytest.raises(VLMError, match=r"answered 422: oracle \(gvl\): image 1 \(the reference\) \(32x32\) is not a "
                                       r"frame of .*pp \(cameras observation\.images\.front\)"):
        client.ask_json(gvl_prompt("put a cube into a bin", 2), noise, schema=progress_schema(2))

    reader = DatasetReader(pp_dataset)
    frames = sample_frames(int(reader.lengths[0]), 4)
    images = list(reader.video_frames(CAM, 0, frames))
    reader.decoder.close()
    jpeg = VLMClient(vlm(server, image_format="jpeg"))
    with pytest.raises(VLMError, match=r"image 1 is image/jpeg, which is lossy.*send them as png"):
        jpeg.ask_json(gvl_prompt("put a cube into a bin", 3), images, schema=progress_schema(3))
    # episode 0's frames said to be episode 1's (same length)
    prompt = annotate.episode_prompt("put a cube into a bin", ["reach", "grasp"], 1, frames, int(reader.lengths[1]),
                                     20.0, True)
    assert reader.lengths[0] == reader.lengths[1]
    with pytest.raises(VLMError, match=r"oracle \(annotate\): image \d+ is not frame \d+ of episode 1 of"):
        client.ask_json(prompt, images, schema=annotate.episode_schema(["reach", "grasp"], int(reader.lengths[1])))
    with pytest.raises(VLMError, match=r"422: oracle: this request is none of robolearn's VLM prompts"):
        client.ask("What is the capital of France?")


def test_a_dataset_without_expert_annotations_is_refused(pp_dataset, tmp_path):
    from robolearn.data.writer import DatasetWriter

    copy = Path(shutil.copytree(pp_dataset, tmp_path / "pp"))
    with DatasetWriter.open(copy, fsync=False) as w:
        w.set_stages({3: StageAnnotation(["reach", "grasp"], [0, 30], [29, 72], "vlm")})
    with pytest.raises(DatasetError, match=r"episodes 3 have no stage annotation by the scripted expert"):
        OracleResponder(copy)
    with pytest.raises(ConfigError, match="noise=-1"):
        OracleResponder(copy, noise=-1)


# ---- the verb ------------------------------------------------------------------------------------------
def test_cli_help():
    from robolearn.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["vlm", "oracle", "--help"])
    assert e.value.code == 0


def test_the_verb_serves_and_says_it_is_not_a_model(pp_dataset):
    with pytest.raises(ConfigError, match="name the dataset"):
        OracleConfig().validate()
    proc = subprocess.Popen([sys.executable, "-m", "robolearn.cli.main", "vlm", "oracle", "--dataset", str(pp_dataset),
                             "--port", "0", "model=oracle-pp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True,
                            # Ctrl-C reaches it even when this run ignores SIGINT (a background job inherits SIG_IGN)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stdout.readline()
        assert line.startswith("ORACLE REHEARSAL ENDPOINT, NOT A MODEL"), line
        url = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line).group(1)
        with urllib.request.urlopen(f"{url}/models", timeout=10) as r:
            assert json.load(r)["data"][0]["id"] == "oracle-pp"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0  # Ctrl-C stops it cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
