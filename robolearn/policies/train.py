"""`robolearn train bc`: behaviour cloning of a policy on a dataset, resumable after a kill.

    robolearn train bc --dataset data/lift --policy mlp --out runs/bc/lift_mlp

Writes under `out/`:
  train_config.json            the resolved config (and the dataset it trained on)
  checkpoints/step_NNNNNN/     policy checkpoint (config.json, model.safetensors, stats.json) plus the
                               training state (optimizer, schedule, RNG, data position)
  checkpoints/last             -> the newest complete checkpoint; what `robolearn eval` takes
  train_log.jsonl              step, loss, lr (and eval success) per logged step
  tb/                          TensorBoard scalars: train/loss, train/lr, eval/success_rate
Checkpoints are written to a temporary directory and renamed, so a kill never leaves a half one;
running the same command again resumes from `checkpoints/last`: same data order (the batch order is
a function of the seed and the step), same RNG state, so the loss curve continues as if never cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from robolearn.errors import ConfigError
from robolearn.training import (
    Optimization,
    SeededBatches,
    append_log,
    prepare_run_dir,
    truncate_log,
)

RESUME_KEYS = ("dataset", "policy", "policy_options", "batch_size", "lr", "seed", "ema", "warmup_steps",
               "sample_weighting", "reward", "rabc_kappa", "rabc_delta")
# per-policy defaults, sized for a 2-core CPU (a diffusion step at batch 256 costs ~0.45 s there)
DEFAULT_LR = {"mlp": 1e-3, "diffusion": 3e-4}
DEFAULT_STEPS = {"mlp": 2000, "diffusion": 5000}
DEFAULT_BATCH = {"mlp": 256, "diffusion": 64}
DEFAULT_EMA = {"mlp": 0.0, "diffusion": 0.999}


@dataclass
class TrainBCConfig:
    """What `robolearn train bc` trains."""

    dataset: str = ""
    """dataset directory (LeRobot v3 layout)"""
    policy: Literal["mlp", "diffusion"] = "mlp"
    """policy type"""
    policy_options: dict[str, Any] = field(default_factory=dict)
    """policy config fields, e.g. {horizon: 16, hidden: [256, 256]} (see the policy's config class)"""
    out: str = ""
    """run directory; empty: runs/bc/<dataset name>_<policy>"""
    steps: int = 0
    """optimizer steps; 0: the policy's default (mlp 2000, diffusion 5000)"""
    batch_size: int = 0
    """windows per batch; 0: the policy's default (mlp 256, diffusion 64)"""
    lr: float = 0.0
    """peak learning rate; 0: the policy's default (mlp 1e-3, diffusion 3e-4)"""
    weight_decay: float = 1e-6
    """AdamW weight decay"""
    warmup_steps: int = 200
    """linear warm-up steps, then cosine decay to 0"""
    grad_clip: float = 1.0
    """gradient norm clip (0: off)"""
    ema: float = -1.0
    """> 0: keep an exponential moving average of the weights with this decay and save it; 0: off;
    < 0: the policy's default (mlp off, diffusion 0.999)"""
    num_workers: int = -1
    """DataLoader workers; -1: 2 when the policy reads cameras (video decoding), else 0"""
    save_every: int = 1000
    """steps between checkpoints (and one at the end)"""
    log_every: int = 50
    """steps between logged losses"""
    eval_every: int = 0
    """steps between sim evaluations when the dataset was recorded in sim (0: only at the end)"""
    eval_episodes: int = 20
    """episodes per sim evaluation (0: none)"""
    sample_weighting: Literal["none", "progress"] = "none"
    """progress: RA-BC, weight each sample by the progress the reward model sees over its action chunk"""
    reward: str = ""
    """reward model checkpoint for sample_weighting=progress (`robolearn train reward`)"""
    rabc_kappa: float = 0.01
    """RA-BC: samples whose progress delta exceeds this get weight 1"""
    rabc_delta: int = 0
    """RA-BC: frames ahead the progress delta spans; 0: the policy's chunk (horizon + action_offset)"""
    seed: int = 0
    """seed of the weights, the batch order and the noise"""
    device: str = "auto"
    """cuda when present, else cpu; or name one"""
    progress: bool = True
    """show a progress bar"""

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("train bc: name the dataset, e.g. --dataset data/lift")
        for name in ("save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train bc: {name}={getattr(self, name)} must be at least 1")
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train bc: {name}={getattr(self, name)} must be positive (or 0: the default)")
        if not self.ema < 1:
            raise ConfigError(f"train bc: ema={self.ema} must be below 1")
        if self.sample_weighting not in ("none", "progress"):
            raise ConfigError(f"train bc: sample_weighting={self.sample_weighting!r} must be none or progress")
        if self.sample_weighting == "progress" and not self.reward:
            raise ConfigError("train bc: sample_weighting=progress needs a reward model: --reward DIR "
                              "(train one with `robolearn train reward`)")
        if self.rabc_delta < 0:
            raise ConfigError(f"train bc: rabc_delta={self.rabc_delta} must be >= 0 (0: the policy's chunk)")

    def resolved(self) -> TrainBCConfig:
        """A copy with the policy's defaults filled in for steps, batch_size, lr and ema."""
        from dataclasses import replace

        return replace(self, steps=self.steps or DEFAULT_STEPS.get(self.policy, 5000),
                       batch_size=self.batch_size or DEFAULT_BATCH.get(self.policy, 256),
                       lr=self.lr or DEFAULT_LR.get(self.policy, 1e-3),
                       ema=self.ema if self.ema >= 0 else DEFAULT_EMA.get(self.policy, 0.0))


def run(cfg: TrainBCConfig) -> Path:
    """Train (or resume) and return the run directory."""
    from tqdm import tqdm

    from robolearn.data.dataset import DatasetReader
    from robolearn.data.windows import WindowDataset
    from robolearn.inference.engine import pick_device
    from robolearn.policies import make_policy

    cfg.validate()
    cfg = cfg.resolved()
    reader = DatasetReader(cfg.dataset)
    out = Path(cfg.out or f"runs/bc/{Path(cfg.dataset).resolve().name}_{cfg.policy}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if reader.meta.stats is None:
        raise ConfigError(f"{cfg.dataset}: no meta/stats.json; normalization needs the dataset statistics")
    policy = make_policy(cfg.policy, reader.features, reader.meta.stats, cfg.policy_options)
    policy.metadata = {"dataset": str(Path(cfg.dataset).resolve()), "env": reader.meta.robolearn.get("env"),
                       "task": reader.meta.task(0) if reader.num_episodes else ""}
    pc = policy.config
    ds = WindowDataset(reader, pc.n_obs_steps, pc.horizon, pc.action_offset, obs_keys=pc.obs_keys)
    saved_cfg = _config_dict(cfg, out)
    state = prepare_run_dir(out, saved_cfg, RESUME_KEYS)
    weights = _rabc_weights(cfg, reader, policy, out) if cfg.sample_weighting == "progress" else None
    policy.to(device)
    lr = cfg.lr
    optim = Optimization(policy, lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps, cfg.grad_clip, cfg.ema)
    start = optim.resume(state, device)
    if start:
        print(f"resuming {out} from step {start}")
    truncate_log(out / "train_log.jsonl", start)
    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(str(out / "tb"), purge_step=start if start else None)
    workers = cfg.num_workers if cfg.num_workers >= 0 else (2 if policy.image_keys else 0)
    loader = torch.utils.data.DataLoader(ds, sampler=SeededBatches(len(ds), cfg.batch_size, cfg.seed, start, cfg.steps),
                                         batch_size=None, num_workers=workers, persistent_workers=False,
                                         # its own generator: making the iterator must not draw from the
                                         # global RNG, or a resumed run's dropout and noise would shift
                                         generator=torch.Generator().manual_seed(cfg.seed))
    env_cfg = reader.meta.robolearn.get("env")
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.policy}", unit="step", disable=not cfg.progress)
    policy.train()
    step, t0, losses = start, time.perf_counter(), []
    for batch in loader:
        if weights is not None:
            table, offsets = weights
            rows = offsets[batch["episode_index"].numpy()] + batch["frame_index"].numpy()
            batch["sample_weight"] = torch.from_numpy(table[rows])
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, logs = policy.training_loss(batch)
        if not torch.isfinite(loss):
            raise ConfigError(f"train bc: the loss became {loss.item()} at step {step}; lower lr (now {lr}) or "
                              "check the dataset statistics")
        optim.step(loss)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": float(np.mean(losses)), "lr": optim.lr}
            losses = []
            tb.add_scalar("train/loss", row["loss"], step)
            tb.add_scalar("train/lr", row["lr"], step)
            append_log(out / "train_log.jsonl", row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            ckpt = optim.save(out, step)
            last_eval = step == cfg.steps
            if env_cfg and cfg.eval_episodes and (last_eval or (cfg.eval_every and step % cfg.eval_every == 0)):
                rate = _evaluate(ckpt, env_cfg, cfg, out, step)
                tb.add_scalar("eval/success_rate", rate, step)
                append_log(out / "train_log.jsonl", {"step": step, "eval_success_rate": rate})
                bar.set_postfix(loss=f"{np.mean(losses) if losses else row['loss']:.4f}", success=f"{rate:.2f}")
                policy.train()
    bar.close()
    tb.close()
    saved_cfg["wall_time_s"] = time.perf_counter() - t0
    return out


def _config_dict(cfg: TrainBCConfig, out: Path) -> dict:
    from robolearn.config import config_to_dict

    d = config_to_dict(cfg)
    d["dataset"] = str(Path(cfg.dataset).resolve())
    d["out"] = str(out)
    return d


def _rabc_weights(cfg: TrainBCConfig, reader, policy, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """RA-BC weights of every frame (`robolearn.rewards.rabc`) and each episode's first row; the
    weights go to out/rabc_weights.npz, their summary to out/rabc_weights.json."""
    import io

    from robolearn.data.format import atomic_write_bytes, atomic_write_json
    from robolearn.rewards import check_stages, load_reward_model
    from robolearn.rewards.rabc import progress_deltas, rabc_weights

    model = load_reward_model(cfg.reward)
    if reader.meta.stage_names:
        check_stages(model, reader.meta.stage_names, f"dataset {cfg.dataset}")
    pc = policy.config
    delta = cfg.rabc_delta or max(pc.horizon + pc.action_offset, 1)
    deltas, offsets = progress_deltas(model, reader, delta, cfg.device, progress_bar=cfg.progress)
    w = rabc_weights(deltas, cfg.rabc_kappa)
    buf = io.BytesIO()
    np.savez(buf, weights=w, deltas=deltas.astype(np.float32), episode_offsets=offsets)
    atomic_write_bytes(out / "rabc_weights.npz", buf.getvalue())
    summary = {"rabc_mean_weight": float(w.mean()), "rabc_full_weight_share": float((w >= 1).mean()),
               "rabc_zero_weight_share": float((w <= 0).mean()), "rabc_delta_frames": int(delta)}
    print(f"RA-BC: progress delta over {delta} frames; mean weight {summary['rabc_mean_weight']:.3f}, "
          f"{summary['rabc_full_weight_share']:.0%} of samples at 1, {summary['rabc_zero_weight_share']:.0%} at 0")
    atomic_write_json(out / "rabc_weights.json", summary)
    return w, offsets


def _evaluate(ckpt: Path, env_cfg: dict, cfg: TrainBCConfig, out: Path, step: int) -> float:
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate

    res = evaluate(EvalConfig(policy=str(ckpt), task=env_cfg["task"], episodes=cfg.eval_episodes,
                              device=cfg.device, out=str(out / "eval" / f"step_{step:06d}"), progress=False))
    return float(res["success_rate"])
