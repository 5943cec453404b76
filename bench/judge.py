"""Judge and selection checks against simulator truth; the same as `robolearn bench judge`. See bench/README.md.

    .venv/bin/python bench/judge.py        # ~25 min on 2 cores, writes bench/results/judge.json
"""

from __future__ import annotations

import argparse

from robolearn.eval.judge_bench import JudgeBenchConfig, run


def main() -> None:
    d = JudgeBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--work-dir", default="", metavar="DIR",
                   help="keep datasets, models and the judge/select reports here (default: a temp dir, removed)")
    p.add_argument("--quick", action="store_true", help="smoke budget (figures meaningless)")
    a = p.parse_args()
    run(JudgeBenchConfig(json_path=a.json, work_dir=a.work_dir, quick=a.quick))


if __name__ == "__main__":
    main()
