"""Residual-RL benchmark; the same as `robolearn bench residual`. See bench/README.md.

    .venv/bin/python bench/residual.py            # ~25 min on 2 cores, writes bench/results/residual.json + .png
    .venv/bin/python bench/residual.py --quick    # ~3 min smoke run
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from robolearn.rl.bench import ResidualBenchConfig, run  # noqa: E402


def main() -> None:
    d = ResidualBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--plot", default=d.plot_path, metavar="FILE", help=f"PNG path (default {d.plot_path})")
    p.add_argument("--quick", action="store_true", help="smoke run: the demo's --quick budget, tiny comparisons")
    p.add_argument("--work-dir", default=d.work_dir, help=f"where the runs go (default {d.work_dir})")
    p.add_argument("--no-sparse", action="store_true", help="skip the sparse-reward comparison")
    p.add_argument("--no-sac", action="store_true", help="skip the SAC run")
    a = p.parse_args()
    run(ResidualBenchConfig(json_path=a.json, plot_path=a.plot, quick=a.quick, work_dir=a.work_dir,
                            sparse=not a.no_sparse, sac=not a.no_sac))


if __name__ == "__main__":
    main()
