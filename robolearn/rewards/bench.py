"""Progress-model quality benchmark (`robolearn bench reward`, `bench/reward_quality.py`).

On `pick_place`, from images (one 84x84 camera) and proprioception only:
1. records a training set of scripted-expert episodes, a share of them with injected failures
   (drop, stall), and two held-out sets with other seeds: clean successes and deliberate failures
   (the expert drops the cube after grasping it);
2. trains, on the same data, steps and seed: the stage-aware progress model (failure-aware labels),
   the frame-index baseline (same network, regressing normalized time, no stages) and, unless
   `ablation=false`, the stage model with plain (not failure-aware) labels;
3. scores the held-out episodes through the inference engine and reports
   voc                         mean Spearman of predicted progress vs time over held-out successes (GVL)
   voc_frame_index_baseline    the same for the baseline
   stage_accuracy              predicted stage == annotated stage, over held-out success frames
   failure_pair_accuracy       held-out (failed, successful) pairs where the failed one ends lower
   frames_per_s                live scoring throughput: engine.score over 256 envs (one new frame
                               each, embeddings of earlier frames cached), frames per second
   offline_frames_per_s        whole episodes scored at once (score_episodes)
and draws predicted vs true progress on a few held-out episodes (PNG).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

TARGETS = {"voc": 0.95, "stage_accuracy": 0.90, "failure_pair_accuracy": 0.90, "frames_per_s": 2000.0}


@dataclass
class RewardBenchConfig:
    """What `robolearn bench reward` measures."""

    task: str = "pick_place"
    """task whose scripted-expert episodes are the data"""
    train_episodes: int = 80
    """training episodes"""
    train_failure_fraction: float = 0.3
    """share of training episodes with an injected failure (drop or stall)"""
    test_successes: int = 20
    """held-out clean expert episodes"""
    test_failures: int = 20
    """held-out episodes with an injected drop"""
    steps: int = 1000
    """training steps of each model"""
    batch_size: int = 128
    """training batch"""
    ablation: bool = True
    """also train the stage model without failure-aware labels"""
    throughput_batch: int = 256
    """envs scored per tick in the throughput figure"""
    throughput_ticks: int = 40
    """timed ticks"""
    seed: int = 0
    """seed of the data and the models"""
    json_path: str = "bench/results/reward_quality.json"
    """JSON report (empty: none)"""
    plot_path: str = "bench/results/reward_quality.png"
    """predicted vs true progress on held-out episodes (empty: none)"""
    work_dir: str = ""
    """where datasets and models go (empty: a temporary directory, removed afterwards)"""
    quick: bool = False
    """smoke run: a few episodes and steps"""
    progress: bool = True
    """progress bars"""


def run(cfg: RewardBenchConfig) -> dict:
    from robolearn.sim.bench import machine_info, write_report

    if cfg.quick:
        cfg.train_episodes, cfg.test_successes, cfg.test_failures = 8, 3, 3
        cfg.steps, cfg.throughput_ticks, cfg.ablation = 20, 5, False
    tmp = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="robolearn_reward_bench_"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        report = _measure(cfg, tmp)
    finally:
        if not cfg.work_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    report["config"] = asdict(cfg)
    report["machine"] = machine_info()
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(format_report(report))
    write_report(report, cfg.json_path)
    return report


def _collect(cfg: RewardBenchConfig, out: Path, episodes: int, seed: int, failure_fraction: float,
             modes: list[str]) -> Path:
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect

    if (out / "meta" / "info.json").exists():
        return out
    return collect(CollectConfig(task=cfg.task, episodes=episodes, out=str(out), seed=seed, cameras=["front"],
                                 image_size=(84, 84), failure_fraction=failure_fraction, failure_modes=modes,
                                 fsync=False, progress=cfg.progress))


def _train(cfg: RewardBenchConfig, data: Path, out: Path, options: dict) -> tuple[Path, float]:
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train

    t0 = time.perf_counter()
    train(TrainRewardConfig(dataset=str(data), out=str(out), model_options=options, steps=cfg.steps,
                            batch_size=cfg.batch_size, val_fraction=0.0, seed=cfg.seed, save_every=cfg.steps,
                            progress=cfg.progress, log_every=max(1, min(50, cfg.steps)), val_every=cfg.steps))
    return out / "checkpoints" / "last", time.perf_counter() - t0


def _held_out(reader, model, episodes: list[int]):
    """(scores, truth, success) of `episodes` under `model`'s window and labels."""
    from robolearn.inference.engine import InferenceEngine
    from robolearn.rewards.frames import EpisodeFrames
    from robolearn.rewards.labels import dataset_episode_labels

    table = EpisodeFrames(reader, model.config.obs_keys, episodes)
    scores = InferenceEngine(model, device="cpu").score_episodes(table)
    names = reader.meta.stage_names
    priors = model.priors.numpy() if model.has_stages else np.full(len(names), 1.0 / len(names))
    mean_frames = np.asarray(model.metadata["stage_mean_frames"])
    truth = []
    for e in episodes:
        lab = dataset_episode_labels(reader, e, priors, mean_frames, bool(getattr(model.config, "failure_aware", True)))
        truth.append({"stage": lab.stage, "progress": lab.progress})
    return scores, truth, np.array([bool(reader.meta.success(e)) for e in episodes])


def _measure(cfg: RewardBenchConfig, tmp: Path) -> dict:
    from robolearn.data.dataset import DatasetReader
    from robolearn.rewards import load_reward_model
    from robolearn.rewards.metrics import failure_pair_accuracy, voc

    train_dir = _collect(cfg, tmp / "train", cfg.train_episodes, cfg.seed, cfg.train_failure_fraction,
                         ["drop", "stall"])
    ok_dir = _collect(cfg, tmp / "test_success", cfg.test_successes, cfg.seed + 1000, 0.0, ["drop"])
    fail_dir = _collect(cfg, tmp / "test_failure", cfg.test_failures, cfg.seed + 2000, 1.0, ["drop"])
    train_reader, ok_reader, fail_reader = DatasetReader(train_dir), DatasetReader(ok_dir), DatasetReader(fail_dir)
    ok_eps = [e for e in range(ok_reader.num_episodes) if ok_reader.meta.success(e)]
    fail_eps = [e for e in range(fail_reader.num_episodes) if fail_reader.meta.success(e) is False]
    variants = {"stage": {}, "frame_index": {"head": "frame_index"}}
    if cfg.ablation:
        variants["stage_plain_labels"] = {"failure_aware": False}
    rows: dict[str, dict] = {}
    models = {}
    for name, options in variants.items():
        ckpt, wall = _train(cfg, train_dir, tmp / f"model_{name}", options)
        model = load_reward_model(ckpt)
        models[name] = model
        s_ok, t_ok, _ = _held_out(ok_reader, model, ok_eps)
        s_fail, _, _ = _held_out(fail_reader, model, fail_eps)
        row = {"train_s": wall, "voc": voc([s["progress"] for s in s_ok]),
               "failure_pair_accuracy": failure_pair_accuracy(np.array([s["progress"][-1] for s in s_fail]),
                                                              np.array([s["progress"][-1] for s in s_ok])),
               "final_progress_success": float(np.mean([s["progress"][-1] for s in s_ok])),
               "final_progress_failure": float(np.mean([s["progress"][-1] for s in s_fail])) if s_fail else None}
        if model.has_stages:
            hits = np.concatenate([s["stage"] == t["stage"] for s, t in zip(s_ok, t_ok)])
            row["stage_accuracy"] = float(hits.mean())
        rows[name] = row
    fps_live, fps_offline = _throughput(cfg, models["stage"], ok_reader, ok_eps)
    report = {
        "voc": rows["stage"]["voc"],
        "voc_frame_index_baseline": rows["frame_index"]["voc"],
        "stage_accuracy": rows["stage"]["stage_accuracy"],
        "failure_pair_accuracy": rows["stage"]["failure_pair_accuracy"],
        "failure_pair_accuracy_frame_index_baseline": rows["frame_index"]["failure_pair_accuracy"],
        "frames_per_s": fps_live,
        "offline_frames_per_s": fps_offline,
        "models": rows,
        "data": {"train_episodes": train_reader.num_episodes,
                 "train_failed": int(sum(not train_reader.meta.success(e) for e in range(train_reader.num_episodes))),
                 "test_successes": len(ok_eps), "test_failures": len(fail_eps)},
        "targets": TARGETS,
    }
    if cfg.ablation:
        report["failure_pair_accuracy_plain_labels"] = rows["stage_plain_labels"]["failure_pair_accuracy"]
    report["pass"] = {k: bool(report[k] >= v) for k, v in TARGETS.items()}
    report["pass"]["voc_beats_frame_index_baseline"] = bool(report["voc"] >= report["voc_frame_index_baseline"])
    if cfg.plot_path:
        _plot(cfg, models["stage"], ok_reader, ok_eps[:2], fail_reader, fail_eps[:1])
        report["plot"] = cfg.plot_path
    return report


def _throughput(cfg: RewardBenchConfig, model, reader, episodes: list[int]) -> tuple[float, float]:
    """(live frames/s at `throughput_batch` envs, offline frames/s over whole episodes), medians."""
    from robolearn.inference.engine import InferenceEngine
    from robolearn.rewards.frames import EpisodeFrames

    table = EpisodeFrames(reader, model.config.obs_keys, episodes)
    n = cfg.throughput_batch
    engine = InferenceEngine(model, num_envs=n, device="cpu")
    rng = np.random.default_rng(cfg.seed)
    ticks = [{k: table.data[k][rng.integers(0, len(table), n)] for k in model.config.obs_keys}
             for _ in range(cfg.throughput_ticks + 3)]
    times = []
    for i, obs in enumerate(ticks):
        t0 = time.perf_counter()
        engine.score(obs)
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    live = n / statistics.median(times)
    offline = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine.score_episodes(table)
        offline.append(len(table) / (time.perf_counter() - t0))
    return float(live), float(statistics.median(offline))


def _plot(cfg, model, ok_reader, ok_eps, fail_reader, fail_eps) -> None:
    from robolearn.rewards.plot import episode_curves, plot_curves

    curves = episode_curves(model, ok_reader, ok_eps, "cpu") + episode_curves(model, fail_reader, fail_eps, "cpu")
    titles = [f"held-out success {e}" for e in ok_eps] + [f"held-out failure {e} (drop)" for e in fail_eps]
    plot_curves(curves, titles, list(model.stage_names), Path(cfg.plot_path), ok_reader.meta.fps)
    print(f"wrote {cfg.plot_path}")


def format_report(r: dict) -> str:
    lines = [f"progress model quality on {r['config']['task']} (images + proprioception), held-out episodes",
             f"  data: {r['data']['train_episodes']} training episodes ({r['data']['train_failed']} failed), "
             f"{r['data']['test_successes']} held-out successes, {r['data']['test_failures']} held-out failures",
             "", f"  {'model':<22}{'voc':>8}{'stage acc':>11}{'fail pairs':>12}{'final p (ok/fail)':>20}{'train s':>9}"]
    for name, row in r["models"].items():
        acc = f"{row['stage_accuracy']:.3f}" if "stage_accuracy" in row else "-"
        fin = f"{row['final_progress_success']:.2f}/{row['final_progress_failure'] or float('nan'):.2f}"
        lines.append(f"  {name:<22}{row['voc']:>8.3f}{acc:>11}{row['failure_pair_accuracy']:>12.3f}{fin:>20}"
                     f"{row['train_s']:>9.0f}")
    lines += ["", f"  throughput: {r['frames_per_s']:.0f} frames/s live (batch {r['config']['throughput_batch']}), "
                  f"{r['offline_frames_per_s']:.0f} frames/s offline", "", "  target checks:"]
    for k, v in r["targets"].items():
        lines.append(f"    {k:<24} {r[k]:>10.3f}  target >= {v:<8g} {'pass' if r['pass'][k] else 'FAIL'}")
    lines.append(f"    voc vs frame-index baseline {r['voc']:.3f} vs {r['voc_frame_index_baseline']:.3f}  "
                 f"{'pass' if r['pass']['voc_beats_frame_index_baseline'] else 'FAIL'}")
    return "\n".join(lines)
