"""Preference labels (RL-VLM-F) and the Bradley-Terry reward: labels from a real loopback VLM server whose
answers come from each frame's true progress, training that orders held-out pairs as the labels do,
resume of labels.jsonl, malformed answers re-asked, the two-stage query, clips, the checkpoint round
trip, the reward inside RewardWrapper, and one clear error per bad input.

The dataset is synthetic and tiny: 32x32 frames of a white square on a noisy, per-episode coloured
background, whose horizontal position is the episode's progress (successes move it left to right,
failures go halfway and come back). The responder decodes the images it is sent, finds each frame by
the hash of its pixels and compares the true progress of the two sides, as an oracle VLM would."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.errors import ConfigError, RobolearnError
from robolearn.rewards import load_reward_model, register_reward_model
from robolearn.rewards.shaping import ShapingConfig
from robolearn.rewards.vlm.client import VLMConfig, VLMError
from robolearn.rewards.vlm.preference import (
    PreferenceConfig,
    PreferenceReward,
    PreferenceRewardConfig,
    PreferenceTrainConfig,
    label_pairs,
    read_labels,
    run,
    sample_pairs,
    train_preference,
)
from robolearn.rewards.vlm.server import FixtureServer, Reply, request_images, request_text, script
from robolearn.rewards.wrapper import RewardWrapper

register_reward_model("preference", "robolearn.rewards.vlm.preference:PreferenceReward")  # the lead adds this line

CAM = "observation.images.front"
HW = 32
T = 30
TASK = "move the white square to the right edge"
SMALL = {"channels": [8, 16], "image_dim": 32, "hidden": [64], "shift": 1, "image_pool": 1}
FEATURES = {CAM: Feature("video", (HW, HW, 3)), "observation.state": Feature("float32", (2,)),
            "action": Feature("float32", (2,))}


def render(progress: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(T,) progress in [0, 1] -> (T, 32, 32, 3) uint8: an 8x8 white square at x = progress * 24."""
    bg = rng.integers(20, 90, 3)
    y = int(rng.integers(4, HW - 12))
    frames = np.clip(bg + rng.normal(0, 8, (len(progress), HW, HW, 3)), 0, 255).astype(np.uint8)
    for t, p in enumerate(progress):
        x = int(round(p * (HW - 8)))
        frames[t, y:y + 8, x:x + 8] = 255
    return frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 episodes of 30 frames; episodes 3 and 7 fail (the square goes halfway, then back)."""
    root = tmp_path_factory.mktemp("pref_data") / "squares"
    rng = np.random.default_rng(0)
    t = np.arange(T) / (T - 1)
    with DatasetWriter.create(root, FEATURES, 10, fsync=False) as w:
        for ep in range(8):
            success = ep % 4 != 3
            progress = t if success else 0.5 * np.sin(np.pi * t)
            w.add_episode({CAM: render(progress, rng),
                           "observation.state": np.stack([progress, 1 - progress], 1).astype(np.float32),
                           "action": np.zeros((T, 2), np.float32)},
                          EpisodeRecord(TASK, success=success, info={"progress": progress.tolist()}))
    return root


@pytest.fixture(scope="module")
def truth(dataset) -> dict[bytes, float]:
    """sha1 of a decoded frame's pixels -> its true progress (frames as the labeller decodes them)."""
    reader = DatasetReader(dataset)
    out = {}
    for ep in range(reader.num_episodes):
        progress = reader.meta.episode_info(ep)["progress"]
        for f, img in enumerate(reader.episode(ep, [CAM])[CAM]):
            out[hashlib.sha1(img.tobytes()).digest()] = progress[f]
    return out


def decode(url: str) -> np.ndarray:
    """A data URL the client sent -> (H, W, 3) uint8 RGB."""
    raw = base64.b64decode(url.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]


class Oracle:
    """A responder that labels a pair by the true progress of its two sides (summed over a clip's frames):
    the side with more progress wins; closer than 0.05 per frame is -1 (can't tell). Counts its answers."""

    def __init__(self, truth: dict[bytes, float]):
        self.truth, self.answers, self.lock = truth, [], threading.Lock()

    def side(self, url: str) -> float:
        img = decode(url)
        tiles = [np.ascontiguousarray(img[:, i:i + HW]) for i in range(0, img.shape[1], HW)]
        return sum(self.truth[hashlib.sha1(t.tobytes()).digest()] for t in tiles), len(tiles)

    def label(self, urls: list[str]) -> tuple[int, str]:
        (a, n), (b, _) = self.side(urls[0]), self.side(urls[1])
        pref = -1 if abs(a - b) < 0.05 * n else int(b > a)
        return pref, f"Image 1 is at {a:.3f}, Image 2 at {b:.3f}. ANSWER={pref}"

    def __call__(self, request: dict) -> str:
        urls = request_images(request)
        if not urls:  # the second stage of the two-stage query: read the label off the analysis
            pref = int(re.search(r"ANSWER=(-?\d)", request_text(request)).group(1))
            return json.dumps({"preferred": pref})
        pref, analysis = self.label(urls)
        with self.lock:
            self.answers.append(pref)
        if "analysis" in request_text(request) and "preferred" in request_text(request):
            return json.dumps({"analysis": analysis, "preferred": pref})
        return analysis  # the first stage of the two-stage query: free text


def config(dataset, out, server, train=None, vlm=None, **kw) -> PreferenceConfig:
    """A PreferenceConfig sized for the tests, talking to `server` with the cache off (train / vlm: field
    overrides of those sections, kw: of the top level)."""
    train = PreferenceTrainConfig(**{"steps": 300, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20,
                                     "val_fraction": 0.2, "log_every": 50, "save_every": 150, "device": "cpu",
                                     **(train or {})})
    vlm = VLMConfig(**{"base_url": server.base_url, "model": server.model, "cache_dir": None, "max_retries": 1,
                       "backoff_s": 0.01, **(vlm or {})})
    return PreferenceConfig(**{"dataset": str(dataset), "out": str(out), "pairs": 240, "seed": 0, "progress": False,
                               "model_options": dict(SMALL), "train": train, "vlm": vlm, **kw})


@pytest.fixture(scope="module")
def oracle(truth):
    return Oracle(truth)


@pytest.fixture(scope="module")
def server(oracle):
    with FixtureServer(oracle) as s:
        yield s


@pytest.fixture(scope="module")
def trained(dataset, server, oracle, tmp_path_factory):
    """One full run: 240 frame pairs labelled by the oracle, 300 training steps."""
    torch.manual_seed(0)
    cfg = config(dataset, tmp_path_factory.mktemp("pref_run") / "run", server)
    result = run(cfg)
    return cfg, result, len(server.requests)


def frames_of(dataset) -> tuple[np.ndarray, list[int]]:
    reader = DatasetReader(dataset)
    eps = [reader.episode(e, [CAM])[CAM] for e in range(reader.num_episodes)]
    return np.concatenate(eps), [len(e) for e in eps]


# ---- labelling and training ----------------------------------------------------------------------
def test_run_labels_trains_and_orders_held_out_pairs(trained, oracle):
    cfg, result, n_requests = trained
    out = Path(cfg.out)
    counts = result["labels"]
    assert counts["pairs"] == counts["labelled"] == counts["asked"] == 240 == n_requests
    assert counts["failed"] == 0
    assert counts["dropped"] == oracle.answers.count(-1) > 0  # the oracle's -1s ...
    assert counts["first"] == oracle.answers.count(0) and counts["second"] == oracle.answers.count(1)
    assert result["train_pairs"] + result["val_pairs"] == 240 - counts["dropped"]  # ... are not trained on
    assert result["val_pairs"] >= 30
    rows = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 240 and {r["preferred"] for r in rows} == {-1, 0, 1}
    r = rows[0]
    assert set(r) >= {"key", "episode_a", "frames_a", "episode_b", "frames_b", "preferred", "analysis"}
    assert len(r["frames_a"]) == len(r["frames_b"]) == 1 and "ANSWER=" in r["analysis"]
    assert any(r["episode_a"] == r["episode_b"] for r in rows) and any(r["episode_a"] != r["episode_b"] for r in rows)
    # the learned reward orders pairs it never saw as the labels do, and rises along the successes
    assert result["accuracy"] > 0.75, result
    assert result["voc"] > 0.6 and result["voc_episodes"] == [0, 1, 2, 4, 5, 6]
    assert Path(result["checkpoint"]).resolve().name == "step_000300"
    assert list((out / "tb").glob("events.*")) and (out / "summary.json").is_file()
    assert json.loads((out / "summary.json").read_text())["accuracy"] == result["accuracy"]


def test_checkpoint_loads_and_its_reward_is_standardized(trained, dataset):
    cfg, result, _ = trained
    model = load_reward_model(result["checkpoint"])
    assert isinstance(model, PreferenceReward) and not model.has_progress and model.config.obs_keys == [CAM]
    frames, _ = frames_of(dataset)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).unsqueeze(1)
    with torch.no_grad():
        out = model.outputs({CAM: x})
    r = out["reward"].numpy()
    assert r.shape == (len(frames),)
    assert abs(r.mean()) < 1e-3 and abs(r.std() - 1) < 1e-3  # standardized over the labelled episodes' frames
    np.testing.assert_allclose(r, ((out["raw_reward"] - model.reward_mean) / model.reward_std).numpy(), rtol=1e-6)
    assert model.metadata["task"] == TASK and model.metadata["camera"] == CAM


def test_rerun_sends_no_repeated_requests(trained, server, dataset, tmp_path):
    cfg, result, n_requests = trained
    again = run(cfg)  # labels and training both resume: nothing is asked, nothing trained
    assert len(server.requests) == n_requests and again["labels"]["asked"] == 0
    assert again["steps"] == 300 and again["accuracy"] == pytest.approx(result["accuracy"])
    # a copy of the run with more pairs and a line a crash cut off: only the new pairs and the cut one are asked
    copy = tmp_path / "copy"
    shutil.copytree(cfg.out, copy)
    with open(copy / "labels.jsonl", "rb+") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[:-40])  # the last row loses its end
    seen = {tuple(request_images(r)) for r in server.requests}
    more = config(dataset, copy, server, pairs=250)
    counts = label_pairs(more)
    new = server.requests[n_requests:]
    assert counts["asked"] == len(new) == 11 and counts["labelled"] == 250
    assert sum(tuple(request_images(r)) in seen for r in new) == 1  # only the cut-off pair is asked twice
    assert len(read_labels(copy / "labels.jsonl")) == 250
    # the first 240 sampled pairs are the same pairs: more pairs extend the sample
    old = sample_pairs(np.arange(8), np.full(8, T), 240, 1, 1, 0.5, 0)
    assert sample_pairs(np.arange(8), np.full(8, T), 250, 1, 1, 0.5, 0)[:240] == old


def test_malformed_answers_are_reasked_then_left_for_the_next_run(dataset, truth, tmp_path):
    ok = json.dumps({"analysis": "Image 2 shows the square further right.", "preferred": 1})
    replies = ["I prefer the second image.", ok, ok, "no idea", '{"preferred": 2}']
    with FixtureServer(script(replies)) as s:
        cfg = config(dataset, tmp_path / "run", s, pairs=3, vlm={"concurrency": 1})
        counts = label_pairs(cfg)
        assert len(s.requests) == 5
        assert "That answer was not usable" in request_text(s.requests[1])  # the re-ask quotes the problem
    assert counts == {"pairs": 3, "asked": 3, "labelled": 2, "first": 0, "second": 2, "dropped": 0, "failed": 1}
    assert len(read_labels(tmp_path / "run" / "labels.jsonl")) == 2
    with FixtureServer(Oracle(truth)) as s:  # the failed pair is asked again on the next run, and only it
        cfg.vlm = VLMConfig(base_url=s.base_url, model=s.model, cache_dir=None)
        counts = label_pairs(cfg)
        assert len(s.requests) == 1 and counts["asked"] == 1 and counts["labelled"] == 3


def test_two_stage_query(dataset, truth, tmp_path):
    oracle = Oracle(truth)
    with FixtureServer(oracle) as s:
        cfg = config(dataset, tmp_path / "run", s, pairs=6, query="two_stage")
        counts = label_pairs(cfg)
    stage1 = [r for r in s.requests if request_images(r)]
    stage2 = [r for r in s.requests if not request_images(r)]
    assert len(stage1) == len(stage2) == 6  # an analysis with the images, then a label from its text
    assert all("Is there any difference" in request_text(r) and "preferred" not in request_text(r) for r in stage1)
    assert all("Based on the text below" in request_text(r) and "ANSWER=" in request_text(r) for r in stage2)
    rows = read_labels(tmp_path / "run" / "labels.jsonl").values()
    assert sorted(r["preferred"] for r in rows) == sorted(oracle.answers)
    assert counts["labelled"] == 6


def test_clip_pairs_send_filmstrips_and_train(dataset, truth, tmp_path):
    oracle = Oracle(truth)
    with FixtureServer(oracle) as s:
        cfg = config(dataset, tmp_path / "run", s, pairs=24, pair_kind="clips", clip_len=3, clip_stride=2,
                     train={"steps": 4, "batch_size": 4, "save_every": 4, "log_every": 2, "val_fraction": 0.25})
        counts = label_pairs(cfg)
        imgs = [decode(u) for u in request_images(s.requests[0])]
    assert [im.shape for im in imgs] == [(HW, 3 * HW, 3)] * 2  # each side: 3 frames left to right
    assert "filmstrip of 3" in request_text(s.requests[0])
    rows = list(read_labels(tmp_path / "run" / "labels.jsonl").values())
    for r in rows:
        for side in ("frames_a", "frames_b"):
            f = r[side]
            assert len(f) == 3 and all(b - a in (0, 2) for a, b in zip(f, f[1:]))
    result = train_preference(cfg)
    assert result["steps"] == 4 and result["train_pairs"] + result["val_pairs"] == 24 - counts["dropped"]
    assert load_reward_model(result["checkpoint"]).config.camera == CAM


# ---- the model -----------------------------------------------------------------------------------
def test_bradley_terry_loss_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PreferenceReward(PreferenceRewardConfig(camera="front", **SMALL), FEATURES, {})
    x = torch.rand(5, 2, 3, 3, HW, HW)
    model.eval()
    with torch.no_grad():
        loss, terms = model.training_loss({CAM: x}, {"preferred": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])})
        r = model.raw_rewards(x.flatten(0, 2)).view(5, 2, 3).sum(2)
    logit = r[:, 1] - r[:, 0]
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    want = -(y * torch.log(torch.sigmoid(logit)) + (1 - y) * torch.log(1 - torch.sigmoid(logit))).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["accuracy"] == pytest.approx(((logit > 0).float() == y).float().mean().item())
    model.set_normalization(np.array([1.0, 2.0, 4.0]))
    path = model.save(tmp_path / "ckpt")
    loaded = load_reward_model(path)
    frames = torch.rand(7, 1, 3, HW, HW)
    with torch.no_grad():
        a, b = model.outputs({CAM: frames}), loaded.outputs({CAM: frames})
    torch.testing.assert_close(a["reward"], b["reward"], rtol=0, atol=0)
    assert loaded.reward_mean.item() == pytest.approx(7 / 3)
    assert loaded.reward_std.item() == pytest.approx(np.std([1, 2, 4]))


class ReplayEnv:
    """A vector env replaying dataset episodes, one per env (same-step auto-reset, final_obs in the infos):
    just enough of the vector interface for RewardWrapper."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames, self.num_envs = frames, len(frames)
        self.t = np.zeros(self.num_envs, int)

    def obs(self):
        return {CAM: np.stack([f[t] for f, t in zip(self.frames, self.t)])}

    def reset(self, seed=None, options=None):
        self.t[:] = 0
        return self.obs(), {}

    def step(self, actions):
        self.t += 1
        done = self.t == np.array([len(f) for f in self.frames]) - 1
        final: list[dict] = [{} for _ in range(self.num_envs)]
        reached = self.obs()
        for i in np.flatnonzero(done):
            final[i] = {CAM: reached[CAM][i]}
            self.t[i] = 0
        return (self.obs(), np.zeros(self.num_envs), done, np.zeros(self.num_envs, bool),
                {"final_obs": final, "success": np.zeros(self.num_envs)})

    def close(self, **kw):
        pass


def test_reward_wrapper_with_progress_shaping(trained, dataset):
    _, result, _ = trained
    model = load_reward_model(result["checkpoint"])
    frames, lengths = frames_of(dataset)
    eps = np.split(frames, np.cumsum(lengths)[:-1])[:2]
    env = RewardWrapper(ReplayEnv(eps), model, ShapingConfig(mode="progress", sparse="none", scale=2.0), device="cpu")
    with torch.no_grad():
        want = [model.outputs({CAM: torch.from_numpy(e).permute(0, 3, 1, 2).float().div(255).unsqueeze(1)})["reward"]
                .numpy() for e in eps]
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(info["progress"], [w[0] for w in want], atol=1e-5)
    for t in range(1, 6):
        obs, reward, term, trunc, info = env.step(np.zeros((2, 2)))
        np.testing.assert_allclose(reward, [2.0 * w[t] for w in want], atol=1e-5)
        np.testing.assert_allclose(info["reward_terms"]["learned/progress"], [w[t] for w in want], atol=1e-5)
    with pytest.raises(ConfigError, match="mode=progress"):
        RewardWrapper(ReplayEnv(eps), model, ShapingConfig(mode="potential"), device="cpu")


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_each_give_one_clear_error(dataset, server, trained, tmp_path):
    cfg, _, _ = trained
    with pytest.raises(RobolearnError, match="no camera 'wrist'.*front"):
        label_pairs(config(dataset, tmp_path / "a", server, camera="wrist"))
    with pytest.raises(ConfigError, match="labels made with different query"):
        label_pairs(config(dataset, cfg.out, server, query="two_stage"))
    with pytest.raises(ConfigError, match="pair_kind"):
        config(dataset, tmp_path / "b", server, pair_kind="videos").validate()
    with pytest.raises(ConfigError, match="n_frames=1"):
        PreferenceReward(PreferenceRewardConfig(camera="front", n_frames=3, **SMALL), FEATURES, {})
    with pytest.raises(RobolearnError, match="camera 'wrist'"):
        PreferenceReward(PreferenceRewardConfig(camera="wrist", **SMALL), FEATURES, {})
    with pytest.raises(ConfigError, match=r"\(B, 2, L, 3, H, W\)"):
        PreferenceReward(PreferenceRewardConfig(camera="front", **SMALL), FEATURES, {}).training_loss(
            {CAM: torch.rand(4, 1, 3, HW, HW)}, {"preferred": torch.zeros(4)})
    with FixtureServer(lambda r: Reply("unused"), vision=False) as s:  # a text-only model: stops at once
        with pytest.raises(VLMError, match="does not take images"):
            label_pairs(config(dataset, tmp_path / "c", s, pairs=20))
    assert not (tmp_path / "c" / "labels.jsonl").read_text()
    with FixtureServer(json.dumps({"analysis": "same", "preferred": -1})) as s:  # nothing usable to train on
        c = config(dataset, tmp_path / "d", s, pairs=5)
        with pytest.raises(ConfigError, match="0 usable labels"):
            run(c)
