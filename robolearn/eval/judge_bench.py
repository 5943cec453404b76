"""`robolearn bench judge`: the evaluation checks of the judge and of `robolearn select`, where ground
truth exists (in simulation).

Judge (PRM-as-a-Judge):
1. records a training set of imperfect scripted `task` episodes (action noise, and `train_failure_fraction`
   of them with an injected failure, so the progress model sees failures), with images;
2. trains the default stage-aware progress model on it (`robolearn train reward`);
3. records one dataset per "policy" in `policies`: the scripted expert with a policy-specific failure
   rate and action noise, so their true success rates differ; merges them into one dataset whose
   episodes name their policy (`info.policy`), as `robolearn eval-suite --record` writes;
4. judges the merged dataset (`robolearn judge`) and compares with the simulator's truth:
   `stall_stage_agreement`: share of failed episodes whose diagnosed stage is the highest stage the
   sim's own annotation reached; `policy_rank_agreement`: Spearman between the per-policy mean
   process score and the true success rate.
Selection (VSDR): `robolearn.eval.select_bench.validate_selection` (see there): `selection_rank_corr`
and `sim_only_rank_corr`.

    from robolearn.eval.judge_bench import JudgeBenchConfig, run
    run(JudgeBenchConfig(quick=True, json_path=""))   # smoke budget (figures mean nothing)
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robolearn.eval.select_bench import SelectBenchConfig


def default_policies() -> dict[str, dict[str, float]]:
    """Scripted "policies" of decreasing quality: injected failure fraction and action noise."""
    return {"good": {"failure_fraction": 0.1, "action_noise_std": 0.05},
            "medium": {"failure_fraction": 0.5, "action_noise_std": 0.15},
            "poor": {"failure_fraction": 0.85, "action_noise_std": 0.3}}


@dataclass
class JudgeBenchConfig:
    """Budgets of `robolearn bench judge` (default: ~20 min on 2 cores)."""

    task: str = "pick_place"
    """native task with a scripted expert and stage annotations (four stages or more make the stage check
    meaningful)"""
    camera: str = "front"
    """camera recorded for the progress model"""
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    """recorded image size (H, W)"""
    train_episodes: int = 64
    """episodes of the progress model's training set"""
    train_failure_fraction: float = 0.4
    """share of training episodes with an injected failure (drop or stall)"""
    train_action_noise_std: float = 0.15
    """action noise of the training demos: a progress model judges the behaviours it was trained on (with
    clean demos only, stage agreement on the noisy policies fell from 93% to 79%)"""
    reward_steps: int = 1200
    """progress model optimizer steps"""
    policies: dict[str, dict[str, float]] = field(default_factory=default_policies)
    """policy name -> {failure_fraction, action_noise_std}"""
    episodes_per_policy: int = 20
    """judged episodes per policy"""
    selection: bool = True
    """also run the sim-to-sim selection check (`select_bench`)"""
    select: SelectBenchConfig = field(default_factory=SelectBenchConfig)
    """budget of the selection check"""
    seed: int = 0
    """seed of the data and the model"""
    num_threads: int = 2
    """torch threads for the progress model"""
    work_dir: str = ""
    """where datasets, the model and the reports go; empty: a temporary directory, removed at the end"""
    json_path: str = "bench/results/judge.json"
    """where the JSON results go (empty: not written)"""
    quick: bool = False
    """smoke budget for tests: a few episodes and steps (the figures then mean nothing)"""
    progress: bool = False
    """progress bars"""

    def resolved(self) -> JudgeBenchConfig:
        """A copy with the quick budget applied when quick=true."""
        if not self.quick:
            return replace(self)
        return replace(self, image_size=[32, 32], train_episodes=4, reward_steps=4, episodes_per_policy=2,
                       select=replace(self.select, quick=True))


def run(cfg: JudgeBenchConfig) -> dict[str, Any]:
    """Measure the judge and selection checks; print the table, write `json_path`, return the report."""
    import torch

    from robolearn.data.format import atomic_write_json

    cfg = cfg.resolved()
    tmp = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="robolearn_judge_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    t0 = time.perf_counter()
    try:
        report: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version()}
        report.update(_judge_checks(cfg, tmp))
        if cfg.selection:
            from robolearn.eval.select_bench import validate_selection

            sel_cfg = replace(cfg.select, work_dir=str(tmp / "select") if cfg.work_dir else "",
                              seed=cfg.seed, progress=cfg.progress)
            sel = validate_selection(sel_cfg)
            report.update(selection_rank_corr=sel["selection_rank_corr"],
                          sim_only_rank_corr=sel["sim_only_rank_corr"], selection=sel)
        else:
            report.update(selection_rank_corr=None, sim_only_rank_corr=None)
        report["wall_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        if not cfg.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(format_report(report))
    if cfg.json_path:
        atomic_write_json(Path(cfg.json_path), report)
        print(f"wrote {cfg.json_path}")
    return report


def _collect(cfg: JudgeBenchConfig, out: Path, episodes: int, seed: int, failure_fraction: float,
             noise: float) -> Path:
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    if (out / "meta" / "info.json").exists():
        return out
    return collect(CollectConfig(task=cfg.task, episodes=episodes, out=str(out), seed=seed, cameras=[cfg.camera],
                                 image_size=list(cfg.image_size), failure_fraction=failure_fraction,
                                 failure_modes=["drop", "stall"], action_noise_std=noise, num_envs=min(8, episodes),
                                 fsync=False, progress=cfg.progress))


def merge_policies(parts: dict[str, Path], out: Path) -> Path:
    """One dataset holding every episode of `parts` (policy name -> dataset), each episode's info naming
    its policy, as `robolearn eval-suite --record` writes them."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.writer import DatasetWriter, EpisodeRecord

    if (out / "meta" / "info.json").exists():
        return out
    writer = None
    try:
        for name, path in parts.items():
            r = DatasetReader(path)
            if writer is None:
                extra = {k: v for k, v in r.meta.robolearn.items() if k not in ("format_version", "video")}
                writer = DatasetWriter.create(out, r.features, r.fps, video=None, extra_meta=extra, fsync=False)
            for ep in range(r.num_episodes):
                info = r.meta.episode_info(ep) | {"policy": name}
                writer.add_episode(r.episode(ep), EpisodeRecord(r.meta.task(ep), r.meta.stages(ep),
                                                                r.meta.success(ep), info))
    finally:
        if writer is not None:
            writer.close()
    return out


def _judge_checks(cfg: JudgeBenchConfig, tmp: Path) -> dict[str, Any]:
    from robolearn.eval.judge import JudgeConfig
    from robolearn.eval.judge import run as judge
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train_reward

    t0 = time.perf_counter()
    train = _collect(cfg, tmp / "data" / "train", cfg.train_episodes, cfg.seed, cfg.train_failure_fraction,
                     cfg.train_action_noise_std)
    parts = {name: _collect(cfg, tmp / "data" / name, cfg.episodes_per_policy, cfg.seed + 1000 * (i + 1),
                            p.get("failure_fraction", 0.0), p.get("action_noise_std", 0.0))
             for i, (name, p) in enumerate(cfg.policies.items())}
    mixed = merge_policies(parts, tmp / "data" / "judged")
    t_data = time.perf_counter() - t0
    model = tmp / "reward"
    if not (model / "checkpoints" / "last" / "config.json").is_file():
        steps = cfg.reward_steps
        train_reward(TrainRewardConfig(dataset=str(train), out=str(model), steps=steps, batch_size=64,
                                       val_fraction=0.0, save_every=steps, val_every=steps,
                                       log_every=max(1, min(50, steps)), warmup_steps=min(100, steps // 10),
                                       seed=cfg.seed, device="cpu", progress=cfg.progress))
    t_train = time.perf_counter() - t0 - t_data
    result = judge(JudgeConfig(dataset=str(mixed), reward=str(model), out=str(tmp / "judge"), device="cpu",
                               report=bool(cfg.work_dir), progress=cfg.progress))
    checks = result["checks"]
    stall = checks["stall_stage_agreement"]
    policies = {name: {k: g.get(k) for k in ("episodes", "true_success_rate", "mean_process_score",
                                             "mean_max_progress", "mean_final_progress", "failure_stages")}
                for name, g in result["summary"]["policies"].items()}
    return {
        "stall_stage_agreement": stall["agreement"],
        "policy_rank_agreement": checks["policy_rank_agreement"]["spearman"],
        "judge": {
            "task": cfg.task, "failed_episodes": stall["failed_episodes"], "matches": stall["matches"],
            "mismatches": [d for d in stall["episodes"] if not d["agree"]],
            "outcome_agreement": checks.get("outcome_agreement", {}).get("agreement"),
            "policies": policies,
            "budget": {"train_episodes": cfg.train_episodes, "reward_steps": cfg.reward_steps,
                       "episodes_per_policy": cfg.episodes_per_policy, "image_size": list(cfg.image_size),
                       "quick": cfg.quick},
            "report": str(tmp / "judge" / "report.html") if cfg.work_dir else None,
            "wall_s": {"data": t_data, "train_reward": t_train, "judge": time.perf_counter() - t0 - t_data - t_train},
        },
    }


def format_report(r: dict[str, Any]) -> str:
    """The four checks against their targets, then the per-policy judge summary."""
    def f(x: float | None, pct: bool = False) -> str:
        if x is None:
            return "n/a"
        return f"{x:.1%}" if pct else f"{x:+.3f}"

    j = r["judge"]
    rows = [("stall_stage_agreement", f(r["stall_stage_agreement"], True), ">= 85%",
             f"{j['matches']}/{j['failed_episodes']} failed episodes, {j['task']}"),
            ("policy_rank_agreement", f(r["policy_rank_agreement"]), "= +1 (same order)",
             "Spearman(mean process score, true success) over " + ", ".join(j["policies"])),
            ("selection_rank_corr", f(r["selection_rank_corr"]), "> sim_only_rank_corr",
             "Spearman(select score, true success on the held-out setting)"),
            ("sim_only_rank_corr", f(r["sim_only_rank_corr"]), "(peer)", "Spearman(sim success alone, true success)")]
    w = [max(len(x[i]) for x in rows) for i in range(3)]
    lines = [f"{'check':<{w[0]}}  {'value':>{w[1]}}  {'target':<{w[2]}}  detail"]
    lines += [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows]
    lines.append("")
    lines.append(f"  {'policy':<8} {'episodes':>8} {'true success':>12} {'process score':>13}")
    for name, g in j["policies"].items():
        lines.append(f"  {name:<8} {g['episodes']:>8} {g['true_success_rate']:>12.0%} "
                     f"{g['mean_process_score']:>13.3f}")
    return "\n".join(lines)
