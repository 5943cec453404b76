"""Zero-shot CLIP frame reward (VLM-RM, Rocamonde et al. 2023) as a `RewardModel`.

A frame's reward is how close its CLIP image embedding lies to the embedding of a goal prompt, measured
along the direction that separates the goal from a baseline prompt (VLM-RM's goal-baseline
regularization, their eq. 3):

    x = normalize(CLIP_image(frame))                     (D,)
    g, b = normalize(CLIP_text(goal)), normalize(CLIP_text(baseline))
    d = g - b
    P = alpha * d d^T / ||d||^2 + (1 - alpha) * I        (D, D)
    reward = 1 - 0.5 * ||(x - g) P||^2

alpha = 0 gives 1 - 0.5 * ||x - g||^2 = x . g, the plain cosine similarity to the goal; alpha = 1
keeps only the component of x - g along d, so what the goal and the baseline share ("a robot arm",
the table, the lighting) no longer moves the reward. Nothing is trained: `build_clip_reward` reads a
CLIP model from a local directory, embeds the two prompts once and keeps only the vision tower, the
visual projection and three buffers (g, b, P); the checkpoint it saves loads with
`robolearn.rewards.load_reward_model` like any reward model and runs in the batched engine
(`RewardRunner`, `score_episodes`).

Frames are preprocessed as CLIP's own image processor does: (N, 3, H, W) in [0, 1] -> bicubic resize
(antialiased) of the shorter side to the model's image size and a center crop (`resize: center_crop`),
or a resize of the whole frame (`resize: squash`, keeps the edges of a wide camera), then CLIP's
mean/std normalization (read from the model directory's preprocessor config, else OpenAI's constants).

    model = build_clip_reward("models/clip-vit-base-patch32", "a robot arm holding a red cube above the table",
                              "a robot arm", alpha=0.5, camera="front", features=DatasetMeta.load(d).features)
    score_frames(model, frames)               # (N, H, W, 3) uint8 -> (N,)
    clip_reward_curve(model, "data/pick_place")  # does the reward rise along the demos?
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robolearn.data.format import Feature
from robolearn.errors import ConfigError, UnknownNameError
from robolearn.rewards.base import RewardModel, RewardModelConfig
from robolearn.rewards.metrics import spearman

# OpenAI CLIP's image normalization (the values in every openai/clip-vit-* preprocessor_config.json)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHUNK = 256  # frames per vision-tower pass: bounds activation memory when scoring many frames at once
CAMERA_PREFIX = "observation.images."


@dataclass
class ClipRewardConfig(RewardModelConfig):
    """A zero-shot CLIP reward: the prompts, the regularization and the CLIP architecture it runs."""

    n_frames: int = 1
    """a frame reward: always 1"""
    frame_stride: int = 1
    """unused with one frame; kept at 1"""
    camera: str = ""
    """the camera feature scored, `observation.images.<cam>` (a bare `<cam>` is expanded)"""
    goal: str = ""
    """prompt describing the goal state, e.g. "a robot arm holding a red cube above the table\""""
    baseline: str = "a robot arm"
    """prompt describing the scene in general; the reward ignores what it shares with the goal (alpha > 0)"""
    alpha: float = 0.5
    """VLM-RM's baseline regularization in [0, 1]: 0 cosine similarity to the goal, 1 only the baseline->goal axis"""
    resize: Literal["center_crop", "squash"] = "center_crop"
    """center_crop: shorter side to image_size then a center crop (CLIP's processor); squash: whole frame resized"""
    image_size: int = 224
    """CLIP's input resolution (its vision config's image_size)"""
    image_mean: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_MEAN))
    """per-channel mean of CLIP's image normalization"""
    image_std: list[float] = field(default_factory=lambda: list(OPENAI_CLIP_STD))
    """per-channel std of CLIP's image normalization"""
    clip_config: dict[str, Any] = field(default_factory=dict)
    """transformers `CLIPConfig.to_dict()`: rebuilds the architecture without the original model directory"""

    def validate(self) -> None:
        super().validate()
        if self.n_frames != 1:
            raise ConfigError(f"clip reward: n_frames={self.n_frames}; the CLIP reward scores single frames, "
                              "set n_frames=1")
        if not isinstance(self.alpha, int | float) or not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"clip reward: alpha={self.alpha!r} must be in [0, 1] (0: cosine similarity to the "
                              "goal, 1: projection onto the baseline->goal direction)")
        if not isinstance(self.goal, str) or not self.goal.strip():
            raise ConfigError("clip reward: the goal prompt is empty; describe the goal state, e.g. "
                              "--goal 'a robot arm holding a red cube above the table'")
        if not isinstance(self.baseline, str) or not self.baseline.strip():
            raise ConfigError("clip reward: the baseline prompt is empty; describe the scene, e.g. 'a robot arm'")
        if not self.camera:
            raise ConfigError("clip reward: name the camera to score, e.g. camera=front")
        if self.resize not in ("center_crop", "squash"):
            raise ConfigError(f"clip reward: resize={self.resize!r} must be center_crop or squash")
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ConfigError(f"clip reward: image_mean {self.image_mean} and image_std {self.image_std} must be 3 "
                              "numbers each (std > 0)")
        if self.clip_config.get("model_type") != "clip" or "vision_config" not in self.clip_config:
            raise ConfigError("clip reward: clip_config is not a CLIPConfig dict; build the model with "
                              "robolearn.rewards.vlm.clip.build_clip_reward from a local CLIP directory")
        size = self.clip_config["vision_config"].get("image_size")
        if size != self.image_size:
            raise ConfigError(f"clip reward: image_size={self.image_size} but the CLIP vision config says {size}")

    @property
    def camera_key(self) -> str:
        return self.camera if self.camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + self.camera


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("the CLIP reward needs the transformers package: pip install 'transformers>=5'") from None
    return transformers


def _vision_tower(clip_config: dict[str, Any]) -> nn.Module:
    """CLIP's vision tower and visual projection (`vision_model.*`, `visual_projection.weight`, the same
    names as in `CLIPModel`), built from a CLIPConfig dict."""
    tf = _transformers()
    cfg = tf.CLIPConfig.from_dict(clip_config)
    vision = cfg.vision_config
    vision.projection_dim = cfg.projection_dim  # CLIPModel projects to the top-level projection_dim
    return tf.CLIPVisionModelWithProjection(vision)


def projection_matrix(goal: Tensor, baseline: Tensor, alpha: float) -> Tensor:
    """VLM-RM's P = alpha * d d^T / ||d||^2 + (1 - alpha) * I with d = goal - baseline: (D,), (D,) -> (D, D)."""
    d = goal - baseline
    n2 = float(d @ d)
    if n2 < 1e-12:
        raise ConfigError("clip reward: the goal and baseline prompts have the same CLIP embedding; make the goal "
                          "describe what differs from the baseline")
    eye = torch.eye(d.numel(), dtype=d.dtype, device=d.device)
    return alpha * torch.outer(d, d) / n2 + (1.0 - alpha) * eye


class ClipReward(RewardModel):
    """VLM-RM's goal-baseline regularized CLIP reward of one camera frame (see the module docstring)."""

    name = "clip"
    config_class = ClipRewardConfig

    def __init__(self, config: ClipRewardConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]],
                 stage_names: list[str] | None = None, stage_priors: list[float] | None = None):
        config.validate()
        cam = config.camera_key
        cameras = [k for k, f in features.items() if f.is_video]
        if cam not in cameras:
            short = [k.removeprefix(CAMERA_PREFIX) for k in cameras]
            raise UnknownNameError(f"clip reward: camera {config.camera!r} is not a camera of the features; "
                                   f"cameras: {', '.join(short) or '(none)'}")
        if config.obs_keys and list(config.obs_keys) != [cam]:
            raise ConfigError(f"clip reward: obs_keys {config.obs_keys} must be [{cam!r}] (it reads one camera)")
        if stage_names or stage_priors is not None:
            raise ConfigError("clip reward: it has no stages; pass no stage_names or stage_priors")
        config.obs_keys = [cam]
        super().__init__(config, features, stats or {})
        self.camera_key = cam
        self.vision = _vision_tower(config.clip_config)
        dim = int(config.clip_config.get("projection_dim") or self.vision.config.projection_dim)
        self.register_buffer("goal_emb", torch.zeros(dim))
        self.register_buffer("baseline_emb", torch.zeros(dim))
        self.register_buffer("projection", torch.eye(dim))
        self.register_buffer("image_mean", torch.tensor(config.image_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.requires_grad_(False)  # zero-shot: nothing here is trained
        self.eval()

    @property
    def embed_dim(self) -> int:
        return int(self.goal_emb.numel())

    def set_prompts(self, goal_emb: Tensor, baseline_emb: Tensor) -> None:
        """Set g and b ((D,) each, normalized here) and P from the config's alpha."""
        g = F.normalize(goal_emb.detach().float().reshape(-1), dim=0)
        b = F.normalize(baseline_emb.detach().float().reshape(-1), dim=0)
        if g.shape != self.goal_emb.shape or b.shape != self.baseline_emb.shape:
            raise ConfigError(f"clip reward: prompt embeddings of shape {tuple(g.shape)}, {tuple(b.shape)}; the "
                              f"vision tower projects to ({self.embed_dim},)")
        p = projection_matrix(g, b, float(self.config.alpha))
        self.goal_emb.copy_(g)
        self.baseline_emb.copy_(b)
        self.projection.copy_(p)

    # ---- forward -----------------------------------------------------------------------------
    def preprocess(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 3, S, S) normalized as CLIP's image processor does (S = image_size)."""
        s = self.config.image_size
        h, w = x.shape[-2:]
        if self.config.resize == "center_crop":
            scale = s / min(h, w)
            size = (max(s, round(h * scale)), max(s, round(w * scale)))
        else:
            size = (s, s)
        if (h, w) != size:
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
        top, left = (size[0] - s) // 2, (size[1] - s) // 2
        x = x[..., top:top + s, left:left + s]
        return (x - self.image_mean) / self.image_std

    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        """frames[camera] (N, 3, H, W) float in [0, 1] -> (N, D) L2-normalized CLIP image embeddings."""
        x = frames[self.camera_key]
        dtype = self.goal_emb.dtype
        out = []
        for lo in range(0, x.shape[0], CHUNK):
            pix = self.preprocess(x[lo:lo + CHUNK].to(dtype))
            pooled = self.vision.vision_model(pixel_values=pix).pooler_output
            out.append(F.normalize(self.vision.visual_projection(pooled), dim=-1))
        if not out:
            return x.new_zeros((0, self.embed_dim), dtype=dtype)
        return torch.cat(out)

    def head(self, emb: Tensor) -> dict[str, Tensor]:
        """emb (B, 1, D) -> {"reward": (B,) VLM-RM's 1 - 0.5 ||(x - g) P||^2, "goal_cosine": (B,) x . g}."""
        x = emb[:, -1]
        y = (x - self.goal_emb) @ self.projection  # P is symmetric: row vector times P
        return {"reward": 1.0 - 0.5 * (y * y).sum(dim=-1), "goal_cosine": x @ self.goal_emb}

    def training_loss(self, batch: dict[str, Tensor], labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        raise ConfigError("the CLIP reward is zero-shot and is not trained; build it with "
                          "robolearn.rewards.vlm.clip.build_clip_reward (a CLIP model directory, a goal and a "
                          "baseline prompt)")


# ---- building --------------------------------------------------------------------------------
def _not_clip_dir(path: Path, why: str) -> ConfigError:
    return ConfigError(f"{path} is not a directory with a CLIP model (config.json + weights){why}; download one "
                       f"once with `huggingface-cli download openai/clip-vit-base-patch32 --local-dir {path}` and "
                       "pass that path")


def _image_normalization(path: Path) -> tuple[list[float], list[float]]:
    """image_mean, image_std from the model directory's image processor config, else OpenAI's constants."""
    for name, nested in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        f = path / name
        if not f.is_file():
            continue
        try:
            raw = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}: not valid JSON ({e})") from None
        raw = raw.get(nested, {}) if nested and isinstance(raw, dict) else raw
        if isinstance(raw, dict) and "image_mean" in raw and "image_std" in raw:
            mean, std = [float(v) for v in raw["image_mean"]], [float(v) for v in raw["image_std"]]
            if len(mean) != 3 or len(std) != 3:
                raise ConfigError(f"{f}: image_mean {mean} and image_std {std} must be 3 numbers each")
            return mean, std
    return list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


@torch.inference_mode()
def _text_embeddings(clip, tokenizer, prompts: list[str]) -> Tensor:
    """prompts -> (len(prompts), D) normalized CLIP text embeddings."""
    max_len = int(clip.config.text_config.max_position_embeddings)
    tok = tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    out = clip.text_model(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"))
    return F.normalize(clip.text_projection(out.pooler_output).float(), dim=-1)


def build_clip_reward(clip_path: str | Path, goal: str, baseline: str = "a robot arm", alpha: float = 0.5,
                      camera: str = "front", features: dict[str, Feature] | None = None,
                      stats: dict[str, dict[str, Any]] | None = None, device: str | torch.device = "cpu",
                      resize: Literal["center_crop", "squash"] = "center_crop") -> ClipReward:
    """A `ClipReward` from a CLIP model in a local directory (never the hub): the goal and baseline prompts
    embedded once, the vision tower copied. `features`: the dataset's or env's features (the camera's
    (H, W, 3) shape is what the model then accepts), e.g. `DatasetMeta.load(dataset).features`."""
    tf = _transformers()
    path = Path(clip_path).expanduser()
    if not path.is_dir():
        raise _not_clip_dir(path, " (no such directory)")
    if not (path / "config.json").is_file():
        raise _not_clip_dir(path, " (it has no config.json)")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise _not_clip_dir(path, " (its config.json is not a model config)") from None
    if model_type != "clip":
        raise _not_clip_dir(path, f" (its config.json describes a {model_type or 'model of no model_type'!r} "
                                  "model, not 'clip')")
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        raise _not_clip_dir(path, " (it has no tokenizer: tokenizer.json, or vocab.json + merges.txt)")
    if features is None:
        raise ConfigError("clip reward: pass the features the frames come with (e.g. DatasetMeta.load(dataset)"
                          ".features) so that the camera and its shape are known")
    mean, std = _image_normalization(path)
    try:
        clip = tf.CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise _not_clip_dir(path, f" (loading it failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
                            ) from None
    cfg = ClipRewardConfig(camera=camera, goal=goal, baseline=baseline, alpha=alpha, resize=resize,
                           image_size=int(clip.config.vision_config.image_size), image_mean=mean, image_std=std,
                           clip_config=json.loads(json.dumps(clip.config.to_dict())))  # as config.json holds it
    model = ClipReward(cfg, features, stats or {})
    own = model.vision.state_dict()
    state = {k: v for k, v in clip.state_dict().items() if k in own}
    missing = sorted(set(own) - set(state))
    if missing:
        raise ConfigError(f"{path}: the CLIP weights lack {missing[:4]}; the model directory is damaged")
    model.vision.load_state_dict(state, strict=True)
    clip.eval()
    emb = _text_embeddings(clip, tokenizer, [cfg.goal, cfg.baseline])
    model.set_prompts(emb[0], emb[1])
    model.metadata = {"clip_path": str(path.resolve()), "goal": cfg.goal, "baseline": cfg.baseline,
                      "alpha": float(cfg.alpha), "camera": cfg.camera_key, "zero_shot": True}
    return model.to(device).eval()


# ---- scoring ---------------------------------------------------------------------------------
def score_frames(model: ClipReward, frames: np.ndarray | Tensor) -> np.ndarray:
    """Frames of the model's camera, (N, H, W, 3) uint8 (or (N, 3, H, W) float in [0, 1]) -> (N,) rewards,
    in chunks of `CHUNK` frames on the model's device."""
    from robolearn.inference.reward import frames_to_tensors

    device = model.goal_emb.device
    out = []
    with torch.inference_mode():
        for lo in range(0, len(frames), CHUNK):
            x = frames_to_tensors(model, {model.camera_key: frames[lo:lo + CHUNK]}, device)
            out.append(model.head(model.encode_frames(x).unsqueeze(1))["reward"].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def clip_reward_curve(model: ClipReward, dataset_dir: str | Path, episodes: list[int] | None = None,
                      device: str | torch.device = "cpu", max_memory_gb: float = 8.0) -> dict[str, Any]:
    """Score every frame of `episodes` (all when None) of a dataset offline: does the prompt's reward rise
    along successful demos?

    Returns {"episodes": [ep], "reward": [(T,) arrays], "success": [bool | None], "rise": [last tenth's mean
    reward minus first tenth's], "voc": [rank correlation of reward with time]}, one entry per episode."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.inference.reward import score_episodes
    from robolearn.rewards.frames import EpisodeFrames

    reader = DatasetReader(dataset_dir)
    key = model.camera_key
    have = reader.features.get(key)
    if have is None or not have.is_video:
        cams = [k.removeprefix(CAMERA_PREFIX) for k in reader.video_keys]
        raise UnknownNameError(f"{reader.root} has no camera {key.removeprefix(CAMERA_PREFIX)!r}; cameras: "
                               f"{', '.join(cams) or '(none)'}")
    if tuple(have.shape) != tuple(model.features[key].shape):
        raise ConfigError(f"{reader.root}: camera {key!r} is {have.shape}, the CLIP reward was built for "
                          f"{model.features[key].shape}; build it with this dataset's features")
    eps = list(range(reader.num_episodes)) if episodes is None else [int(e) for e in episodes]
    bad = [e for e in eps if not 0 <= e < reader.num_episodes]
    if bad:
        raise ConfigError(f"{reader.root}: episodes {bad} do not exist (it has 0..{reader.num_episodes - 1})")
    table = EpisodeFrames(reader, [key], eps, max_memory_gb)
    scores = score_episodes(model, table, device, batch_size=CHUNK)
    rewards = [s["reward"] for s in scores]
    rise = []
    for r in rewards:
        k = max(1, len(r) // 10)
        rise.append(float(r[-k:].mean() - r[:k].mean()) if len(r) else float("nan"))
    return {"episodes": eps, "reward": rewards, "success": [reader.meta.success(e) for e in eps], "rise": rise,
            "voc": [spearman(r, np.arange(len(r))) for r in rewards]}


__all__ = ["ClipReward", "ClipRewardConfig", "build_clip_reward", "clip_reward_curve", "projection_matrix",
           "score_frames"]


@dataclass
class ClipBuildConfig:
    """What `robolearn vlm clip-reward` builds and shows."""

    clip: str = ""
    """local directory of a CLIP model (config.json, weights, tokenizer), e.g. from `huggingface-cli download`"""
    goal: str = ""
    """goal prompt: what the camera sees when the task is done"""
    baseline: str = "a robot arm"
    """baseline prompt: the scene in general (VLM-RM's regularizer)"""
    alpha: float = 0.5
    """baseline projection strength in [0, 1]"""
    camera: str = "front"
    """camera the reward reads"""
    dataset: str = ""
    """recorded episodes: the features the model is built for, and the episodes its curves are drawn on"""
    episodes: list[int] | None = None
    """episodes to score (empty: all)"""
    out: str = ""
    """run directory (checkpoints/last, curves.json, curves.png); empty: runs/clip_reward/<dataset name>"""
    device: str = "cpu"
    """where CLIP runs (cuda when there is a GPU)"""


def run(cfg: ClipBuildConfig) -> dict[str, Any]:
    """Build the CLIP reward for `cfg.dataset`'s camera, save it, and score the dataset's episodes:
    the reward curves (JSON and PNG) and how well they order time on successful and failed episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robolearn.data.dataset import DatasetMeta
    from robolearn.data.format import atomic_write_json

    if not cfg.dataset:
        raise ConfigError("vlm clip-reward: name the dataset whose camera the reward reads (--dataset DIR)")
    meta = DatasetMeta.load(cfg.dataset, with_stats=True)
    model = build_clip_reward(cfg.clip, cfg.goal, cfg.baseline, cfg.alpha, cfg.camera, meta.features,
                              device=cfg.device)
    model.metadata["dataset"] = str(Path(cfg.dataset).resolve())
    out = Path(cfg.out or f"runs/clip_reward/{Path(cfg.dataset).name}")
    ckpt = model.save(out / "checkpoints" / "last")
    curves = clip_reward_curve(model, cfg.dataset, cfg.episodes, device=cfg.device)
    fig, ax = plt.subplots(figsize=(8, 4))
    for r, ok in zip(curves["reward"], curves["success"]):
        ax.plot(np.arange(len(r)) / meta.fps, r, color="tab:green" if ok else "tab:red", alpha=0.6, lw=1)
    ax.set(xlabel="time (s)", ylabel="CLIP reward", title=f"goal: {cfg.goal!r} (green: success, red: failure)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    voc = np.asarray(curves["voc"], float)
    ok = np.asarray([bool(s) for s in curves["success"]])
    summary = {"checkpoint": str(ckpt), "goal": cfg.goal, "baseline": cfg.baseline, "alpha": cfg.alpha,
               "episodes": len(voc), "voc_success": float(voc[ok].mean()) if ok.any() else None,
               "voc_failure": float(voc[~ok].mean()) if (~ok).any() else None,
               "curves": {"episodes": curves["episodes"], "reward": [np.asarray(r).tolist() for r in curves["reward"]],
                          "success": curves["success"], "voc": voc.tolist()}}
    atomic_write_json(out / "curves.json", summary)
    print(f"CLIP reward saved to {ckpt}; value-order correlation on successful episodes "
          f"{summary['voc_success'] if summary['voc_success'] is None else round(summary['voc_success'], 2)}, "
          f"failed {summary['voc_failure'] if summary['voc_failure'] is None else round(summary['voc_failure'], 2)}"
          f"; curves in {out / 'curves.png'}\n"
          f"use it: robolearn train residual --base BASE --reward {out} shaping.mode=progress")
    return summary
