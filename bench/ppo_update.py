"""Residual PPO's update cost: one SB3 `PPO.train()` over a full rollout, Adam's fused kernel vs its
default (per-tensor loop), at 1 and 2 torch threads.

    .venv/bin/python bench/ppo_update.py                       # ~1 min, writes bench/results/ppo_update.json
    .venv/bin/python bench/ppo_update.py --repeats 3 --json /tmp/u.json

The learner is built as `robolearn train residual --algo ppo` builds it (`ppo_learner`, the
default `TrainResidualConfig`: [256, 256] tanh actor and critic, 64 envs x 64 steps per rollout,
minibatches of 512, 10 epochs) over a stand-in env with the residual's observation and action
spaces; the rollout buffer is filled with random data and `target_kl` is off, so every timed update
does all 80 minibatches. Variants are interleaved within each repeat and each ratio is the median of
per-repeat ratios (these VMs drift). A PPO update runs while the physics threads are idle, so its
time adds to every rollout's: on lift it was ~25% of the training wall-clock before the fused kernel.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch


class _Spaces(gym.Env):
    """An env that only carries the residual learner's spaces (its update never steps it)."""

    def __init__(self, obs_dim: int, act_dim: int):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-5.0, 5.0, (act_dim,), np.float32)

    def reset(self, *, seed=None, options=None):
        return np.zeros(self.observation_space.shape, np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, np.float32), 0.0, False, False, {}


def make_learner(fused: bool, obs_dim: int, act_dim: int, num_envs: int, seed: int = 0):
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import DummyVecEnv

    from robolearn.rl.train import TrainResidualConfig, ppo_learner

    cfg = TrainResidualConfig(num_envs=num_envs, seed=seed)
    cfg = replace(cfg, ppo=replace(cfg.ppo, target_kl=0.0))  # off: every update does all its minibatches
    p = cfg.ppo
    model = ppo_learner(cfg, DummyVecEnv([lambda: _Spaces(obs_dim, act_dim)] * num_envs), fused=fused)
    model.set_logger(configure(None, []))
    rng = np.random.default_rng(seed)
    buf = model.rollout_buffer
    for name in ("observations", "actions", "rewards", "returns", "advantages", "values", "log_probs"):
        arr = getattr(buf, name)
        arr[...] = rng.standard_normal(arr.shape).astype(arr.dtype)
    buf.log_probs[...] = -np.abs(buf.log_probs) - act_dim
    buf.full, buf.generator_ready = True, False
    minibatches = p.n_epochs * (p.n_steps * num_envs // p.batch_size)
    return model, minibatches


def time_update(model, threads: int) -> float:
    model.train_threads = threads
    t = time.perf_counter()
    model.train()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results/ppo_update.json", metavar="FILE")
    ap.add_argument("--repeats", type=int, default=7, help="timed updates per variant (default 7)")
    ap.add_argument("--obs-dim", type=int, default=40, help="residual input size (lift: 40)")
    ap.add_argument("--act-dim", type=int, default=7)
    ap.add_argument("--envs", type=int, default=64, help="envs per rollout (the demo's 64)")
    a = ap.parse_args()
    variants = [(fused, threads) for threads in (1, 2) for fused in (False, True)]
    models = {}
    for fused, threads in variants:
        model, minibatches = make_learner(fused, a.obs_dim, a.act_dim, a.envs)
        time_update(model, threads)  # warm-up (allocations, first kernels)
        models[(fused, threads)] = model
    times: dict[tuple[bool, int], list[float]] = {v: [] for v in variants}
    for r in range(a.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v].append(time_update(models[v], v[1]))
    rows = []
    for fused, threads in variants:
        ts = times[(fused, threads)]
        rows.append({"adam": "fused" if fused else "default", "threads": threads,
                     "update_s_median": statistics.median(ts), "update_s_min": min(ts), "update_s_max": max(ts),
                     "ms_per_minibatch": 1e3 * statistics.median(ts) / minibatches})
    ratios = {f"fused_speedup_{t}_threads": statistics.median(
        [d / f for d, f in zip(times[(False, t)], times[(True, t)])]) for t in (1, 2)}
    print(f"PPO update ({minibatches} minibatches of 512, obs {a.obs_dim}, {a.repeats} repeats, "
          f"torch {torch.__version__})")
    print(f"{'adam':<8} {'threads':>7} {'median s':>9} {'min s':>7} {'max s':>7} {'ms/minibatch':>13}")
    for row in rows:
        print(f"{row['adam']:<8} {row['threads']:>7} {row['update_s_median']:>9.3f} {row['update_s_min']:>7.3f} "
              f"{row['update_s_max']:>7.3f} {row['ms_per_minibatch']:>13.2f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x (median of paired ratios)")
    report = {"format_version": 1, "rows": rows, **ratios, "minibatches": minibatches, "repeats": a.repeats,
              "obs_dim": a.obs_dim, "num_envs": a.envs, "torch": torch.__version__, "machine": platform.node(),
              "cpus": torch.get_num_threads(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "samples_s": {f"{'fused' if f else 'default'}_{t}": times[(f, t)] for f, t in variants}}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
