"""ROS control-loop benchmark: policy_node at 100 Hz over DDS on loopback against a bare relay node (the floor);
the same as `robolearn bench ros`. See bench/README.md.

    .venv/bin/python bench/ros_loop.py        # ~2 min, writes bench/results/ros_loop.json
"""

from __future__ import annotations

import argparse

from robolearn.deploy.ros_bench import RosBenchConfig, run


def main() -> None:
    d = RosBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--duration", type=float, default=d.duration_s, metavar="S",
                   help=f"measured seconds per contender (default {d.duration_s:g})")
    p.add_argument("--policy", default=d.policy, metavar="DIR",
                   help="policy checkpoint (default: train a small MLP BC policy on scripted lift demos first)")
    p.add_argument("--quick", action="store_true", help="smoke run: a few seconds per contender")
    a = p.parse_args()
    run(RosBenchConfig(json_path=a.json, duration_s=a.duration, policy=a.policy, quick=a.quick))


if __name__ == "__main__":
    main()
