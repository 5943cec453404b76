"""Preference labels from a VLM (RL-VLM-F, Wang et al. 2024) and the Bradley-Terry image reward model.

    robolearn vlm preferences --dataset data/pick_place --pairs 500 --out runs/preference/pick_place

1. Pairs. `pairs` pairs of frames of one camera are drawn (seeded) from the dataset's episodes:
   `within_episode` of them both sides from one episode, the rest from two different episodes (the
   ordering inside one demo and the comparison of a failure with a success both carry signal). With
   `pair_kind: clips` a side is `clip_len` frames `clip_stride` steps apart, sent as one filmstrip
   image (left to right in time), so every query carries exactly two images, as RL-VLM-F's do.
2. Labels. RL-VLM-F asks in two stages: an *analysis* query (what each image shows, and which is
   closer to the goal) and a *labelling* query that reads only that analysis and answers 0 (the first
   image is better), 1 (the second) or -1 (no difference / unsure). `query: two_stage` does exactly
   that (two requests per pair). The default `query: single` folds both into one request whose JSON
   answer is {"analysis": str, "preferred": 0 | 1 | -1}: the model still writes its comparison before
   committing to a label (the analysis key comes first), at half the requests and one image upload.
   Pairs labelled -1 are kept in the file and dropped from training. Answers go to `labels.jsonl` in
   the run directory one line per pair as they arrive (flushed), so a crash loses nothing and a rerun
   asks only the pairs not yet in the file; a pair whose answer stays malformed after the client's
   re-ask is left out and asked again on the next run.
3. Model. `PreferenceReward` scores one camera frame: the progress model's `CameraEncoder` and an MLP
   -> a scalar r(o). Training minimizes the Bradley-Terry cross-entropy on the labelled pairs,
   P(A > B) = sigmoid(R(A) - R(B)) with R the sum of r over a side's frames (Christiano et al. 2017's
   segment model; one frame for frame pairs). A share `val_fraction` of the labelled pairs is held out
   and the share of them the reward orders as the VLM did is reported (`accuracy`).
4. Scale. Bradley-Terry fixes rewards only up to an added constant, and its scale is whatever the
   logits grew to. Each checkpoint therefore stores the mean and std of r over every frame of the
   labelled episodes, and the model's "reward" output is the standardized (r - mean) / std (the raw r
   stays available as "raw_reward"): zero mean and unit spread over the data, a sane scale for RL.
   It has no progress output, so `RewardWrapper` uses it with shaping `mode: progress`.

The run directory holds labels_config.json (what the labels were made with; a rerun that differs is
refused), labels.jsonl, train_config.json, checkpoints/step_NNNNNN and checkpoints/last (a reward-model
checkpoint plus training state: rerunning resumes; changed labels or training options retrain from
step 0), train_log.jsonl, tb/ (train/loss, train/accuracy, train/lr, val/loss, val/accuracy, val/voc)
and summary.json (what `run` returns). `voc` is the Spearman correlation of the learned reward with
time along the successful episodes (all episodes when the dataset has no success labels): a sanity
figure, near 1 when the reward rises along demonstrations.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robolearn.data.format import DatasetError, Feature, atomic_write_json
from robolearn.errors import ConfigError, UnknownNameError
from robolearn.rewards.base import RewardModel, RewardModelConfig
from robolearn.rewards.progress import CameraEncoder, random_shift
from robolearn.rewards.vlm.client import VLMAnswerError, VLMConfig, VLMError

CAMERA_PREFIX = "observation.images."
LABELS_FILE = "labels.jsonl"
LABEL_KEYS = ("dataset", "camera", "task", "pair_kind", "clip_len", "clip_stride", "query", "model")
"""labels_config.json entries a rerun must repeat: labels made otherwise would be mixed into one file"""


# ---- the reward model ------------------------------------------------------------------------
@dataclass
class PreferenceRewardConfig(RewardModelConfig):
    """A frame reward learned from preferences: the camera it reads and its network."""

    n_frames: int = 1
    """a frame reward: always 1"""
    frame_stride: int = 1
    """unused with one frame; kept at 1"""
    camera: str = ""
    """the camera feature scored, `observation.images.<cam>` (a bare `<cam>` is expanded)"""
    image_pool: int = 2
    """average-pool frames by this factor before the convs (1: full resolution)"""
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """conv channels, each conv 3x3 with stride 2 (the progress model's CameraEncoder)"""
    image_dim: int = 128
    """features per frame"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """hidden layers of the reward MLP (RL-VLM-F / PEBBLE use three of 256)"""
    shift: int = 4
    """random-shift augmentation in training, pixels (0: off)"""
    dropout: float = 0.0
    """dropout in the reward MLP (training only)"""

    def validate(self) -> None:
        super().validate()
        if self.n_frames != 1:
            raise ConfigError(f"preference reward: n_frames={self.n_frames}; it scores single frames, set n_frames=1")
        if not self.camera:
            raise ConfigError("preference reward: name the camera it reads, e.g. camera=front")
        if self.image_pool < 1 or not self.channels or min(self.channels) < 1 or self.image_dim < 1:
            raise ConfigError("preference reward: image_pool and image_dim must be >= 1 and channels a non-empty "
                              "list of sizes")
        if self.shift < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("preference reward: shift must be >= 0 and dropout in [0, 1)")

    @property
    def camera_key(self) -> str:
        return self.camera if self.camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + self.camera


class PreferenceReward(RewardModel):
    """Bradley-Terry reward of one camera frame, learned from preference labels (see the module docstring)."""

    name = "preference"
    config_class = PreferenceRewardConfig

    def __init__(self, config: PreferenceRewardConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]],
                 stage_names: list[str] | None = None):
        config.validate()
        cam = config.camera_key
        if cam not in features or not features[cam].is_video:
            cams = [k.removeprefix(CAMERA_PREFIX) for k, f in features.items() if f.is_video]
            raise UnknownNameError(f"preference reward: camera {config.camera!r} is not a camera of the features; "
                                   f"cameras: {', '.join(cams) or '(none)'}")
        if config.obs_keys and list(config.obs_keys) != [cam]:
            raise ConfigError(f"preference reward: obs_keys {config.obs_keys} must be [{cam!r}] (it reads one camera)")
        if stage_names:
            raise ConfigError("preference reward: it has no stages; pass no stage_names")
        config.obs_keys = [cam]
        super().__init__(config, features, stats or {})
        self.camera_key = cam
        self.encoder = CameraEncoder(features[cam].shape[:2], config.image_pool, config.channels, config.image_dim)
        layers: list[nn.Module] = []
        d = config.image_dim
        for h in config.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True), nn.Dropout(config.dropout)]
            d = h
        self.mlp = nn.Sequential(*layers, nn.Linear(d, 1))
        # standardization of the output (set by `set_normalization` from the training data's frames)
        self.register_buffer("reward_mean", torch.zeros(1))
        self.register_buffer("reward_std", torch.ones(1))

    def encode_frames(self, frames: dict[str, Tensor]) -> Tensor:
        """frames[camera] (N, 3, H, W) float in [0, 1] -> (N, image_dim)."""
        x = frames[self.camera_key]
        if self.training and self.config.shift:
            x = random_shift(x, self.config.shift)
        return self.encoder(x)

    def head(self, emb: Tensor) -> dict[str, Tensor]:
        """emb (B, 1, E) -> {"reward": (B,) standardized reward, "raw_reward": (B,) the Bradley-Terry logit r}."""
        raw = self.mlp(emb[:, -1]).squeeze(-1)
        return {"reward": (raw - self.reward_mean) / self.reward_std, "raw_reward": raw}

    def raw_rewards(self, frames: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (N,) raw rewards r."""
        return self.mlp(self.encode_frames({self.camera_key: frames})).squeeze(-1)

    def training_loss(self, batch: dict[str, Tensor], labels: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Bradley-Terry cross-entropy on pairs of segments.

        batch[camera]: (B, 2, L, 3, H, W) in [0, 1], the two sides' L frames each (L = 1 for frame pairs);
        labels["preferred"]: (B,) float, 1 where the second side is preferred, 0 where the first is
        (soft values in between are allowed). P(second > first) = sigmoid(R_1 - R_0), R_s = sum_l r(frame)."""
        x = batch[self.camera_key]
        if x.ndim != 6 or x.shape[1] != 2:
            raise ConfigError(f"preference reward: training batch {self.camera_key!r} has shape {tuple(x.shape)}; "
                              "expected (B, 2, L, 3, H, W): two sides of L frames per pair")
        b, _, n = x.shape[:3]
        ret = self.raw_rewards(x.flatten(0, 2)).view(b, 2, n).sum(dim=2)
        logit = ret[:, 1] - ret[:, 0]
        y = labels["preferred"].to(logit.dtype)
        loss = F.binary_cross_entropy_with_logits(logit, y)
        acc = ((logit > 0) == (y > 0.5)).float().mean()
        return loss, {"loss": loss.item(), "accuracy": acc.item()}

    @torch.no_grad()
    def set_normalization(self, raw: np.ndarray) -> None:
        """Standardize the output by the mean and std of raw rewards `raw` (N,) (the data's frames)."""
        raw = np.asarray(raw, np.float64)
        if raw.size == 0 or not np.isfinite(raw).all():
            raise ConfigError("preference reward: normalization needs finite raw rewards of at least one frame")
        self.reward_mean.fill_(float(raw.mean()))
        self.reward_std.fill_(max(float(raw.std()), 1e-6))


# ---- configs ---------------------------------------------------------------------------------
@dataclass
class PreferenceTrainConfig:
    """How the reward model is trained on the labelled pairs."""

    steps: int = 2000
    """optimizer steps (a rerun with more continues from checkpoints/last)"""
    batch_size: int = 64
    """pairs per batch"""
    lr: float = 3e-4
    """peak learning rate (AdamW; RL-VLM-F / PEBBLE's reward learning rate)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup_steps: int = 100
    """linear warm-up steps, then cosine decay to 0"""
    grad_clip: float = 1.0
    """gradient norm clip (0: off)"""
    val_fraction: float = 0.1
    """share of the labelled pairs held out to measure label accuracy (0: none)"""
    log_every: int = 50
    """steps between logged losses"""
    save_every: int = 500
    """steps between checkpoints and validations (and one at the end)"""
    device: str = "auto"
    """cuda when present, else cpu; or name one"""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preferences: train.{name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"preferences: train.val_fraction={self.val_fraction} must be in [0, 1)")
        if not self.lr > 0:
            raise ConfigError(f"preferences: train.lr={self.lr} must be positive")


@dataclass
class PreferenceConfig:
    """What `robolearn vlm preferences` labels and trains."""

    dataset: str = ""
    """dataset directory whose camera frames are compared"""
    camera: str = ""
    """camera to compare (`front` or `observation.images.front`); empty: the dataset's first camera"""
    task: str = ""
    """the goal as the VLM reads it; empty: the dataset's task text"""
    episodes: list[int] = field(default_factory=list)
    """episodes to draw pairs from; empty: all"""
    pairs: int = 500
    """pairs to label (a rerun with more asks only the new ones)"""
    pair_kind: Literal["frames", "clips"] = "frames"
    """frames: one frame per side (RL-VLM-F); clips: clip_len frames per side, sent as a filmstrip image"""
    clip_len: int = 4
    """frames per side with pair_kind=clips"""
    clip_stride: int = 5
    """control steps between the frames of a clip"""
    within_episode: float = 0.5
    """share of pairs whose two sides come from the same episode (the rest: two different episodes)"""
    query: Literal["single", "two_stage"] = "single"
    """single: one request answering {analysis, preferred}; two_stage: RL-VLM-F's analysis then label queries"""
    seed: int = 0
    """seed of the pairs, the held-out split, the weights and the batch order"""
    out: str = ""
    """run directory; empty: runs/preference/<dataset name>"""
    model_options: dict[str, Any] = field(default_factory=dict)
    """PreferenceRewardConfig fields, e.g. {channels: [16, 32], hidden: [128], shift: 2}"""
    train: PreferenceTrainConfig = field(default_factory=PreferenceTrainConfig)
    """training of the reward model"""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """the VLM endpoint"""
    max_memory_gb: float = 8.0
    """refuse to decode more frames than this into memory"""
    progress: bool = True
    """show progress bars"""

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("preferences: name the dataset, e.g. --dataset data/pick_place")
        if self.pairs < 1:
            raise ConfigError(f"preferences: pairs={self.pairs} must be at least 1")
        if self.pair_kind not in ("frames", "clips"):
            raise ConfigError(f"preferences: pair_kind={self.pair_kind!r} must be frames or clips")
        if self.query not in ("single", "two_stage"):
            raise ConfigError(f"preferences: query={self.query!r} must be single or two_stage")
        if self.clip_len < 1 or self.clip_stride < 1:
            raise ConfigError(f"preferences: clip_len={self.clip_len} and clip_stride={self.clip_stride} must be >= 1")
        if not 0 <= self.within_episode <= 1:
            raise ConfigError(f"preferences: within_episode={self.within_episode} must be in [0, 1]")
        self.train.validate()
        self.vlm.validate()

    @property
    def side_len(self) -> int:
        """frames per side of a pair"""
        return self.clip_len if self.pair_kind == "clips" else 1

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/preference/{Path(self.dataset).resolve().name}")


# ---- pairs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """Two sides to compare: frames of episode_a against frames of episode_b (in time order)."""

    episode_a: int
    frames_a: tuple[int, ...]
    episode_b: int
    frames_b: tuple[int, ...]

    @property
    def key(self) -> str:
        return (f"{self.episode_a}:{','.join(map(str, self.frames_a))}|"
                f"{self.episode_b}:{','.join(map(str, self.frames_b))}")


def sample_pairs(episodes: np.ndarray, lengths: np.ndarray, n: int, side_len: int, stride: int,
                 within_episode: float, seed: int) -> list[Pair]:
    """`n` distinct pairs (fewer when the episodes hold fewer), drawn one by one from one seeded stream,
    so the first k pairs of a larger `n` are the pairs of `n = k` (a rerun with more pairs extends).
    A side is `side_len` frames `stride` apart ending at a uniformly drawn frame (clamped at the
    episode's start); episodes are drawn in proportion to their length; which side comes first is random."""
    episodes, lengths = np.asarray(episodes, np.int64), np.asarray(lengths, np.int64)
    rng = np.random.default_rng([seed, 23])
    weights = lengths / lengths.sum()
    span = (side_len - 1) * stride
    seen: set[frozenset] = set()
    out: list[Pair] = []

    def side(i: int) -> tuple[int, ...]:
        t_len = int(lengths[i])
        end = int(rng.integers(min(span, t_len - 1), t_len))
        return tuple(max(end - k * stride, 0) for k in range(side_len - 1, -1, -1))

    for _ in range(50 * n):
        if len(out) == n:
            break
        i = int(rng.choice(len(episodes), p=weights))
        within = len(episodes) < 2 or rng.random() < within_episode
        if within:
            j = i
        else:
            j = int(rng.choice(len(episodes) - 1, p=np.delete(weights, i) / np.delete(weights, i).sum()))
            j += j >= i
        a, b = side(i), side(j)
        if i == j and a == b:
            continue
        if rng.random() < 0.5:
            i, j, a, b = j, i, b, a
        pair = Pair(int(episodes[i]), a, int(episodes[j]), b)
        sides = frozenset([(pair.episode_a, a), (pair.episode_b, b)])
        if sides not in seen:
            seen.add(sides)
            out.append(pair)
    return out


# ---- data --------------------------------------------------------------------------------------
@dataclass
class _Data:
    """The dataset, the camera, the goal text and the decoded frames of the chosen episodes."""

    reader: Any
    camera: str
    task: str
    episodes: np.ndarray
    table: Any
    """robolearn.rewards.frames.EpisodeFrames of the camera over `episodes`"""

    def rows(self, episode: int, frames: tuple[int, ...] | list[int]) -> np.ndarray:
        i = int(np.searchsorted(self.episodes, episode))
        return self.table.starts[i] + np.asarray(frames, np.int64)


def load_data(cfg: PreferenceConfig) -> _Data:
    """Open the dataset, resolve the camera and the goal text, decode the camera's frames."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.rewards.frames import EpisodeFrames

    reader = DatasetReader(cfg.dataset)
    cams = reader.video_keys
    if not cams:
        raise DatasetError(f"{reader.root} has no camera; preferences compare camera frames (record the dataset "
                           "with cameras=[front])")
    if cfg.camera:
        cam = cfg.camera if cfg.camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + cfg.camera
        if cam not in cams:
            raise UnknownNameError(f"{reader.root} has no camera {cfg.camera!r}; cameras: "
                                   f"{', '.join(k.removeprefix(CAMERA_PREFIX) for k in cams)}")
    else:
        cam = cams[0]
    episodes = np.unique(np.asarray(cfg.episodes or range(reader.num_episodes), np.int64))
    bad = [int(e) for e in episodes if not 0 <= e < reader.num_episodes]
    if bad:
        raise DatasetError(f"{reader.root}: episodes {bad} do not exist (0..{reader.num_episodes - 1})")
    if len(episodes) < 1:
        raise DatasetError(f"{reader.root}: no episodes to draw pairs from")
    task = cfg.task.strip()
    if not task:
        texts = sorted({reader.meta.task(int(e)) for e in episodes})
        if len(texts) > 1:
            raise ConfigError(f"{reader.root}: the episodes have {len(texts)} different tasks "
                              f"({'; '.join(texts[:3])}); pass the goal with task='...' or choose episodes of one task")
        task = texts[0].strip()
        if not task:
            raise ConfigError(f"{reader.root} has no task text; describe the goal with task='...'")
    table = EpisodeFrames(reader, [cam], episodes, cfg.max_memory_gb, cfg.progress)
    return _Data(reader, cam, task, episodes, table)


def read_labels(path: Path) -> dict[str, dict[str, Any]]:
    """labels.jsonl -> {pair key: row}. A last line cut off by a crash is removed from the file (its
    pair is asked again); any other unreadable line is an error naming it."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):  # a write cut off mid-line: drop the fragment before appending
        keep = data[:data.rfind(b"\n") + 1]
        path.write_bytes(keep)
        data = keep
    rows: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[str(row["key"])] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DatasetError(f"{path}:{n}: not a label row ({line[:80]!r}); delete the line to ask that pair "
                               "again") from None
    return rows


def _check_label_config(out: Path, want: dict[str, Any]) -> None:
    path = out / "labels_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [k for k in LABEL_KEYS if old.get(k) != want.get(k)]
        if diff and (out / LABELS_FILE).is_file():
            raise ConfigError(f"{out} holds labels made with different {', '.join(diff)} "
                              f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); choose another --out or delete "
                              f"{out / LABELS_FILE}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, want)


# ---- asking the VLM ----------------------------------------------------------------------------
ANALYSIS_QUESTIONS = """1. What is shown in {first}?
2. What is shown in {second}?
3. The goal is: {task}. Is there any difference between {first} and {second} in terms of achieving the goal?"""

CLIP_NOTE = ("Each image is a filmstrip of {n} consecutive camera frames of the robot, in time order from left to "
             "right; judge the segment as a whole. ")

SINGLE_PROMPT = """Consider the following two images of a robot: the first image is Image 1, the second is Image 2.
{clip_note}Answer these questions in "analysis":
{questions}
Then give "preferred": 0 if the goal is better achieved in Image 1, 1 if it is better achieved in Image 2, \
-1 if there is no difference or you are unsure."""

ANALYSIS_PROMPT = """Consider the following two images of a robot: the first image is Image 1, the second is Image 2.
{clip_note}{questions}"""

LABEL_PROMPT = """Based on the text below to the questions:
{questions}
{analysis}

Is the goal better achieved in Image 1 or Image 2? Give "preferred": 0 if the goal is better achieved in \
Image 1, or 1 if it is better achieved in Image 2; -1 if the text is unsure or there is no difference."""

PREFERRED = {"type": "integer", "enum": [0, 1, -1]}
SINGLE_SCHEMA = {"type": "object", "properties": {"analysis": {"type": "string"}, "preferred": PREFERRED},
                 "required": ["analysis", "preferred"]}
LABEL_SCHEMA = {"type": "object", "properties": {"preferred": PREFERRED}, "required": ["preferred"]}


def side_image(data: _Data, episode: int, frames: tuple[int, ...]) -> np.ndarray:
    """One side of a pair as one (H, L * W, 3) uint8 image: its frames left to right."""
    imgs = data.table.data[data.camera][data.rows(episode, frames)]
    return np.ascontiguousarray(np.concatenate(list(imgs), axis=1))


def ask_preference(client, data: _Data, pair: Pair, query: str = "single") -> dict[str, Any]:
    """{"preferred": 0 | 1 | -1, "analysis": str} for one pair: RL-VLM-F's prompts, in one request
    (query=single) or its two stages (query=two_stage)."""
    images = [side_image(data, pair.episode_a, pair.frames_a), side_image(data, pair.episode_b, pair.frames_b)]
    note = CLIP_NOTE.format(n=len(pair.frames_a)) if len(pair.frames_a) > 1 else ""
    questions = ANALYSIS_QUESTIONS.format(first="Image 1", second="Image 2", task=data.task)
    if query == "single":
        ans = client.ask_json(SINGLE_PROMPT.format(clip_note=note, questions=questions), images, schema=SINGLE_SCHEMA)
        return {"preferred": int(ans["preferred"]), "analysis": str(ans["analysis"])}
    analysis = client.ask(ANALYSIS_PROMPT.format(clip_note=note, questions=questions), images)
    ans = client.ask_json(LABEL_PROMPT.format(questions=questions, analysis=analysis.strip()), schema=LABEL_SCHEMA)
    return {"preferred": int(ans["preferred"]), "analysis": analysis.strip()}


def label_pairs(cfg: PreferenceConfig, data: _Data | None = None, client=None) -> dict[str, Any]:
    """Ask the VLM about every sampled pair not yet in `labels.jsonl` and append the answers as they come.

    Returns counts over the `cfg.pairs` sampled pairs: pairs, asked (this run), labelled, first / second
    (preferred side), dropped (-1: no difference), failed (answers malformed twice, asked again next run)."""
    from tqdm import tqdm

    from robolearn.rewards.vlm.client import connect

    cfg.validate()
    data = data or load_data(cfg)
    out = cfg.run_dir
    _check_label_config(out, _label_identity(cfg, data))
    path = out / LABELS_FILE
    done = read_labels(path)
    pairs = sample_pairs(data.episodes, data.table.lengths, cfg.pairs, cfg.side_len, cfg.clip_stride,
                         cfg.within_episode, cfg.seed)
    if len(pairs) < cfg.pairs:
        print(f"preferences: the episodes hold only {len(pairs)} distinct pairs of this kind (asked for {cfg.pairs})")
    todo = [p for p in pairs if p.key not in done]
    failed: list[str] = []
    if todo:
        client = client or connect(cfg.vlm)
        lock, stop = threading.Lock(), threading.Event()
        bar = tqdm(total=len(todo), desc="preference labels", unit="pair", disable=not cfg.progress)
        with open(path, "a") as f:
            def one(pair: Pair) -> None:
                if stop.is_set():
                    return
                try:
                    ans = ask_preference(client, data, pair, cfg.query)
                except VLMAnswerError as e:
                    with lock:
                        failed.append(f"{pair.key}: {e}")
                        bar.update(1)
                    return
                except VLMError:
                    stop.set()  # the endpoint is unusable: the other workers return at once
                    raise
                row = {"key": pair.key, "episode_a": pair.episode_a, "frames_a": list(pair.frames_a),
                       "episode_b": pair.episode_b, "frames_b": list(pair.frames_b), **ans, "model": cfg.vlm.model}
                with lock:
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    done[pair.key] = row
                    bar.update(1)

            try:
                client.map(one, todo)
            finally:
                bar.close()
        if failed:
            print(f"preferences: {len(failed)} pairs got no usable answer (asked again on the next run); first: "
                  f"{failed[0]}")
    prefs = [done[p.key]["preferred"] for p in pairs if p.key in done]
    return {"pairs": len(pairs), "asked": len(todo), "labelled": len(prefs), "first": prefs.count(0),
            "second": prefs.count(1), "dropped": prefs.count(-1), "failed": len(failed)}


def _label_identity(cfg: PreferenceConfig, data: _Data) -> dict[str, Any]:
    return {"dataset": str(Path(cfg.dataset).resolve()), "camera": data.camera, "task": data.task,
            "pair_kind": cfg.pair_kind, "clip_len": cfg.side_len,
            "clip_stride": cfg.clip_stride if cfg.pair_kind == "clips" else None, "query": cfg.query,
            "model": cfg.vlm.model}


# ---- training ----------------------------------------------------------------------------------
@dataclass
class PairSet:
    """Labelled pairs as table rows: rows (P, 2, L) int64, preferred (P,) float32 (1: the second side)."""

    rows: np.ndarray
    preferred: np.ndarray

    def __len__(self) -> int:
        return len(self.preferred)

    def batch(self, idx: np.ndarray, data: _Data, device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """({camera: (B, 2, L, 3, H, W)}, {"preferred": (B,)}) of pairs `idx`."""
        frames = data.table.frames(self.rows[idx], device)
        return frames, {"preferred": torch.from_numpy(self.preferred[idx]).to(device)}


def labelled_pairs(cfg: PreferenceConfig, data: _Data) -> tuple[PairSet, PairSet, str]:
    """(train, held-out) pairs with a 0 / 1 label among the sampled ones, and a digest of them."""
    done = read_labels(cfg.run_dir / LABELS_FILE)
    pairs = sample_pairs(data.episodes, data.table.lengths, cfg.pairs, cfg.side_len, cfg.clip_stride,
                         cfg.within_episode, cfg.seed)
    use = [(p, int(done[p.key]["preferred"])) for p in pairs if p.key in done and done[p.key]["preferred"] in (0, 1)]
    if len(use) < 2:
        raise ConfigError(f"preferences: {len(use)} usable labels in {cfg.run_dir / LABELS_FILE} (labels of -1 are "
                          "dropped); label more pairs (--pairs) or check the VLM's answers there")
    rows = np.stack([np.stack([data.rows(p.episode_a, p.frames_a), data.rows(p.episode_b, p.frames_b)])
                     for p, _ in use])
    pref = np.asarray([y for _, y in use], np.float32)
    digest = hashlib.sha256(json.dumps([[p.key, y] for p, y in use]).encode()).hexdigest()[:16]
    perm = np.random.default_rng([cfg.seed, 29]).permutation(len(use))
    n_val = min(int(round(len(use) * cfg.train.val_fraction)), len(use) - 1)
    val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return PairSet(rows[train], pref[train]), PairSet(rows[val], pref[val]), digest


@torch.no_grad()
def frame_rewards(model: PreferenceReward, data: _Data, device, batch_size: int = 512) -> np.ndarray:
    """Raw rewards r of every frame of the table, (N,), in eval mode."""
    was = model.training
    model.eval()
    out = []
    for lo in range(0, len(data.table), batch_size):
        x = data.table.frames(np.arange(lo, min(lo + batch_size, len(data.table))), device)[data.camera]
        out.append(model.raw_rewards(x).cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def pair_accuracy(model: PreferenceReward, pairs: PairSet, data: _Data, device,
                  batch_size: int = 256) -> dict[str, float]:
    """Held-out loss and the share of pairs whose sides the reward orders as the labels do (eval mode)."""
    if not len(pairs):
        return {}
    was = model.training
    model.eval()
    n, loss, hits = len(pairs), 0.0, 0.0
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        batch, lab = pairs.batch(idx, data, device)
        batch_loss, terms = model.training_loss(batch, lab)
        loss += batch_loss.item() * len(idx)
        hits += terms["accuracy"] * len(idx)
    model.train(was)
    return {"loss": loss / n, "accuracy": hits / n}


def reward_voc(model: PreferenceReward, data: _Data, device) -> tuple[float, list[int]]:
    """Spearman correlation of the reward with time, averaged over the successful episodes (all
    episodes when none is labelled), and those episodes."""
    from robolearn.inference.reward import score_episodes
    from robolearn.rewards.metrics import voc

    was = model.training
    scores = score_episodes(model, data.table, device)
    model.train(was)
    success = [data.reader.meta.success(int(e)) for e in data.episodes]
    idx = [i for i, s in enumerate(success) if s] if any(s is not None for s in success) else list(range(len(success)))
    return voc([scores[i]["reward"] for i in idx]), [int(data.episodes[i]) for i in idx]


def train_preference(cfg: PreferenceConfig, data: _Data | None = None) -> dict[str, Any]:
    """Train (or resume) the reward model on the labels in the run directory.

    Returns {"checkpoint", "train_pairs", "val_pairs", "accuracy" (held-out label accuracy, nan without
    a held-out split), "val_loss", "train_accuracy", "voc", "voc_episodes"}."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.inference.engine import pick_device
    from robolearn.policies.base import build_config
    from robolearn.training import Optimization, SeededBatches, append_log, prepare_run_dir, truncate_log

    cfg.validate()
    data = data or load_data(cfg)
    out, tc = cfg.run_dir, cfg.train
    train, val, digest = labelled_pairs(cfg, data)
    options = {"camera": data.camera, **cfg.model_options}
    identity = {"dataset": str(Path(cfg.dataset).resolve()), "labels": digest, "model_options": options,
                "seed": cfg.seed, **{k: v for k, v in config_to_dict(tc).items()
                                     if k not in ("steps", "log_every", "save_every", "device")}}
    _restart_if_changed(out, identity)
    state = prepare_run_dir(out, {**identity, "steps": tc.steps}, tuple(identity))
    device = pick_device(tc.device)
    torch.manual_seed(cfg.seed)
    mcfg = build_config(PreferenceRewardConfig, options, "preferences: model_options")
    model = PreferenceReward(mcfg, data.reader.features, data.reader.meta.stats or {})
    model.metadata = {"dataset": identity["dataset"], "env": data.reader.meta.robolearn.get("env"), "task": data.task,
                      "camera": data.camera, "pair_kind": cfg.pair_kind, "vlm_model": cfg.vlm.model,
                      "train_pairs": len(train), "val_pairs": len(val), "episodes": data.episodes.tolist()}
    model.to(device)
    optim = Optimization(model, tc.lr, tc.weight_decay, tc.warmup_steps, tc.steps, tc.grad_clip, 0.0)
    start = optim.resume(state, device)
    if start:
        print(f"resuming {out} from step {start}")
    truncate_log(out / "train_log.jsonl", start)
    tb = SummaryWriter(str(out / "tb"), purge_step=start if start else None)
    bar = tqdm(total=tc.steps, initial=min(start, tc.steps), desc="train preference reward", unit="step",
               disable=not cfg.progress)
    model.train()
    step, logs, figures = start, [], {}
    for idx in SeededBatches(len(train), tc.batch_size, cfg.seed, start, tc.steps):
        batch, lab = train.batch(np.asarray(idx, np.int64), data, device)
        loss, terms = model.training_loss(batch, lab)
        if not torch.isfinite(loss):
            raise ConfigError(f"preferences: the loss became {loss.item()} at step {step}; lower train.lr "
                              f"(now {tc.lr})")
        optim.step(loss)
        step += 1
        logs.append(terms)
        bar.update(1)
        if step % tc.log_every == 0 or step == tc.steps:
            row = {"step": step, **{k: float(np.mean([t[k] for t in logs])) for k in logs[0]}, "lr": optim.lr}
            logs = []
            for k, v in row.items():
                if k != "step":
                    tb.add_scalar(f"train/{k}", v, step)
            append_log(out / "train_log.jsonl", row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % tc.save_every == 0 or step == tc.steps:
            figures = pair_accuracy(model, val, data, device)
            for k, v in figures.items():
                tb.add_scalar(f"val/{k}", v, step)
            if figures:
                append_log(out / "train_log.jsonl", {"step": step, **{f"val_{k}": v for k, v in figures.items()}})
            model.set_normalization(frame_rewards(model, data, device))
            optim.save(out, step)
    bar.close()
    if not figures:  # nothing left to train: the figures of the checkpoint resumed from
        figures = pair_accuracy(model, val, data, device)
    vo, voc_eps = reward_voc(model, data, device)
    tb.add_scalar("val/voc", vo, step)
    tb.close()
    train_acc = pair_accuracy(model, train, data, device)["accuracy"]
    return {"checkpoint": str(out / "checkpoints" / "last"), "steps": step, "train_pairs": len(train),
            "val_pairs": len(val), "accuracy": figures.get("accuracy", float("nan")),
            "val_loss": figures.get("loss", float("nan")), "train_accuracy": train_acc, "voc": vo,
            "voc_episodes": voc_eps}


def _restart_if_changed(out: Path, identity: dict[str, Any]) -> None:
    """Labels or training options changed since the run's checkpoints were trained: those are stale,
    so training restarts from step 0 (the labels, the expensive part, stay)."""
    path = out / "train_config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = [k for k in identity if old.get(k) != json.loads(json.dumps(identity[k]))]
    if not changed:
        return
    print(f"preferences: {', '.join(changed)} changed since {out} was trained; training again from step 0")
    for name in ("checkpoints", "tb"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("train_config.json", "train_log.jsonl"):
        (out / name).unlink(missing_ok=True)


def run(cfg: PreferenceConfig) -> dict[str, Any]:
    """Label the pairs (resuming), train the reward model (resuming) and write summary.json.

    Returns {"run_dir", "labels": label_pairs' counts, "checkpoint", "accuracy" (held-out label
    accuracy), "voc" (reward vs time on successful episodes), ...train_preference's other figures}."""
    cfg.validate()
    t0 = time.perf_counter()
    data = load_data(cfg)
    counts = label_pairs(cfg, data)
    result = {"run_dir": str(cfg.run_dir), "labels": counts, **train_preference(cfg, data),
              "wall_time_s": time.perf_counter() - t0}
    atomic_write_json(cfg.run_dir / "summary.json", result)
    return result


__all__ = ["Pair", "PreferenceConfig", "PreferenceReward", "PreferenceRewardConfig", "PreferenceTrainConfig",
           "ask_preference", "label_pairs", "load_data", "read_labels", "run", "sample_pairs", "train_preference"]
