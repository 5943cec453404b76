"""Simulation throughput benchmark; the same as `robolearn bench sim`. See bench/README.md.

    .venv/bin/python bench/sim_throughput.py               # ~1-3 min, writes bench/results/sim_throughput.json
    .venv/bin/python bench/sim_throughput.py --quick       # ~20 s smoke run
"""

from __future__ import annotations

import argparse
import os

# MuJoCo and robosuite pick their GL backend at import; OSMesa renders off-screen on any machine
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robolearn.sim.bench import BenchConfig, run  # noqa: E402


def main() -> None:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--quick", action="store_true", help="~20 s smoke run with short timed runs")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"timed runs per contender (default {d.repeats})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"control steps per run, no camera (default {d.steps})")
    p.add_argument("--envs", type=int, default=d.num_envs_threaded,
                   help=f"envs in the thread-scaling VecEnv (default {d.num_envs_threaded})")
    p.add_argument("--no-robosuite", action="store_true", help="skip robosuite (vs_robosuite is null)")
    p.add_argument("--no-cameras", action="store_true", help="skip the camera runs (camera_ratio is null)")
    a = p.parse_args()
    run(BenchConfig(json_path=a.json, quick=a.quick, repeats=a.repeats, steps=a.steps, num_envs_threaded=a.envs,
                    include_robosuite=not a.no_robosuite, include_cameras=not a.no_cameras))


if __name__ == "__main__":
    main()
