"""`robolearn train reward`: train a stage-aware progress model on an annotated dataset, resumable.

    robolearn train reward --dataset data/pick_place --out runs/reward/pick_place

The dataset needs stage annotations (recorded by `robolearn collect`, written with `robolearn
annotate --file`, or by a VLM). Episodes are split into train and validation sets (seeded); stage
priors come from the training split's successful episodes; all training frames are decoded once
into memory (`EpisodeFrames`). Writes under `out/` what `train bc` writes (`robolearn.training`):
train_config.json, checkpoints/step_NNNNNN and checkpoints/last (the reward-model checkpoint plus
training state), train_log.jsonl, train_summary.json (wall time of the last run) and tb/ with
train/loss (and its terms), train/lr, and on the validation episodes val/voc (Spearman of progress vs
time on successful episodes), val/stage_accuracy and val/progress_mae. Running the same command again
resumes from checkpoints/last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robolearn.data.format import DatasetError, atomic_write_json
from robolearn.errors import ConfigError
from robolearn.training import (
    Optimization,
    SeededBatches,
    append_log,
    prepare_run_dir,
    truncate_log,
)

RESUME_KEYS = ("dataset", "model", "model_options", "batch_size", "lr", "seed", "val_fraction", "episodes", "ema",
               "warmup_steps")


@dataclass
class TrainRewardConfig:
    """What `robolearn train reward` trains."""

    dataset: str = ""
    """dataset directory with stage annotations"""
    model: str = "stage_progress"
    """reward model type (`robolearn.rewards.reward_model_names()`)"""
    model_options: dict[str, Any] = field(default_factory=dict)
    """reward model config fields, e.g. {head: frame_index, n_frames: 3, failure_aware: false}"""
    out: str = ""
    """run directory; empty: runs/reward/<dataset name>"""
    episodes: list[int] = field(default_factory=list)
    """episodes to use (train + validation); empty: all"""
    val_fraction: float = 0.1
    """share of the episodes held out for validation (0: none)"""
    steps: int = 2000
    """optimizer steps"""
    batch_size: int = 128
    """windows per batch"""
    lr: float = 1e-3
    """peak learning rate (AdamW)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    warmup_steps: int = 100
    """linear warm-up steps, then cosine decay to 0"""
    grad_clip: float = 1.0
    """gradient norm clip (0: off)"""
    ema: float = 0.0
    """> 0: save an exponential moving average of the weights with this decay; 0: off"""
    save_every: int = 500
    """steps between checkpoints (and one at the end)"""
    log_every: int = 50
    """steps between logged losses"""
    val_every: int = 500
    """steps between validations (and one at the end)"""
    max_memory_gb: float = 8.0
    """refuse to load more frames than this into memory"""
    seed: int = 0
    """seed of the split, the weights and the batch order"""
    device: str = "auto"
    """cuda when present, else cpu; or name one"""
    progress: bool = True
    """show a progress bar"""

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("train reward: name the dataset, e.g. --dataset data/pick_place")
        for name in ("steps", "batch_size", "save_every", "log_every", "val_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train reward: {name}={getattr(self, name)} must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"train reward: val_fraction={self.val_fraction} must be in [0, 1)")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train reward: ema={self.ema} must be in [0, 1)")


@dataclass
class LabelledFrames:
    """An `EpisodeFrames` table plus the per-row labels of its frames."""

    table: Any
    labels: dict[str, np.ndarray]
    success: np.ndarray
    """(episodes,) success label of each episode held (False where unlabelled)"""


def split_episodes(episodes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) episode indices: a seeded shuffle, at least one training episode."""
    eps = np.asarray(episodes, np.int64)
    n_val = int(round(len(eps) * val_fraction))
    n_val = min(n_val, len(eps) - 1)
    perm = np.random.default_rng([seed, 17]).permutation(eps)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def annotated(reader, episodes: np.ndarray, where: str) -> None:
    """Raise DatasetError unless the dataset has stages and every episode of `episodes` is annotated."""
    names = reader.meta.stage_names
    if not names:
        raise DatasetError(f"{where}: the dataset has no stage annotations; record it with `robolearn collect` "
                           "(a task's stages), add them with `robolearn annotate --dataset DIR --file stages.json`, "
                           "or have a VLM write them")
    missing = [int(e) for e in episodes if reader.meta.stages(int(e)) is None]
    if missing:
        raise DatasetError(f"{where}: episodes {missing[:10]}{' ...' if len(missing) > 10 else ''} have no stage "
                           "annotation; annotate them (`robolearn annotate`) or leave them out with episodes=[...]")


def stage_stats(reader, episodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from robolearn.rewards.labels import stage_statistics

    anns = [(reader.meta.stages(int(e)), int(reader.lengths[e]), reader.meta.success(int(e))) for e in episodes]
    return stage_statistics(anns, reader.meta.stage_names)


def labelled_frames(reader, model, episodes: np.ndarray, priors: np.ndarray, mean_frames: np.ndarray,
                    failure_aware: bool, max_memory_gb: float, progress: bool = False) -> LabelledFrames:
    """Decode `episodes` into memory and label every frame (`robolearn.rewards.labels`)."""
    from robolearn.rewards.frames import EpisodeFrames
    from robolearn.rewards.labels import dataset_episode_labels

    table = EpisodeFrames(reader, model.config.obs_keys, episodes, max_memory_gb, progress)
    parts: dict[str, list[np.ndarray]] = {"stage": [], "tau": [], "progress": [], "time": []}
    success = []
    for ep in episodes:
        lab = dataset_episode_labels(reader, ep, priors, mean_frames, failure_aware)
        for k in parts:
            parts[k].append(getattr(lab, k))
        success.append(bool(reader.meta.success(int(ep))))
    labels = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    return LabelledFrames(table, labels, np.asarray(success, bool))


def evaluate(model, data: LabelledFrames, device) -> dict[str, float]:
    """Validation figures of a model on labelled episodes (see `robolearn.rewards.metrics`)."""
    from robolearn.inference.reward import score_episodes
    from robolearn.rewards.metrics import progress_metrics

    was_training = model.training
    scores = score_episodes(model, data.table, device)
    model.train(was_training)
    truth = [{k: v[data.table.starts[i]:data.table.starts[i] + data.table.lengths[i]] for k, v in data.labels.items()}
             for i in range(len(data.table.lengths))]
    return progress_metrics(scores, truth, data.success)


def run(cfg: TrainRewardConfig) -> Path:
    """Train (or resume) and return the run directory."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.data.dataset import DatasetReader
    from robolearn.inference.engine import pick_device
    from robolearn.rewards import make_reward_model

    cfg.validate()
    reader = DatasetReader(cfg.dataset)
    out = Path(cfg.out or f"runs/reward/{Path(cfg.dataset).resolve().name}")
    episodes = np.asarray(cfg.episodes or range(reader.num_episodes), np.int64)
    bad = [int(e) for e in episodes if not 0 <= e < reader.num_episodes]
    if bad:
        raise DatasetError(f"{cfg.dataset}: episodes {bad} do not exist (0..{reader.num_episodes - 1})")
    if len(episodes) < 1:
        raise DatasetError(f"{cfg.dataset}: no episodes to train on")
    annotated(reader, episodes, cfg.dataset)
    if reader.meta.stats is None:
        raise DatasetError(f"{cfg.dataset}: no meta/stats.json; normalization needs the dataset statistics")
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction, cfg.seed)
    priors, mean_frames = stage_stats(reader, train_eps)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = make_reward_model(cfg.model, reader.features, reader.meta.stats, cfg.model_options,
                              stage_names=reader.meta.stage_names, stage_priors=priors.tolist())
    model.metadata = {"dataset": str(Path(cfg.dataset).resolve()), "env": reader.meta.robolearn.get("env"),
                      "task": reader.meta.task(0) if reader.num_episodes else "",
                      "train_episodes": train_eps.tolist(), "val_episodes": val_eps.tolist(),
                      "stage_mean_frames": mean_frames.tolist()}
    failure_aware = bool(getattr(model.config, "failure_aware", True))
    train = labelled_frames(reader, model, train_eps, priors, mean_frames, failure_aware, cfg.max_memory_gb,
                            cfg.progress)
    val = (labelled_frames(reader, model, val_eps, priors, mean_frames, failure_aware, cfg.max_memory_gb)
           if len(val_eps) else None)
    saved = config_to_dict(cfg)
    saved.update(dataset=str(Path(cfg.dataset).resolve()), out=str(out))
    state = prepare_run_dir(out, saved, RESUME_KEYS)
    model.to(device)
    optim = Optimization(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps, cfg.grad_clip, cfg.ema)
    start = optim.resume(state, device)
    if start:
        print(f"resuming {out} from step {start}")
    truncate_log(out / "train_log.jsonl", start)
    tb = SummaryWriter(str(out / "tb"), purge_step=start if start else None)
    labels_t = {k: torch.from_numpy(v) for k, v in train.labels.items()}
    mc = model.config
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train reward {mc.head if hasattr(mc, 'head') else cfg.model}",
               unit="step", disable=not cfg.progress)
    model.train()
    step, t0, logs = start, time.perf_counter(), []
    for rows in SeededBatches(len(train.table), cfg.batch_size, cfg.seed, start, cfg.steps):
        rows = np.asarray(rows, np.int64)
        batch = train.table.windows(rows, mc.n_frames, mc.frame_stride, device)
        lab = {k: v[rows].to(device) for k, v in labels_t.items()}
        loss, terms = model.training_loss(batch, lab)
        if not torch.isfinite(loss):
            raise ConfigError(f"train reward: the loss became {loss.item()} at step {step}; lower lr (now {cfg.lr})")
        optim.step(loss)
        step += 1
        logs.append(terms)
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, **{k: float(np.mean([t[k] for t in logs])) for k in logs[0]},
                   "lr": optim.lr}
            logs = []
            for k, v in row.items():
                if k != "step":
                    tb.add_scalar(f"train/{k}", v, step)
            append_log(out / "train_log.jsonl", row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if val is not None and (step % cfg.val_every == 0 or step == cfg.steps):
            figures = evaluate(model, val, device)
            for k, v in figures.items():
                tb.add_scalar(f"val/{k}", v, step)
            append_log(out / "train_log.jsonl", {"step": step, **{f"val_{k}": v for k, v in figures.items()}})
            bar.set_postfix(voc=f"{figures.get('voc', float('nan')):.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            optim.save(out, step)
    bar.close()
    tb.close()
    atomic_write_json(out / "train_summary.json", {"step": step, "resumed_from": start,
                                                   "wall_time_s": time.perf_counter() - t0})
    return out
