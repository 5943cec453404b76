"""Does `robolearn select` rank policies better than sim success alone? A sim-to-sim check.

`validate_selection(cfg)` plays the sim-to-real story with a held-out simulator setting as "real":
1. records one scripted-expert dataset per training randomization in `settings` (state only, `task`);
2. trains one small MLP BC policy on each (`robolearn train bc`, same steps and seed);
3. records the "real" dataset under `real_randomization`, a setting no policy was trained on;
4. runs `robolearn select` over the policies: sim success under each policy's own training
   randomization, ood of the "real" observations in each policy's features, and the combined score;
5. measures each policy's TRUE success: sim episodes under the held-out `real_randomization`;
6. reports Spearman(score, true success) as `selection_rank_corr` against Spearman(sim success, true
   success) as `sim_only_rank_corr` (and Spearman(-ood, true success) as `ood_only_rank_corr`).

State-only policies see physics randomization through their states: the "real" setting below has a
weaker, slower arm, heavier objects and noisier joint sensing than nominal, which moves the recorded
joint velocities, tracking errors and state noise away from what a nominal-trained policy has seen.
The settings were fixed before the figures were measured; whatever comes out is reported. Two training
seeds per setting (8 policies) and 100 episodes per success rate keep the correlations from being
mostly noise (a success rate over 100 episodes still has a standard error of up to 5 points).

    from robolearn.eval.select_bench import SelectBenchConfig, validate_selection
    validate_selection(SelectBenchConfig(quick=True))  # smoke budget, for tests
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robolearn.sim.config import PhysicsRandomization, RandomizationConfig


def _physics(**kw: Any) -> RandomizationConfig:
    return RandomizationConfig(physics=PhysicsRandomization(**kw))


def default_settings() -> dict[str, RandomizationConfig]:
    """The training randomizations: none, light object physics, arm dynamics, sensor noise."""
    return {
        "nominal": RandomizationConfig(),
        "objects": _physics(friction_scale=(0.7, 1.3), mass_scale=(0.7, 1.5)),
        "arm": _physics(actuator_gain_scale=(0.5, 0.9), joint_damping_scale=(1.0, 1.5)),
        "noise": _physics(observation_noise_std=0.004),
    }


def default_real() -> RandomizationConfig:
    """The held-out "real" setting: a weaker arm, heavier objects, some sensor noise."""
    return _physics(actuator_gain_scale=(0.55, 0.75), mass_scale=(1.1, 1.4), observation_noise_std=0.002)


@dataclass
class SelectBenchConfig:
    """Budgets and settings of the sim-to-sim model-selection check (default: < 10 min on 2 cores)."""

    task: str = "lift"
    """native task with a scripted expert"""
    settings: dict[str, RandomizationConfig] = field(default_factory=default_settings)
    """training randomizations, one policy each (per seed)"""
    real_randomization: RandomizationConfig = field(default_factory=default_real)
    """the held-out setting that plays the real robot"""
    seeds: int = 2
    """policies trained per setting (training seeds 0..seeds-1, same data): 8 policies by default, since a
    Spearman over 4 moves in steps of 0.2"""
    train_episodes: int = 40
    """expert episodes per training dataset"""
    real_episodes: int = 20
    """expert episodes of the "real" dataset (only its observations are used)"""
    bc_steps: int = 1500
    """BC optimizer steps per policy"""
    batch_size: int = 256
    """BC batch"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """MLP hidden widths"""
    sim_episodes: int = 100
    """episodes of each policy's sim success (under its own training randomization)"""
    true_episodes: int = 100
    """episodes of each policy's true success (under real_randomization)"""
    beta: float = 1.0
    """weight of ood in the combined score"""
    ood_method: Literal["knn", "mahalanobis"] = "knn"
    """knn or mahalanobis"""
    k: int = 5
    """kNN neighbour"""
    max_frames: int = 2000
    """windows embedded per set"""
    num_threads: int = 1
    """torch threads while training and scoring (1: small MLPs gain nothing from 2, and on a shared
    2-core machine two threads ran 4x slower than one)"""
    seed: int = 0
    """seed of the data, the policies and the selection"""
    work_dir: str = ""
    """where datasets, policies and the selection report go; empty: a temporary directory, removed"""
    quick: bool = False
    """smoke budget for tests: a few episodes and steps (the figures then mean nothing)"""
    progress: bool = False
    """progress bars"""

    def resolved(self) -> SelectBenchConfig:
        """A copy with the quick budget applied when quick=true."""
        from dataclasses import replace

        if not self.quick:
            return replace(self)
        return replace(self, seeds=1, train_episodes=4, real_episodes=2, bc_steps=20, batch_size=64, hidden=[32],
                       sim_episodes=2, true_episodes=2, max_frames=200)


def validate_selection(cfg: SelectBenchConfig | None = None) -> dict[str, Any]:
    """Run the check (see the module docstring); returns selection_rank_corr, sim_only_rank_corr,
    ood_only_rank_corr (None where a side is constant), per-policy rows, the budget and wall time."""
    import torch

    cfg = (cfg or SelectBenchConfig()).resolved()
    tmp = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="robolearn_select_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        return _measure(cfg, tmp)
    finally:
        torch.set_num_threads(threads)
        if not cfg.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)


def _collect(cfg: SelectBenchConfig, out: Path, episodes: int, seed: int, rand: RandomizationConfig) -> Path:
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    if (out / "meta" / "info.json").exists():
        return out
    return collect(CollectConfig(task=cfg.task, episodes=episodes, out=str(out), seed=seed, cameras=[],
                                 num_envs=min(10, episodes), num_threads=2, randomization=rand, fsync=False,
                                 progress=cfg.progress))


def _train(cfg: SelectBenchConfig, data: Path, out: Path, seed: int) -> Path:
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train

    if not (out / "checkpoints" / "last" / "config.json").is_file():
        train(TrainBCConfig(dataset=str(data), policy="mlp", policy_options={"hidden": list(cfg.hidden)},
                            out=str(out), steps=cfg.bc_steps, batch_size=cfg.batch_size, seed=seed,
                            warmup_steps=min(200, cfg.bc_steps // 10), save_every=cfg.bc_steps,
                            log_every=max(1, min(50, cfg.bc_steps)), eval_episodes=0, device="cpu",
                            progress=cfg.progress))
    return out


def _corr(a: list[float], b: list[float]) -> float | None:
    from robolearn.rewards.metrics import spearman

    r = spearman(np.asarray(a, float), np.asarray(b, float))
    return None if math.isnan(r) else r


def _measure(cfg: SelectBenchConfig, tmp: Path) -> dict[str, Any]:
    from robolearn.config import config_to_dict
    from robolearn.eval.select import SelectConfig, sim_success
    from robolearn.eval.select import run as select

    t0 = time.perf_counter()
    policies, setting_of = [], {}
    for i, (name, rand) in enumerate(cfg.settings.items()):
        data = _collect(cfg, tmp / "data" / name, cfg.train_episodes, cfg.seed + 100 * i, rand)
        for s in range(cfg.seeds):
            run_name = name if cfg.seeds == 1 else f"{name}_s{s}"
            policies.append(str(_train(cfg, data, tmp / "policies" / run_name, cfg.seed + s)))
            setting_of[run_name] = name
    real = _collect(cfg, tmp / "data" / "real", cfg.real_episodes, cfg.seed + 7777, cfg.real_randomization)
    t_setup = time.perf_counter() - t0

    sel_cfg = SelectConfig(policies=policies, real_dataset=str(real), sim_episodes=cfg.sim_episodes, beta=cfg.beta,
                           ood_method=cfg.ood_method, k=cfg.k, max_frames=cfg.max_frames, seed=cfg.seed,
                           out=str(tmp / "selection"), device="cpu", progress=cfg.progress)
    selection = select(sel_cfg)
    t_select = time.perf_counter() - t0 - t_setup

    true_cfg = SelectConfig(policies=policies, real_dataset=str(real), sim_episodes=cfg.true_episodes,
                            sim_seed=2000, device="cpu", progress=cfg.progress)
    rows = []
    for r in selection["policies"]:
        truth = sim_success(r["policy"], true_cfg, cfg.real_randomization, tmp / "true" / r["name"])
        rows.append({"policy": r["name"], "setting": setting_of[r["name"]], "rank": r["rank"],
                     "sim_success": r["sim_success"], "ood": r["ood"], "score": r["score"],
                     "true_success": truth["success_rate"], "true_ci95": truth["ci95"]})
    true = [r["true_success"] for r in rows]
    report = {
        "selection_rank_corr": _corr([r["score"] for r in rows], true),
        "sim_only_rank_corr": _corr([r["sim_success"] for r in rows], true),
        "ood_only_rank_corr": _corr([-r["ood"] for r in rows], true),
        "selected": selection["selected"],
        "selected_true_success": next(r["true_success"] for r in rows if r["policy"] == selection["selected"]),
        "best_true_success": max(true),
        "sim_only_pick": max(rows, key=lambda r: r["sim_success"])["policy"],
        "policies": rows,
        "definitions": {
            "selection_rank_corr": "Spearman(select's combined score, true success under the held-out setting)",
            "sim_only_rank_corr": "Spearman(sim success under each policy's own training randomization, true success)",
            "ood_only_rank_corr": "Spearman(-ood, true success)",
            "true_success": f"success over {cfg.true_episodes} sim episodes under real_randomization (seed 2000)",
        },
        "budget": {k: getattr(cfg, k) for k in ("train_episodes", "real_episodes", "bc_steps", "batch_size", "hidden",
                                                 "sim_episodes", "true_episodes", "seeds", "quick")},
        "settings": {k: config_to_dict(v) for k, v in cfg.settings.items()},
        "real_randomization": config_to_dict(cfg.real_randomization),
        "wall_s": {"data_and_training": t_setup, "select": t_select, "total": time.perf_counter() - t0},
    }
    if cfg.work_dir:
        report["selection_report"] = selection["files"]["report"]
    return report


def format_report(report: dict[str, Any]) -> str:
    """The per-policy figures and the two correlations as a text table."""
    def f(x: float | None) -> str:
        return "n/a (constant)" if x is None else f"{x:+.3f}"

    lines = [f"  {'policy':<12} {'sim':>6} {'ood':>8} {'score':>7} {'true':>6}  rank"]
    for r in sorted(report["policies"], key=lambda r: r["rank"]):
        lines.append(f"  {r['policy']:<12} {r['sim_success']:>6.0%} {r['ood']:>+8.3f} {r['score']:>7.3f} "
                     f"{r['true_success']:>6.0%}  {r['rank']}")
    lines += [f"  selection_rank_corr  {f(report['selection_rank_corr'])}",
              f"  sim_only_rank_corr   {f(report['sim_only_rank_corr'])}",
              f"  ood_only_rank_corr   {f(report['ood_only_rank_corr'])}",
              f"  selected {report['selected']} (true {report['selected_true_success']:.0%}; best "
              f"{report['best_true_success']:.0%}; sim-only pick {report['sim_only_pick']})",
              f"  wall {report['wall_s']['total']:.0f} s"]
    return "\n".join(lines)
