"""VLM benchmark: sandbox throughput, client throughput, cache hits, hostile programs; the same as
`robolearn bench vlm`. See bench/README.md.

    .venv/bin/python bench/vlm.py        # ~1 min, writes bench/results/vlm.json
"""

from __future__ import annotations

import argparse

from robolearn.rewards.vlm.bench import VLMBenchConfig, run


def main() -> None:
    d = VLMBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--no-hostile", action="store_true", help="skip the hostile-program suite")
    a = p.parse_args()
    run(VLMBenchConfig(json_path=a.json, hostile=not a.no_hostile))


if __name__ == "__main__":
    main()
