"""Residual-RL benchmark (`robolearn bench residual`, `bench/residual.py`).

1. The demo pipeline (`robolearn demo`, its defaults): imperfect demos -> BC base -> progress model ->
   residual PPO with the progress reward -> base vs base+residual on 100 seeded episodes. Gives
   base_success, residual_success, base_ci, residual_ci, wall_clock_s and the progress curve.
2. The same residual PPO (same base, seed, envs and budget) with the sparse success reward alone:
   steps_to_90_sparse (null where it never gets there; its curve is reported either way).
3. Residual SAC (ResFiT: demos in the replay batches, critic warm-up, n-step, critic ensemble,
   UTD > 1) with the progress reward: steps and wall-clock to 90%.
4. Throughput: residual PPO's env-steps/s (training time, evaluations excluded) over the raw
   `VecEnv`'s steps/s with the same env count and threads: `throughput_repeats` pairs of a short PPO
   run (the demo's settings, from scratch) and a raw timing, seconds apart, and the median of the
   pairs' ratios (the demo's own run is reported too, against the raw median, as context).

"steps to 90%" is the first periodic evaluation (`curve_episodes` seeded episodes, deterministic
residual) at or above 90% success; wall-clock counts training time only.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robolearn.data.format import atomic_write_json

if TYPE_CHECKING:
    from robolearn.rl.train import TrainResidualConfig

TARGETS = {"improvement": 0.25, "sample_efficiency": 3.0, "ppo_throughput_ratio": 0.6}


@dataclass
class ResidualBenchConfig:
    """What `robolearn bench residual` measures."""

    demo: dict[str, Any] = field(default_factory=dict)
    """DemoConfig fields overriding the demo's defaults (e.g. {residual_steps: 200000})"""
    sparse: bool = True
    """run the sparse-reward comparison"""
    sac: bool = True
    """run residual SAC with the progress reward"""
    sac_steps: int = 10_000
    """env steps of the SAC run (SAC's UTD-2 updates cost ~25 ms per env step on 2 CPU cores)"""
    sac_envs: int = 16
    """environments of the SAC run"""
    sac_eval_every: int = 2_500
    """env steps between the SAC run's evaluations"""
    threshold: float = 0.9
    """success rate the "steps to" figures are measured at"""
    throughput_steps: int = 16_384
    """env steps of each raw VecEnv timing (all envs together)"""
    throughput_ppo_steps: int = 32_768
    """env steps of each timed residual PPO run (eval off; its `model.learn` wall-clock)"""
    throughput_repeats: int = 3
    """paired (raw VecEnv, residual PPO) timings; the ratio is the median of the pairs' ratios"""
    quick: bool = False
    """smoke run: the demo's --quick budget and tiny comparison runs"""
    resume: bool = False
    """continue an interrupted benchmark in work_dir: the demo resumes its stages, the other runs theirs"""
    work_dir: str = "runs/bench_residual"
    """where the runs go (kept: the demo report is worth a look)"""
    json_path: str = "bench/results/residual.json"
    """JSON report"""
    plot_path: str = "bench/results/residual.png"
    """learning curves of the three runs (PNG)"""
    progress: bool = False
    """progress bars of the training runs"""


def steps_to(curve: list[dict], threshold: float) -> tuple[int | None, float | None]:
    """First (step, training wall-clock) of an eval curve at or above `threshold`; (None, None) if never."""
    for row in curve:
        if row["success_rate"] >= threshold:
            return int(row["step"]), row.get("train_wall_s")
    return None, None


def raw_vecenv_steps_per_s(task: str, num_envs: int, num_threads: int, steps: int, seed: int = 0) -> float:
    """Steps/s of the bare `VecEnv` with random actions in its action space (auto-resets included)."""
    from robolearn.sim.registry import make_env

    env = make_env(task, num_envs=num_envs, num_threads=num_threads, seed=seed, terminate_on_success=True)
    try:
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        sp = env.single_action_space
        actions = rng.uniform(sp.low, sp.high, (64, num_envs, sp.shape[0])).astype(np.float32)
        for i in range(20):
            env.step(actions[i % 64])
        t = time.perf_counter()
        for i in range(steps):
            env.step(actions[i % 64])
        return steps * num_envs / (time.perf_counter() - t)
    finally:
        env.close()


def paired_throughput(task: str, train_cfg: TrainResidualConfig, raw_steps: int, repeats: int,
                      work: Path) -> dict:
    """Residual PPO env-steps/s against the raw `VecEnv`'s with the same envs and threads, timed in
    pairs seconds apart (alternating which goes first), so that a VM whose speed drifts over minutes
    hurts both sides of a pair alike. Each PPO run trains `train_cfg.total_steps` from scratch (eval
    off; the rate is its `model.learn` wall-clock, setup excluded)."""
    from robolearn.rl.train import run as train_residual

    raw, ppo, ratios = [], [], []
    for r in range(repeats):
        out = work / f"throughput_{r}"
        shutil.rmtree(out, ignore_errors=True)
        for side in (("raw", "ppo") if r % 2 == 0 else ("ppo", "raw")):
            if side == "raw":
                raw.append(raw_vecenv_steps_per_s(task, train_cfg.num_envs, train_cfg.num_threads,
                                                  max(20, raw_steps // train_cfg.num_envs), seed=r))
            else:
                run_dir = train_residual(replace(train_cfg, out=str(out), seed=r))
                ppo.append(float(json.loads((run_dir / "train_summary.json").read_text())["env_steps_per_s"]))
        ratios.append(ppo[-1] / raw[-1])
        shutil.rmtree(out, ignore_errors=True)
        print(f"throughput pair {r + 1}/{repeats}: residual PPO {ppo[-1]:.0f} env-steps/s, raw VecEnv {raw[-1]:.0f} "
              f"({ratios[-1]:.3f})")
    return {"ppo_env_steps_per_s": float(np.median(ppo)), "raw_vecenv_steps_per_s": float(np.median(raw)),
            "ppo_throughput_ratio": float(np.median(ratios)),
            "throughput_samples": {"ppo": ppo, "raw": raw, "ratio": ratios}}


def run(cfg: ResidualBenchConfig) -> dict:
    from robolearn.demo import DemoConfig, learning_curve
    from robolearn.demo import run as run_demo
    from robolearn.rl.train import TrainResidualConfig
    from robolearn.rl.train import run as train_residual

    work = Path(cfg.work_dir)
    from robolearn.config import config_from_dict

    demo_cfg = config_from_dict(DemoConfig, {**cfg.demo, "out": str(work / "demo"), "quick": cfg.quick,
                                             "progress": cfg.progress, "resume": cfg.resume})
    t0 = time.perf_counter()
    demo = run_demo(demo_cfg)
    runs = {"progress (PPO)": demo["curve"]}
    # every comparison starts from the config the demo's residual run resolved and saved, so that it
    # trains with all the demo's settings (base, envs, threads, scale, seed, PPO options, ...)
    demo_rl = config_from_dict(TrainResidualConfig,
                               json.loads((work / "demo" / "residual" / "train_config.json").read_text()))
    sparse_curve: list[dict] = []
    if cfg.sparse:
        print("\n== residual PPO with the sparse success reward (same base, seed and budget)")
        sparse_dir = work / "ppo_sparse"
        if not cfg.resume:
            shutil.rmtree(sparse_dir, ignore_errors=True)
        train_residual(replace(demo_rl, reward="sparse", out=str(sparse_dir), save_every=demo_rl.total_steps))
        sparse_curve = learning_curve(sparse_dir)
        runs["sparse (PPO)"] = sparse_curve
    sac_curve: list[dict] = []
    if cfg.sac:
        print("\n== residual SAC (ResFiT recipe) with the progress reward")
        sac_dir = work / "sac_progress"
        if not cfg.resume:
            shutil.rmtree(sac_dir, ignore_errors=True)
        steps = min(cfg.sac_steps, 4096) if cfg.quick else cfg.sac_steps
        every = min(cfg.sac_eval_every, 2048) if cfg.quick else cfg.sac_eval_every
        train_residual(replace(demo_rl, algo="sac", out=str(sac_dir), num_envs=cfg.sac_envs, total_steps=steps,
                               eval_every=every, save_every=steps))
        sac_curve = learning_curve(sac_dir)
        runs["progress (SAC)"] = sac_curve

    print("\n== residual PPO throughput vs the raw VecEnv (paired timings)")
    div = 8 if cfg.quick else 1
    through = paired_throughput(demo["task"], replace(
        demo_rl, total_steps=max(2048, cfg.throughput_ppo_steps // div), eval_every=0, eval_episodes=0,
        save_every=10 ** 9), cfg.throughput_steps // div, 1 if cfg.quick else cfg.throughput_repeats, work)
    demo_sps = float(demo["residual_train"]["env_steps_per_s"])
    p_steps, p_wall = steps_to(demo["curve"], cfg.threshold)
    s_steps, s_wall = steps_to(sparse_curve, cfg.threshold)
    c_steps, c_wall = steps_to(sac_curve, cfg.threshold)
    result = {
        "format_version": 1,
        "task": demo["task"],
        "base_success": demo["base"]["success_rate"],
        "residual_success": demo["residual"]["success_rate"],
        "base_ci": demo["base"]["ci95"],
        "residual_ci": demo["residual"]["ci95"],
        "improvement": demo["improvement"],
        "intervals_separated": demo["separated"],
        "episodes": demo["base"]["episodes"],
        "threshold": cfg.threshold,
        "steps_to_90_progress": p_steps,
        "steps_to_90_sparse": s_steps,
        "sample_efficiency": (s_steps / p_steps) if (s_steps and p_steps) else None,
        "ppo_steps_to_90": p_steps, "ppo_wall_s_to_90": p_wall,
        "sac_steps_to_90": c_steps, "sac_wall_s_to_90": c_wall,
        **through,
        "demo_ppo_env_steps_per_s": demo_sps,
        "demo_ppo_throughput_ratio": demo_sps / through["raw_vecenv_steps_per_s"],
        "wall_clock_s": demo["wall_clock_s"],
        "demo_timings_s": demo["timings_s"],
        "curves": runs,
        "budget_steps": demo_cfg.residual_steps,
        "sac_budget_steps": cfg.sac_steps if not cfg.quick else min(cfg.sac_steps, 4096),
        "config": asdict(cfg),
        "bench_wall_s": time.perf_counter() - t0,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    sparse_never = cfg.sparse and s_steps is None and p_steps is not None
    if sparse_never:  # sparse never got there within the budget: the ratio is at least budget / progress steps
        result["sample_efficiency_lower_bound"] = demo_cfg.residual_steps / p_steps
    eff = result["sample_efficiency"] or result.get("sample_efficiency_lower_bound")
    result["passed"] = {
        "improvement": bool(result["improvement"] >= TARGETS["improvement"] and demo["separated"]),
        "sample_efficiency": bool(eff is not None and eff >= TARGETS["sample_efficiency"]),
        "ppo_throughput_ratio": bool(result["ppo_throughput_ratio"] >= TARGETS["ppo_throughput_ratio"]),
    }
    result["targets"] = TARGETS
    _plot(runs, demo, cfg)
    path = Path(cfg.json_path)
    atomic_write_json(path, result)
    print(format_table(result))
    print(f"wrote {path} and {cfg.plot_path}")
    return result


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "not reached"
    return f"{v:.0%}" if pct else (f"{v:,.0f}" if isinstance(v, (int, float)) and abs(v) >= 10 else f"{v:.2f}")


def format_table(r: dict) -> str:
    lo = lambda ci: f"{ci[0]:.0%}–{ci[1]:.0%}"  # noqa: E731
    rows = [
        ("base success (BC)", f"{r['base_success']:.0%} ({lo(r['base_ci'])})", ""),
        ("base + residual success", f"{r['residual_success']:.0%} ({lo(r['residual_ci'])})", ""),
        ("improvement", f"{r['improvement']:+.0%} ({'separated' if r['intervals_separated'] else 'overlapping'})",
         f">= +{TARGETS['improvement']:.0%}, separated"),
        ("PPO steps to 90%: progress reward", _fmt(r["steps_to_90_progress"]), ""),
        ("PPO steps to 90%: sparse reward", _fmt(r["steps_to_90_sparse"]), ""),
        ("sample efficiency (sparse / progress)",
         _fmt(r["sample_efficiency"]) if r["sample_efficiency"] else
         (f">= {r['sample_efficiency_lower_bound']:.1f} (sparse never reached it)"
          if r.get("sample_efficiency_lower_bound") else "n/a"), f">= {TARGETS['sample_efficiency']:.0f}x"),
        ("PPO wall-clock to 90% (s)", _fmt(r["ppo_wall_s_to_90"]), ""),
        ("SAC steps to 90%", _fmt(r["sac_steps_to_90"]), ""),
        ("SAC wall-clock to 90% (s)", _fmt(r["sac_wall_s_to_90"]), ""),
        ("PPO env-steps/s / raw VecEnv", f"{r['ppo_env_steps_per_s']:.0f} / {r['raw_vecenv_steps_per_s']:.0f} = "
         f"{r['ppo_throughput_ratio']:.2f}", f">= {TARGETS['ppo_throughput_ratio']}"),
        ("demo wall-clock", f"{r['wall_clock_s'] / 60:.1f} min", "<= 15 min"),
    ]
    w = max(len(a) for a, _, _ in rows)
    lines = [f"{'figure':<{w}}  {'value':<32}  target", "-" * (w + 50)]
    lines += [f"{a:<{w}}  {b:<32}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def _plot(runs: dict[str, list[dict]], demo: dict, cfg: ResidualBenchConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    b = demo["base"]
    ax.axhspan(b["ci95"][0], b["ci95"][1], color="tab:gray", alpha=0.2)
    ax.axhline(b["success_rate"], color="tab:gray", ls="--", label=f"BC base {b['success_rate']:.0%}")
    ax.axhline(cfg.threshold, color="k", lw=0.5, ls=":")
    for name, curve in runs.items():
        if curve:
            ax.plot([c["step"] for c in curve], [c["success_rate"] for c in curve], "o-", label=name)
    ax.set(xlabel="env steps", ylabel=f"success ({demo['curve_episodes']} seeded episodes)", ylim=(0, 1.02),
           title=f"residual RL on {demo['task']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(cfg.plot_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(cfg.plot_path, dpi=100)
    plt.close(fig)
