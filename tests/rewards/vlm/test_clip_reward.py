"""The zero-shot CLIP reward (VLM-RM): the goal-baseline regularized formula against a hand computation,
the checkpoint round trip through the reward-model registry, live scoring in the engine, offline
scoring of dataset episodes, and one clear error per bad input. A tiny random CLIP (32x32 images, 16-d
embeddings) and a letter-level BPE tokenizer are written to a temp dir: nothing comes from the hub."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from robolearn.data.format import Feature
from robolearn.errors import ConfigError, RobolearnError
from robolearn.inference.reward import RewardRunner
from robolearn.rewards import load_reward_model, register_reward_model
from robolearn.rewards.vlm import clip as clipmod
from robolearn.rewards.vlm.clip import (
    OPENAI_CLIP_MEAN,
    ClipReward,
    ClipRewardConfig,
    build_clip_reward,
    clip_reward_curve,
    score_frames,
)

register_reward_model("clip", "robolearn.rewards.vlm.clip:ClipReward")  # the lead adds this line to the registry

CAM = "observation.images.front"
HW = (24, 40)  # not CLIP's 32x32 and not square: frames go through the resize and the center crop
FEATURES = {CAM: Feature("video", (*HW, 3)), "observation.images.wrist": Feature("video", (32, 32, 3)),
            "observation.state": Feature("float32", (4,))}
GOAL, BASELINE = "a red cube on a table", "a robot arm"
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]  # the tiny model's processor config: read instead of OpenAI's


def write_tiny_clip(path: Path, preprocessor: bool = True) -> Path:
    """A random CLIP (hidden 32, 2 layers, 4 heads, 32x32 images of 8x8 patches, 16-d projection) and a
    tokenizer over single letters (CLIP's BPE with no merges: bos, eos, then `c` and `c</w>` per letter)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=16)
    cfg = CLIPConfig(text_config=dict(small, vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    if preprocessor:
        (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def hf_clip(clip_dir):
    """The same CLIP through transformers directly, to check the reward against."""
    from transformers import AutoTokenizer, CLIPModel

    return CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval(), AutoTokenizer.from_pretrained(clip_dir)


@pytest.fixture(scope="module")
def models(clip_dir) -> dict[float, ClipReward]:
    return {a: build_clip_reward(clip_dir, GOAL, BASELINE, a, "front", FEATURES) for a in (0.0, 0.5, 1.0)}


def frames(n: int, seed: int = 0, hw: tuple[int, int] = HW) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


def text_embeddings(hf_clip) -> tuple[np.ndarray, np.ndarray]:
    clip, tok = hf_clip
    with torch.no_grad():
        out = clip.get_text_features(**tok([GOAL, BASELINE], padding=True, return_tensors="pt"))
    e = getattr(out, "pooler_output", out).numpy().astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e[0], e[1]


def test_build_reads_the_model_directory(models, clip_dir):
    m = models[0.5]
    assert m.config.obs_keys == [CAM] and m.config.camera_key == CAM and m.config.n_frames == 1
    assert m.config.image_size == 32 and m.config.image_mean == MEAN and m.config.image_std == STD
    assert m.goal_emb.shape == (16,) and m.projection.shape == (16, 16)
    assert m.metadata["clip_path"] == str(clip_dir.resolve()) and m.metadata["goal"] == GOAL
    assert m.metadata["baseline"] == BASELINE and m.metadata["alpha"] == 0.5
    # only the vision side is kept: no text tower in the model or its checkpoint
    assert not any("text" in k for k in m.state_dict())
    assert not any(p.requires_grad for p in m.parameters())


def test_without_processor_config_openai_normalization(clip_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(clip_dir, bare)
    (bare / "preprocessor_config.json").unlink()
    m = build_clip_reward(bare, GOAL, BASELINE, 0.5, CAM, FEATURES)
    assert m.config.image_mean == pytest.approx(list(OPENAI_CLIP_MEAN))


def test_embeddings_and_reward_match_transformers_and_numpy(models, hf_clip):
    """32x32 frames need no resize: the image embedding is CLIPModel's on (x - mean) / std, and the reward
    is VLM-RM's formula computed by hand, for alpha 0, 0.5 and 1."""
    clip, _ = hf_clip
    g, b = text_embeddings(hf_clip)
    feats32 = {**FEATURES, CAM: Feature("video", (32, 32, 3))}
    raw = frames(6, hw=(32, 32))
    x = torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        pix = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        out = clip.get_image_features(pixel_values=pix)
    img = getattr(out, "pooler_output", out).numpy().astype(np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    for alpha, m in models.items():
        m32 = ClipReward(ClipRewardConfig(**{**m.config.__dict__, "obs_keys": []}), feats32, {})
        m32.load_state_dict(m.state_dict())
        np.testing.assert_allclose(m32.goal_emb.numpy(), g, atol=1e-5)
        np.testing.assert_allclose(m32.baseline_emb.numpy(), b, atol=1e-5)
        emb = m32.encode_frames({CAM: x})
        np.testing.assert_allclose(emb.numpy(), img, atol=1e-5)
        d = g - b
        p = alpha * np.outer(d, d) / (d @ d) + (1 - alpha) * np.eye(len(d))
        want = 1 - 0.5 * np.sum(((img - g) @ p) ** 2, axis=1)
        got = score_frames(m32, raw)
        assert got.shape == (6,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)
        if alpha == 0.0:  # unit vectors: 1 - |x - g|^2 / 2 is the cosine similarity
            np.testing.assert_allclose(got, img @ g, atol=1e-5)


def test_alpha_one_reads_only_the_goal_baseline_direction(models):
    m = models[1.0]
    g, b = m.goal_emb, m.baseline_emb
    d = (g - b) / (g - b).norm()
    x = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    r = m.head(x[:, None])["reward"]
    np.testing.assert_allclose(r.numpy(), (1 - 0.5 * ((x - g) @ d) ** 2).numpy(), atol=1e-6)
    ortho = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    ortho -= (ortho @ d)[:, None] * d  # perpendicular to d: invisible at alpha = 1
    np.testing.assert_allclose(m.head((x + ortho)[:, None])["reward"].numpy(), r.numpy(), atol=1e-5)
    assert not torch.allclose(models[0.5].head((x + ortho)[:, None])["reward"], models[0.5].head(x[:, None])["reward"])
    along = m.head((x + 0.3 * d)[:, None])["reward"]  # along d it moves
    assert (along - r).abs().min() > 1e-4
    assert m.head(g[None, None])["reward"].item() == pytest.approx(1.0)  # the goal itself scores 1


def test_preprocess_center_crop_and_squash(models):
    m = models[0.5]
    x = torch.rand(2, 3, 32, 48)  # shorter side already 32: center_crop is a pure crop of columns 8..40
    np.testing.assert_allclose(m.preprocess(x).numpy(), m.preprocess(x[..., 8:40]).numpy(), atol=1e-6)
    assert m.preprocess(torch.rand(3, 3, *HW)).shape == (3, 3, 32, 32)
    sq = ClipReward(ClipRewardConfig(**{**m.config.__dict__, "obs_keys": [], "resize": "squash"}), FEATURES, {})
    assert sq.preprocess(torch.rand(1, 3, *HW)).shape == (1, 3, 32, 32)
    square = torch.rand(2, 3, 64, 64)
    np.testing.assert_allclose(sq.preprocess(square).numpy(), m.preprocess(square).numpy(), atol=1e-6)


def test_chunks_give_the_same_rewards(models, monkeypatch):
    m = models[0.5]
    raw = frames(10, seed=3)
    whole = score_frames(m, raw)
    monkeypatch.setattr(clipmod, "CHUNK", 3)  # 3 + 3 + 3 + 1 frames per vision pass
    np.testing.assert_allclose(score_frames(m, raw), whole, atol=1e-6)


def test_save_load_round_trip(models, tmp_path):
    m = models[0.5]
    m.save(tmp_path / "ck")
    back = load_reward_model(tmp_path / "ck")
    assert isinstance(back, ClipReward) and back.config == m.config and back.metadata == m.metadata
    raw = frames(7, seed=4)
    np.testing.assert_array_equal(score_frames(back, raw), score_frames(m, raw))
    raw_cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert raw_cfg["type"] == "clip" and raw_cfg["config"]["clip_config"]["model_type"] == "clip"
    # a checkpoint edited into a 2-frame window is refused on load, naming the reason
    raw_cfg["config"]["n_frames"] = 2
    (tmp_path / "ck" / "config.json").write_text(json.dumps(raw_cfg))
    with pytest.raises(RobolearnError, match="n_frames=2"):
        load_reward_model(tmp_path / "ck")


def test_runner_equals_compute_reward(models):
    m = models[0.5]
    runner = RewardRunner(m, num_envs=3, device="cpu")
    for seed in range(3):
        raw = frames(3, seed=10 + seed)
        live = runner.step({CAM: raw})
        batch = {CAM: torch.from_numpy(raw).permute(0, 3, 1, 2).float().div(255.0)[:, None]}
        with torch.inference_mode():
            want = m.compute_reward(batch).numpy()
        assert set(live) == {"reward"} and live["reward"].shape == (3,)
        np.testing.assert_allclose(live["reward"], want, atol=1e-5)
        np.testing.assert_allclose(live["reward"], score_frames(m, raw), atol=1e-5)
    sub = runner.step({CAM: frames(1, seed=20)}, env_ids=[2])  # a subset of the envs
    np.testing.assert_allclose(sub["reward"], score_frames(m, frames(1, seed=20)), atol=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from robolearn.data.writer import DatasetWriter, EpisodeRecord

    root = tmp_path_factory.mktemp("clip_data") / "d"
    feats = {CAM: Feature("video", (*HW, 3)), "action": Feature("float32", (2,))}
    with DatasetWriter.create(root, feats, 10, fsync=False) as w:
        for i, t in enumerate((6, 9)):
            w.add_episode({CAM: frames(t, seed=30 + i), "action": np.zeros((t, 2), np.float32)},
                          EpisodeRecord("push", success=bool(i)))
    return root


def test_reward_curve_scores_every_frame(models, dataset):
    from robolearn.data.dataset import DatasetReader

    m = models[0.5]
    curve = clip_reward_curve(m, dataset)
    assert curve["episodes"] == [0, 1] and curve["success"] == [False, True]
    assert [len(r) for r in curve["reward"]] == [6, 9]
    reader = DatasetReader(dataset)
    for ep, r in zip(curve["episodes"], curve["reward"]):
        np.testing.assert_allclose(r, score_frames(m, reader.episode(ep, [CAM])[CAM]), atol=1e-5)
    assert np.isfinite(curve["rise"]).all() and all(-1 <= v <= 1 for v in curve["voc"])
    assert clip_reward_curve(m, dataset, episodes=[1])["episodes"] == [1]
    with pytest.raises(ConfigError, match=r"episodes \[5\] do not exist"):
        clip_reward_curve(m, dataset, episodes=[5])
    wrist = build_clip_reward(m.metadata["clip_path"], GOAL, BASELINE, 0.5, "wrist", FEATURES)
    with pytest.raises(RobolearnError, match="no camera 'wrist'; cameras: front"):
        clip_reward_curve(wrist, dataset)


def test_clip_reward_verb_saves_a_loadable_reward_and_its_curves(clip_dir, dataset, tmp_path):
    import json

    from robolearn.cli.main import main
    from robolearn.rewards import load_reward_model

    out = tmp_path / "clip_run"
    assert main(["vlm", "clip-reward", "--clip", str(clip_dir), "--goal", GOAL, "--dataset", str(dataset),
                 "--out", str(out), "camera=front"]) == 0
    summary = json.loads((out / "curves.json").read_text())
    assert summary["episodes"] == 2 and len(summary["curves"]["reward"][1]) == 9
    assert (out / "curves.png").stat().st_size > 0
    model = load_reward_model(out)
    assert model.name == "clip" and model.metadata["goal"] == GOAL
    np.testing.assert_allclose(summary["curves"]["reward"][0], clip_reward_curve(model, dataset)["reward"][0],
                               atol=1e-5)
    assert main(["vlm", "clip-reward", "--goal", GOAL, "--out", str(out)]) == 2  # no dataset: one-line error


def test_training_loss_refuses(models):
    with pytest.raises(ConfigError, match="zero-shot.*build_clip_reward"):
        models[0.5].training_loss({}, {})


def _bad_inputs(clip_dir: Path, tmp: Path):
    (tmp / "other").mkdir()
    (tmp / "other" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (tmp / "junk").mkdir()
    (tmp / "junk" / "notes.json").write_text(json.dumps({"x": 1}))
    (tmp / "noweights").mkdir()
    shutil.copy(clip_dir / "config.json", tmp / "noweights" / "config.json")
    shutil.copy(clip_dir / "tokenizer.json", tmp / "noweights" / "tokenizer.json")
    (tmp / "notokenizer").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(clip_dir / name, tmp / "notokenizer" / name)
    base = ClipRewardConfig(camera="front", goal=GOAL, clip_config={"model_type": "clip",
                                                                    "vision_config": {"image_size": 224}})
    return {
        "missing dir": (lambda: build_clip_reward(tmp / "nope", GOAL, BASELINE, 0.5, "front", FEATURES),
                        "is not a directory with a CLIP model.*no such directory.*huggingface-cli download "
                        "openai/clip-vit-base-patch32 --local-dir"),
        "bert dir": (lambda: build_clip_reward(tmp / "other", GOAL, BASELINE, 0.5, "front", FEATURES),
                     "describes a 'bert' model, not 'clip'"),
        "random json": (lambda: build_clip_reward(tmp / "junk", GOAL, BASELINE, 0.5, "front", FEATURES),
                        "has no config.json.*--local-dir"),
        "no weights": (lambda: build_clip_reward(tmp / "noweights", GOAL, BASELINE, 0.5, "front", FEATURES),
                       "not a directory with a CLIP model.*loading it failed"),
        "no tokenizer": (lambda: build_clip_reward(tmp / "notokenizer", GOAL, BASELINE, 0.5, "front", FEATURES),
                         "has no tokenizer"),
        "camera": (lambda: build_clip_reward(clip_dir, GOAL, BASELINE, 0.5, "top", FEATURES),
                   "camera 'top' is not a camera of the features; cameras: front, wrist"),
        "state as camera": (lambda: build_clip_reward(clip_dir, GOAL, BASELINE, 0.5, "observation.state", FEATURES),
                            "cameras: front, wrist"),
        "alpha": (lambda: build_clip_reward(clip_dir, GOAL, BASELINE, 1.5, "front", FEATURES),
                  r"alpha=1.5 must be in \[0, 1\]"),
        "empty goal": (lambda: build_clip_reward(clip_dir, "  ", BASELINE, 0.5, "front", FEATURES),
                       "goal prompt is empty"),
        "same prompts": (lambda: build_clip_reward(clip_dir, BASELINE, BASELINE, 0.5, "front", FEATURES),
                         "same CLIP embedding"),
        "n_frames": (lambda: ClipRewardConfig(**{**base.__dict__, "n_frames": 2}).validate(),
                     "n_frames=2.*single frames"),
        "no clip_config": (lambda: ClipReward(ClipRewardConfig(camera="front", goal=GOAL), FEATURES, {}),
                           "build_clip_reward"),
        "stages": (lambda: ClipReward(base, FEATURES, {}, stage_names=["a", "b"]), "no stages"),
    }


def test_bad_inputs_each_give_one_clear_error(clip_dir, tmp_path):
    for name, (call, match) in _bad_inputs(clip_dir, tmp_path).items():
        with pytest.raises(RobolearnError, match=match):
            call()
        try:
            call()
        except RobolearnError as e:
            assert "\n" not in str(e), name  # one line, as the CLI prints it
