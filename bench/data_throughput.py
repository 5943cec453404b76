"""Dataset throughput benchmark; the same as `robolearn bench data`. See bench/README.md.

    .venv/bin/python bench/data_throughput.py            # ~2 min, writes bench/results/data_throughput.json
    .venv/bin/python bench/data_throughput.py --quick    # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robolearn.data.bench import DataBenchConfig, run  # noqa: E402


def main() -> None:
    d = DataBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 episodes, one repeat")
    p.add_argument("--episodes", type=int, default=d.episodes, help=f"episodes of data (default {d.episodes})")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"interleaved repeats (default {d.repeats})")
    a = p.parse_args()
    run(DataBenchConfig(json_path=a.json, quick=a.quick, episodes=a.episodes, repeats=a.repeats))


if __name__ == "__main__":
    main()
