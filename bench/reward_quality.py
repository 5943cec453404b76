"""Progress reward-model quality benchmark; the same as `robolearn bench reward`. See bench/README.md.

    .venv/bin/python bench/reward_quality.py            # ~15 min, writes bench/results/reward_quality.json + .png
    .venv/bin/python bench/reward_quality.py --quick    # ~1 min smoke run
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robolearn.rewards.bench import RewardBenchConfig, run  # noqa: E402


def main() -> None:
    d = RewardBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--plot", default=d.plot_path, metavar="FILE", help=f"PNG path (default {d.plot_path})")
    p.add_argument("--quick", action="store_true", help="smoke run: a few episodes and steps")
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps per model (default {d.steps})")
    p.add_argument("--work-dir", default="", help="keep datasets and models here (default: a temp dir)")
    p.add_argument("--no-ablation", action="store_true", help="skip the plain-label ablation model")
    a = p.parse_args()
    run(RewardBenchConfig(json_path=a.json, plot_path=a.plot, quick=a.quick, steps=a.steps, work_dir=a.work_dir,
                          ablation=not a.no_ablation, progress=False))


if __name__ == "__main__":
    main()
