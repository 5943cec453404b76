"""Training-run plumbing shared by every trainer (`train bc`, `train reward`): run directories,
resumable checkpoints, a seeded batch order, the LR schedule, weight EMA and the step log.

A run directory holds `train_config.json`, `checkpoints/step_NNNNNN/` (the model's own checkpoint plus
`training_state.*`: optimizer, schedule, RNG, EMA), `checkpoints/last` (a symlink to the newest
complete one), `train_log.jsonl` and `tb/`. Checkpoints are written to a temporary directory and
renamed, so a kill never leaves a half one; resuming restores the exact state, and `SeededBatches`
makes the batch order a function of (seed, step), so a resumed run continues the same loss curve.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from robolearn.data.format import atomic_write_json, to_jsonable
from robolearn.errors import ConfigError

TRAIN_STATE_VERSION = 1


class SeededBatches(torch.utils.data.Sampler):
    """Batch indices as a pure function of (seed, step): epoch e is a permutation drawn from
    (seed, e); resuming at any step replays exactly the batches that followed it."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.bs, self.seed, self.start, self.stop = n, min(batch_size, n), seed, start, stop
        self.per_epoch = max(n // self.bs, 1)

    def __iter__(self):
        perm, epoch = None, -1
        for step in range(self.start, self.stop):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                perm, epoch = np.random.default_rng([self.seed, e]).permutation(self.n), e
            yield perm[k * self.bs:(k + 1) * self.bs].tolist()

    def __len__(self) -> int:
        return self.stop - self.start


def prepare_run_dir(out: Path, saved_cfg: dict, keys: tuple[str, ...]) -> Path | None:
    """Create the run dir, or find the checkpoint to resume from (refusing a run whose `keys` differ:
    resuming it would mix two trainings)."""
    cfg_path = out / "train_config.json"
    last = out / "checkpoints" / "last"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text())
        diff = [k for k in keys if old.get(k) != saved_cfg.get(k)]
        if diff:
            raise ConfigError(f"{out} holds a run with different {', '.join(diff)} "
                              f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); choose another --out "
                              "or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, to_jsonable(saved_cfg))
    for tmp in (out / "checkpoints").glob(".tmp*") if (out / "checkpoints").is_dir() else ():
        shutil.rmtree(tmp, ignore_errors=True)  # a checkpoint a kill interrupted
    return last.resolve() if last.exists() else None


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class Ema:
    """Exponential moving average of the weights (the saved policy uses it)."""

    def __init__(self, policy, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in policy.state_dict().items()}

    @torch.no_grad()
    def update(self, policy) -> None:
        for k, v in policy.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)


def save_checkpoint(out: Path, step: int, policy, opt, sched, ema) -> Path:
    """The model's checkpoint (`policy.save`: a policy or a reward model) + training state, written in a
    temp dir and renamed into place; then `last` is moved."""
    from safetensors.torch import save_file

    ckdir = out / "checkpoints"
    final = ckdir / f"step_{step:06d}"
    tmp = ckdir / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    raw = None
    if ema is not None:  # the checkpoint carries the averaged weights; training resumes from the raw ones
        raw = {k: v.detach().clone() for k, v in policy.state_dict().items()}
        policy.load_state_dict(ema.shadow)
    policy.save(tmp)
    if raw is not None:
        policy.load_state_dict(raw)
    tensors, meta = flatten_optimizer(opt.state_dict())
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if raw is not None:
        tensors.update({f"raw.{k}": v.cpu().contiguous() for k, v in raw.items()})
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in ema.shadow.items()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "training_state.safetensors"))
    atomic_write_json(tmp / "training_state.json", {"version": TRAIN_STATE_VERSION, "step": step,
                                                    "scheduler": sched.state_dict(), "optimizer": meta})
    commit_checkpoint(tmp, final)
    return final


def commit_checkpoint(tmp: Path, final: Path, keep: int = 2) -> None:
    """Move a fully written checkpoint directory `tmp` to `final`, point `<its dir>/last` at it (a
    symlink swapped in by rename, never half-written) and keep the `keep` newest step_* checkpoints."""
    ckdir = final.parent
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    link_tmp = ckdir / ".tmp_last"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(final.name, link_tmp)
    os.replace(link_tmp, ckdir / "last")
    for old in sorted(ckdir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def flatten_optimizer(sd: dict, prefix: str = "opt") -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as safetensors-ready tensors `<prefix>.<param>.<name>` + JSON-able meta."""
    tensors, state_meta = {}, {}
    for idx, st in sd["state"].items():
        state_meta[str(idx)] = {}
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{idx}.{name}"] = v.detach().cpu()
                state_meta[str(idx)][name] = "tensor"
            else:
                state_meta[str(idx)][name] = v
    return tensors, {"state": state_meta, "param_groups": sd["param_groups"]}


def unflatten_optimizer(meta: dict, tensors: dict[str, torch.Tensor], prefix: str = "opt", device=None) -> dict:
    """The inverse of `flatten_optimizer`: an optimizer state dict to `load_state_dict`."""
    state = {int(idx): {name: (tensors[f"{prefix}.{idx}.{name}"].to(device) if v == "tensor" else v)
                        for name, v in st.items()} for idx, st in meta["state"].items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def load_training_state(path: Path, policy, opt, sched, ema, device) -> int:
    from safetensors.torch import load_file

    from robolearn.policies import CheckpointError

    meta_path = path / "training_state.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} has no training state; it cannot be resumed (delete the run dir to restart)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != TRAIN_STATE_VERSION:
        raise CheckpointError(f"{meta_path}: training state version {meta.get('version')} is not "
                              f"{TRAIN_STATE_VERSION}; restart the run in a new --out")
    tensors = load_file(str(path / "training_state.safetensors"))
    weights = load_file(str(path / "model.safetensors"))
    if ema is not None:
        policy.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("raw.")})
        ema.shadow = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
    else:
        policy.load_state_dict(weights)
    opt.load_state_dict(unflatten_optimizer(meta["optimizer"], tensors, device=device))
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"])


def append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_log(path: Path, step: int) -> None:
    """Drop log rows past the step a resumed run restarts from (they are about to be redone)."""
    if not path.is_file():
        return
    rows = [r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip()) if r["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


class Optimization:
    """One model's optimizer state: AdamW, linear warm-up then cosine decay to 0, gradient clipping and
    an optional weight EMA (what `train bc` and `train reward` share)."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                 grad_clip: float, ema: float):
        self.model, self.grad_clip = model, grad_clip
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, warmup_steps, total_steps))
        self.ema = Ema(model, ema) if ema else None

    def resume(self, state: Path | None, device) -> int:
        """Restore the model and this state from a checkpoint (None: a new run); returns its step."""
        return load_training_state(state, self.model, self.opt, self.sched, self.ema, device) if state else 0

    def step(self, loss: torch.Tensor) -> None:
        """One update from `loss`: backward, clip, optimizer and schedule step, EMA update."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.model)

    @property
    def lr(self) -> float:
        return self.sched.get_last_lr()[0]

    def save(self, out: Path, step: int) -> Path:
        """`save_checkpoint` of the model (its EMA weights when there is one) and this state."""
        return save_checkpoint(out, step, self.model, self.opt, self.sched, self.ema)


@contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` torch threads (None: unchanged), restoring the previous count after."""
    if not n:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
