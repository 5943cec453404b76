"""GVL progress scoring (`robolearn.rewards.vlm.gvl`) against a real loopback OpenAI-compatible server.

The fixture server's answer for a frame is a function of the frame's pixels (a hash mod 101), so the
test knows, independently of the module's bookkeeping, what progress each chronological frame must end
up with after un-shuffling, and which frame each sent image is. Uses the session's small pick_place
dataset (`pp_dataset`: 4 successes, 2 drops); nothing is written into it."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest

from robolearn.data.dataset import DatasetReader
from robolearn.errors import ConfigError
from robolearn.rewards.vlm.annotate import sample_frames
from robolearn.rewards.vlm.client import VLMConfig
from robolearn.rewards.vlm.gvl import GVLConfig, format_report, run, value_order_correlation
from robolearn.rewards.vlm.server import FixtureServer, request_images, request_text

CAMERA = "observation.images.front"


def decode(url: str) -> np.ndarray:
    import cv2

    raw = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(raw, cv2.IMREAD_COLOR)[..., ::-1]


def signature(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def pixel_progress(image: np.ndarray) -> int:
    """The fixture model's answer for a frame: any number the test can recompute from the pixels."""
    return int(signature(image)[:8], 16) % 101


def pixel_responder(req: dict) -> str:
    images = [decode(u) for u in request_images(req)]
    return json.dumps({"progress": [pixel_progress(im) for im in images[1:]]})  # image 1 is the 0% reference


@pytest.fixture(scope="module")
def episodes(pp_dataset):
    """{episode: (sampled frames, their decoded images, success)} as the test decodes them itself."""
    reader = DatasetReader(pp_dataset)
    out = {}
    for ep in range(reader.num_episodes):
        frames = sample_frames(int(reader.lengths[ep]), 16)
        out[ep] = (frames, reader.video_frames(CAMERA, ep, frames), reader.meta.success(ep))
    reader.decoder.close()
    return out


def vlm(server: FixtureServer, tmp_path) -> VLMConfig:
    return VLMConfig(base_url=server.base_url, model=server.model, cache_dir=str(tmp_path / "cache"), backoff_s=0.01)


def test_gvl_shuffles_unshuffles_and_scores_voc(pp_dataset, episodes, tmp_path):
    from scipy.stats import spearmanr

    out = tmp_path / "run"
    with FixtureServer(pixel_responder) as server:
        cfg = GVLConfig(dataset=str(pp_dataset), out=str(out), seed=3, progress=False, vlm=vlm(server, tmp_path))
        report = run(cfg)
        requests = list(server.requests)
        assert len(requests) == len(episodes)

        by_episode = {r["episode"]: r for r in report["per_episode"]}
        for req in requests:
            sent = [decode(u) for u in request_images(req)]
            assert len(sent) == 17
            # which episode: the one whose sampled frames these are
            ep = next(e for e, (_, ims, _) in episodes.items()
                      if sorted(map(signature, ims)) == sorted(map(signature, sent[1:])))
            frames, images, _ = episodes[ep]
            assert np.array_equal(sent[0], images[0])  # the first frame of the episode, as the 0% reference
            chrono = [signature(im) for im in images]
            shown = [signature(im) for im in sent[1:]]
            assert shown != chrono  # shuffled
            r = by_episode[ep]
            assert r["frames"] == frames.tolist()
            assert [chrono[list(frames).index(f)] for f in r["shown_order"]] == shown
            assert "0%" in request_text(req) and "random order" in request_text(req)

        for ep, (frames, images, success) in episodes.items():
            r = by_episode[ep]
            want = [pixel_progress(im) for im in images]  # each frame's answer, back in time order
            assert r["progress"] == want
            rho = spearmanr(want, frames)[0]
            assert r["voc"] == pytest.approx(0.0 if np.isnan(rho) else rho, abs=1e-12)
            assert r["success"] == success
        vocs = {ep: by_episode[ep]["voc"] for ep in episodes}
        ok = [v for ep, v in vocs.items() if episodes[ep][2]]
        bad = [v for ep, v in vocs.items() if not episodes[ep][2]]
        assert len(ok) == 4 and len(bad) == 2
        assert report["mean_voc_success"] == pytest.approx(np.mean(ok))
        assert report["mean_voc_failure"] == pytest.approx(np.mean(bad))
        assert report["mean_voc"] == pytest.approx(np.mean(list(vocs.values())))
        assert report["low_voc_episodes"] == [ep for ep, v in vocs.items() if v < 0.5]
        assert f"mean VOC {np.mean(list(vocs.values())):.2f}, success {np.mean(ok):.2f} over 4, failure " \
               f"{np.mean(bad):.2f} over 2" in format_report(report)
        assert json.loads((out / "report.json").read_text())["per_episode"] == report["per_episode"]
        assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len((out / "vlm_log.jsonl").read_text().splitlines()) == len(episodes)

        # seeded shuffles and cached answers: a rerun asks nothing and scores the same
        again = run(cfg)
        assert len(server.requests) == len(requests)
        assert again["per_episode"] == report["per_episode"] and again["cache_hits"] == len(episodes)
        # another seed shows another order, and the un-shuffled answers do not change
        other = run(GVLConfig(dataset=str(pp_dataset), out=str(tmp_path / "run2"), seed=4, episodes=[0],
                              plot_episodes=0, progress=False, vlm=vlm(server, tmp_path)))
        assert len(server.requests) == len(requests) + 1
        assert other["per_episode"][0]["shown_order"] != by_episode[0]["shown_order"]
        assert other["per_episode"][0]["progress"] == by_episode[0]["progress"]
        assert not (tmp_path / "run2" / "progress.png").exists()


def test_wrong_count_and_out_of_range_answers_are_reasked(pp_dataset, tmp_path):
    def respond(req: dict) -> str:
        if sum(m["role"] == "user" for m in req["messages"]) == 1:
            return '{"progress": [10, 20, 30]}'
        return pixel_responder(req)

    with FixtureServer(respond) as server:
        report = run(GVLConfig(dataset=str(pp_dataset), episodes=[1], out=str(tmp_path / "run"), plot_episodes=1,
                               progress=False, vlm=vlm(server, tmp_path)))
        assert len(server.requests) == 2
        assert "at progress: [10, 20, 30] is too short" in request_text(server.requests[1])
    assert report["reasks"] == 1 and len(report["per_episode"][0]["progress"]) == 16

    with FixtureServer('{"progress": [' + ", ".join(["150"] * 16) + "]}") as server:
        from robolearn.rewards.vlm.client import VLMAnswerError

        with pytest.raises(VLMAnswerError, match=r"episode 1: fixture-vlm at .* gave an unusable answer twice "
                                                 r"\(at progress/0: 150 is greater than the maximum of 100\)"):
            run(GVLConfig(dataset=str(pp_dataset), episodes=[1], out=str(tmp_path / "run"), progress=False,
                          vlm=vlm(server, tmp_path / "other")))  # not the cache holding the good answer


def test_voc_against_scipy_with_ties_and_constant_answers():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    frames = np.array([0, 3, 7, 10, 14, 17, 21, 24])
    for _ in range(20):
        p = rng.integers(0, 5, len(frames)).astype(float)  # many ties
        rho = spearmanr(p, frames)[0]
        assert value_order_correlation(p, frames) == pytest.approx(0.0 if np.isnan(rho) else rho, abs=1e-12)
    assert value_order_correlation(np.full(8, 40.0), frames) == 0.0
    assert value_order_correlation(frames * 2.0, frames) == pytest.approx(1.0)
    assert value_order_correlation(-frames, frames) == pytest.approx(-1.0)


def test_config_errors(pp_dataset, tmp_path):
    with pytest.raises(ConfigError, match="frames_per_episode=1 must be at least 2"):
        run(GVLConfig(dataset=str(pp_dataset), frames_per_episode=1))
    with pytest.raises(ConfigError, match=r"has no camera 'wrist'; it has front"):
        run(GVLConfig(dataset=str(pp_dataset), camera="wrist", out=str(tmp_path / "run"),
                      vlm=VLMConfig(base_url="http://127.0.0.1:9/v1", cache_dir=None)))
