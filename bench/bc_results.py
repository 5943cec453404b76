"""Behaviour-cloning results on the native tasks: collect, train, evaluate; prints the README table.

    .venv/bin/python bench/bc_results.py                       # lift and peg_insert x mlp and diffusion
    .venv/bin/python bench/bc_results.py --tasks lift --policies mlp --episodes 20

For each task: 50 scripted demos (state observations, seed 0, `robolearn collect` defaults otherwise);
for each policy: `robolearn train bc` with its defaults (steps as given); then `robolearn eval` on 100
seeded episodes (seed 1000, never seen in training). Success is reported with its Wilson 95%
interval. Writes bench/results/bc_results.json; runs live under runs/bc_results/ (re-running reuses
finished datasets, training runs and evaluations).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

STEPS = {"mlp": 2000, "diffusion": 5000}  # TrainBCConfig's defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["lift", "peg_insert"])
    p.add_argument("--policies", nargs="+", default=["mlp", "diffusion"])
    p.add_argument("--demos", type=int, default=50, help="scripted demos per task (default 50)")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes (default 100)")
    p.add_argument("--steps", type=json.loads, default=STEPS, help=f"training steps per policy (default {STEPS})")
    p.add_argument("--runs", default="runs/bc_results", help="where datasets and runs go")
    p.add_argument("--json", default="bench/results/bc_results.json", help="JSON report path")
    a = p.parse_args()

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train

    runs = Path(a.runs)
    rows = []
    for task in a.tasks:
        data = runs / "data" / task
        if not (data / "meta" / "info.json").exists():
            collect(CollectConfig(task=task, episodes=a.demos, out=str(data), cameras=[], progress=False))
        for policy in a.policies:
            out = runs / f"{task}_{policy}"
            steps = a.steps.get(policy, STEPS.get(policy, 5000))
            t0 = time.perf_counter()
            if not (out / "checkpoints" / "last").exists() or \
                    json.loads((out / "checkpoints" / "last" / "training_state.json").read_text())["step"] < steps:
                train(TrainBCConfig(dataset=str(data), policy=policy, out=str(out), steps=steps, eval_episodes=0))
            train_s = time.perf_counter() - t0
            res = evaluate(EvalConfig(policy=str(out / "checkpoints" / "last"), episodes=a.episodes, seed=1000,
                                      out=str(out / "eval"), video=True, video_episodes=2))
            rows.append({"task": task, "policy": policy, "demos": a.demos, "steps": steps,
                         "success_rate": res["success_rate"], "ci95": res["ci95"], "episodes": res["episodes"],
                         "mean_episode_length": res["mean_episode_length"], "train_s": round(train_s, 1),
                         "stage_reach_rates": res["stage_reach_rates"]})
            print(table(rows))
    # rows of other tasks/policies already in the report stay (a partial re-run updates its own rows)
    path = Path(a.json)
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["task"], r["policy"]) for r in rows}
    rows = [r for r in old if (r["task"], r["policy"]) not in done] + rows
    rows.sort(key=lambda r: (r["task"], r["policy"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {a.json}")


def table(rows: list[dict]) -> str:
    lines = ["| task | policy | success (100 seeded episodes) | 95% Wilson interval | mean length | train steps |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95"]
        lines.append(f"| `{r['task']}` | {r['policy']} | **{r['success_rate']:.0%}** | {lo:.0%}–{hi:.0%} | "
                     f"{r['mean_episode_length']:.0f} | {r['steps']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
