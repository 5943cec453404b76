"""Inference benchmark; the same as `robolearn bench inference`. See robolearn/inference/bench.py.

    .venv/bin/python bench/inference.py                    # ~2-4 min on 2 cores, writes bench/results/inference.json
    .venv/bin/python bench/inference.py --quick            # smoke run
    .venv/bin/python bench/inference.py --device cuda      # also the GPU, eager and with CUDA graphs
"""

from __future__ import annotations

import argparse

from robolearn.inference.bench import POLICIES, InferenceBenchConfig, run


def main() -> None:
    d = InferenceBenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=d.json_path, metavar="FILE", help=f"JSON report path (default {d.json_path})")
    p.add_argument("--quick", action="store_true", help="smoke run: few ticks, one repeat, batches up to 256")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                   help="cuda: also time the GPU (error without one); auto: when one is visible (default)")
    p.add_argument("--compile", action="store_true", help="also time act through torch.compile on the CPU (slow)")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=d.policies, help="policies to time")
    p.add_argument("--repeats", type=int, default=d.repeats, help=f"interleaved timed runs (default {d.repeats})")
    p.add_argument("--threads", type=int, default=d.num_threads,
                   help=f"torch.set_num_threads for every timed run (default {d.num_threads})")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=d.batch_sizes, metavar="B",
                   help=f"batch sizes of the chunk-prediction sweep (default {' '.join(map(str, d.batch_sizes))})")
    a = p.parse_args()
    run(InferenceBenchConfig(json_path=a.json, quick=a.quick, device=a.device, compile=a.compile,
                             policies=a.policies, repeats=a.repeats, num_threads=a.threads,
                             batch_sizes=a.batch_sizes))


if __name__ == "__main__":
    main()
