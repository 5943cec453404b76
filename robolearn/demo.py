"""`robolearn demo`: the main job on the built-in tasks, end to end.

Until the learning pipeline lands this runs what exists: build every native task, roll its scripted
expert over seeded episodes in the batched env, and write under `runs/demo/`:
  <task>.mp4        a 2x2 mosaic of the first episodes, front camera, with stage and success overlaid
  summary.md/.json  success table with Wilson 95% intervals and mean steps to success
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robolearn.stats import wilson_interval


@dataclass
class DemoConfig:
    """What `robolearn demo` runs."""

    tasks: list[str] = field(default_factory=list)
    """tasks to run; empty means every registered native task"""
    episodes: int = 20
    """seeded episodes per task (one per env, stepped as one batch)"""
    quick: bool = False
    """smoke run: 4 episodes per task"""
    seed: int = 0
    """base seed of the episodes"""
    num_threads: int = 2
    """physics threads"""
    camera: str = "front"
    """camera of the videos"""
    video_size: tuple[int, int] = (240, 320)
    """(height, width) of each video tile, pixels"""
    video_episodes: int = 4
    """episodes shown in each video (tiled 2 x 2)"""
    out: str = "runs/demo"
    """output directory"""


def run_task(task: str, cfg: DemoConfig, out: Path) -> dict:
    """Roll the expert of one task over `episodes` seeded envs; write its video; return its row."""
    from tqdm import tqdm

    from robolearn.sim.registry import make_env
    from robolearn.sim.render import CameraRenderer
    from robolearn.video import overlay_text, tile, write_mp4

    n = 4 if cfg.quick else cfg.episodes
    env = make_env(task, num_envs=n, seed=cfg.seed, num_threads=cfg.num_threads, terminate_on_success=False)
    env.reset()
    expert = env.task.make_expert(n, env.cfg.max_dpos, env.cfg.max_drot)
    shown = min(cfg.video_episodes, n)
    renderer = CameraRenderer(env.nominal, [cfg.camera], *cfg.video_size, depth=False)
    stages = env.task.stages
    success = np.zeros(n, bool)
    first_success = np.full(n, -1)
    frames = []
    t0 = time.perf_counter()
    steps = env.max_episode_steps - 1  # one full episode per env, no auto-reset
    for t in tqdm(range(steps), desc=f"{task:>12}", unit="step", leave=False):
        action, _ = expert.act(env.state)
        _, _, _, _, info = env.step(env.expert_action(action))
        newly = info["success"] & ~success
        first_success[newly] = t + 1
        success |= info["success"]
        tiles = [
            overlay_text(renderer.render(env.models[i], env.datas[i], 0)[0],
                     [f"{task} #{i}", f"stage: {stages[info['stage'][i]]}", "SUCCESS" if success[i] else ""],
                     bool(success[i]))
            for i in range(shown)
        ]
        frames.append(tile(np.stack(tiles), cols=2))
    elapsed = time.perf_counter() - t0
    renderer.close()
    env.close()
    video = write_mp4(out / f"{task}.mp4", frames, fps=env.cfg.control_hz)
    k = int(success.sum())
    lo, hi = wilson_interval(k, n)
    return {
        "task": task,
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "ci95": [lo, hi],
        "mean_steps_to_success": float(first_success[success].mean()) if k else None,
        "max_episode_steps": env.max_episode_steps,
        "wall_s": elapsed,
        "video": str(video),
    }


def format_table(rows: list[dict]) -> str:
    head = "| task | episodes | success | 95% CI (Wilson) | steps to success | video |\n|---|---|---|---|---|---|\n"
    def steps(r: dict) -> str:
        return "-" if r["mean_steps_to_success"] is None else f"{r['mean_steps_to_success']:.0f}"

    body = "".join(
        f"| {r['task']} | {r['episodes']} | {r['success_rate']:.0%} ({r['successes']}/{r['episodes']}) | "
        f"{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} | {steps(r)} | {Path(r['video']).name} |\n"
        for r in rows
    )
    return head + body


def run(cfg: DemoConfig) -> dict:
    from robolearn.sim.registry import get_task_class, native_task_names

    tasks = cfg.tasks or native_task_names()
    for t in tasks:
        get_task_class(t)  # unknown names fail before any work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_task(t, cfg, out) for t in tasks]
    table = format_table(rows)
    (out / "summary.md").write_text("# Scripted experts on the native tasks\n\n" + table)
    summary = {"tasks": rows, "seed": cfg.seed, "quick": cfg.quick}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table)
    print(f"videos and summary in {out}/")
    return summary
