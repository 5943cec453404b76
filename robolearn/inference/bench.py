"""Inference benchmark: the latency of one control tick and the cost of a chunk prediction per batch.

Two policies, untrained (timing does not depend on the weights), built without a dataset for
features shaped like the `lift` task (`observation.state` (23,), `observation.environment_state`
(10,), `action` (7,), synthetic statistics): MLP BC (default `MLPConfig`) and Diffusion Policy
(default `DiffusionConfig`, 10 DDIM steps, state observations).

  latency     `InferenceEngine(policy, num_envs=1, trace=True).act(obs)` with numpy observations, one
              call per control tick, each timed alone (`time.perf_counter`): validation, history,
              queues, the forward pass on the ticks that predict a new chunk (every `n_action_steps`-th
              tick of an episode) and the conversion back to numpy. `trace=True` is how the control
              loop runs a policy (`robolearn.deploy.ControlLoop`, the ROS 2 policy node): the chunk
              predictor as one frozen TorchScript graph, bit-identical to eager. The same engine eager
              is timed too (`cpu_eager/*` latencies, `cpu_eager_*` keys). p50/p99 pool the ticks of every repeat;
              the p99 of the predicting ticks alone is reported too (they are what a p99 over all
              ticks measures once they are more than 1% of the ticks).
  throughput  one chunk prediction through the eager engine's predictor (what `act` and
              `predict_chunk` call; evaluation and RL step many envs eagerly) for a batch of B
              histories already on the device, the result copied back to numpy, for B in
              `batch_sizes`; per-sample cost = time / B, and `batch256_per_sample_ratio` = diffusion's
              per-sample cost at 256 / at 1 (how much of the batch-1 cost is fixed overhead that
              batching shares out).

Everything runs on `num_threads` torch threads (`torch.set_num_threads`, restored afterwards; 1 by
default: a control process pinned to one core, and no OpenMP hand-off in the latency path). Each
timed run is preceded by untimed warm-up; runs are interleaved across contenders (the order
alternates between repeats) so that a machine that slows down for a while hurts all of them alike;
per-batch figures are medians over repeats and ratios medians of per-repeat ratios. On a machine
with CUDA (`device=auto` or `cuda`) the same latencies and sweep are timed on the GPU, eagerly and
with CUDA graphs (`cuda_*` and `cuda_graphs_*` keys); without one they are null, with a note.
`compile=true` adds the CPU latencies through `torch.compile` (`cpu_compiled_*`; compiling the
diffusion policy takes minutes on a small machine, once per process).
"""

from __future__ import annotations

import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch

from robolearn.errors import ConfigError

FORMAT_VERSION = 1
TARGETS = {"mlp_p99_ms": 1.0, "diffusion_p99_ms": 30.0, "batch256_per_sample_ratio": 0.05}
"""the highest value of each figure that counts as PASS (CPU, batch 1 for the latencies)"""
POLICIES = ("mlp", "diffusion")
# quick=true caps these fields at these values (a smoke run of seconds to a minute)
_QUICK = {"mlp_ticks": 200, "diffusion_ticks": 40, "warmup_ticks": 8, "repeats": 1, "sweep_min_seconds": 0.0}
_QUICK_MAX_BATCH = 256

LIFT_SHAPES = {"observation.state": (23,), "observation.environment_state": (10,), "action": (7,)}
"""the features of the `lift` task the policies are built for"""


@dataclass
class InferenceBenchConfig:
    """Inference latency and throughput benchmark (`robolearn bench inference`)."""

    policies: list[Literal["mlp", "diffusion"]] = field(default_factory=lambda: list(POLICIES))
    """policies timed; a policy left out (or whose module is not installed) has null figures"""
    mlp_options: dict[str, Any] = field(default_factory=dict)
    """MLPConfig fields of the MLP policy (empty: the default MLPConfig)"""
    diffusion_options: dict[str, Any] = field(default_factory=lambda: {"num_inference_steps": 10})
    """DiffusionConfig fields of the diffusion policy (default: DiffusionConfig with 10 DDIM steps)"""
    mlp_ticks: int = 2000
    """control ticks per timed latency run of the MLP policy"""
    diffusion_ticks: int = 500
    """control ticks per timed latency run of the diffusion policy"""
    episode_ticks: int = 200
    """ticks between engine.reset() calls (untimed); the first tick of each episode is timed like any other"""
    warmup_ticks: int = 50
    """untimed ticks before each timed latency run"""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 16, 64, 256, 1024])
    """batch sizes of the chunk-prediction sweep (batch256_per_sample_ratio needs 1 and 256)"""
    sweep_min_seconds: float = 0.5
    """each timed sweep run repeats its prediction until this long has passed (at least once)"""
    repeats: int = 3
    """timed runs per contender, interleaved across contenders"""
    num_threads: int = 1
    """torch intra-op threads for every timed run (torch.set_num_threads; the previous value is restored)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """CPU figures are always timed; auto: also CUDA when a GPU is visible, cuda: also CUDA (error without), cpu: not"""
    compile: bool = False
    """also time act with torch.compile on the CPU (cpu_compiled_* keys; latency only; minutes of compiling)"""
    seed: int = 0
    """seed of the policies' weights and of the observation stream"""
    quick: bool = False
    """smoke run: caps the ticks, warm-up and repeats, one call per sweep run, batches up to 256"""
    json_path: str | None = "bench/results/inference.json"
    """where the JSON report is written (parent folders are created); null writes none"""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and what it must be."""

        def bad(name: str, what: str) -> None:
            raise ConfigError(f"inference bench config: {name}={getattr(self, name)!r} is invalid; it must be {what}")

        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or len(set(self.policies)) != len(self.policies):
            bad("policies", f"a list of distinct names among {', '.join(POLICIES)}")
        for name in ("mlp_ticks", "diffusion_ticks", "episode_ticks", "repeats", "num_threads"):
            if getattr(self, name) < 1:
                bad(name, "a positive integer")
        if self.warmup_ticks < 0:
            bad("warmup_ticks", "0 or a positive integer")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes) or len(set(self.batch_sizes)) != len(
                self.batch_sizes):
            bad("batch_sizes", "a non-empty list of distinct positive integers")
        if self.sweep_min_seconds < 0:
            bad("sweep_min_seconds", ">= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", "auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("inference bench config: device=cuda but no CUDA device is visible; use device=auto "
                              "(CUDA figures are then null on this machine) or device=cpu")

    def effective(self) -> InferenceBenchConfig:
        """This config with the `quick` caps applied (the one a run uses and reports)."""
        if not self.quick:
            return self
        small = [b for b in self.batch_sizes if b <= _QUICK_MAX_BATCH] or [min(self.batch_sizes)]
        return replace(self, batch_sizes=small, **{k: min(getattr(self, k), v) for k, v in _QUICK.items()})


def lift_features() -> tuple[dict, dict]:
    """(features, stats) shaped like the `lift` task's dataset: float32 state, environment state and
    action; statistics mean 0, std 1, min -1, max 1 (enough to build a policy without a dataset)."""
    from robolearn.data import Feature

    features = {k: Feature("float32", shape) for k, shape in LIFT_SHAPES.items()}
    stats = {k: {"mean": np.zeros(shape, np.float32), "std": np.ones(shape, np.float32),
                 "min": -np.ones(shape, np.float32), "max": np.ones(shape, np.float32)}
             for k, shape in LIFT_SHAPES.items()}
    return features, stats


def build_policy(name: str, options: dict[str, Any], seed: int):
    """An untrained policy `name` for `lift_features()`, weights drawn from `seed`, in eval mode."""
    from robolearn.policies import make_policy

    features, stats = lift_features()
    torch.manual_seed(seed)
    return make_policy(name, features, stats, dict(options)).eval()


def observation_stream(policy, num_envs: int, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    """`count` ticks of random observations {key: (num_envs, *shape) float32}, cycled through by the runs."""
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal((num_envs, *policy.features[k].shape), dtype=np.float32)
             for k in policy.config.obs_keys} for _ in range(count)]


# ---- timed runs ------------------------------------------------------------------------------------


def time_ticks(engine, stream: list[dict], ticks: int, warmup: int, episode_ticks: int) -> np.ndarray:
    """Seconds of each of `ticks` calls to `engine.act`, after `warmup` untimed ones; the engine is reset
    (untimed) before the warm-up, before the timed ticks and every `episode_ticks` ticks."""
    act, reset, clock = engine.act, engine.reset, time.perf_counter
    reset()
    for i in range(warmup):
        act(stream[i % len(stream)])
    reset()
    out = np.empty(ticks)
    for i in range(ticks):
        if i and i % episode_ticks == 0:
            reset()
        obs = stream[i % len(stream)]
        t0 = clock()
        act(obs)
        out[i] = clock() - t0
    return out


def predicting_ticks(policy, ticks: int, episode_ticks: int) -> np.ndarray:
    """Which of the ticks timed by `time_ticks` predict a chunk: the first of each episode and every
    `n_action_steps`-th after it (every tick with temporal ensembling)."""
    cfg = policy.config
    if cfg.temporal_ensemble:
        return np.ones(ticks, bool)
    return (np.arange(ticks) % episode_ticks) % cfg.n_action_steps == 0


def chunk_call(engine, batch: int, seed: int) -> Callable[[], np.ndarray]:
    """One chunk prediction for `batch` histories through the engine's predictor (eager, compiled or a
    CUDA graph replay), inputs already on its device, the chunk copied back to numpy (which waits for
    the device)."""
    policy = engine.policy
    rng = np.random.default_rng(seed)
    t = policy.config.n_obs_steps
    obs = {k: torch.as_tensor(rng.standard_normal((batch, t, *policy.features[k].shape), dtype=np.float32),
                              device=engine.device) for k in policy.config.obs_keys}
    predict = engine.runner._predict
    return lambda: predict(obs).cpu().numpy()


def time_calls(fn: Callable[[], Any], min_seconds: float) -> tuple[float, int]:
    """(median seconds per call, calls): `fn` called back to back, each timed, until `min_seconds`."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 - start >= min_seconds:
            return statistics.median(times), len(times)


def latency_summary(samples: list[np.ndarray], predicting: np.ndarray) -> dict[str, Any]:
    """p50/p99/max in ms over the pooled ticks of every run, over its predicting ticks and over the rest,
    and each run's own p50/p99."""
    ms = np.concatenate(samples) * 1e3
    pred = np.concatenate([predicting] * len(samples))

    def pct(x: np.ndarray, q: float) -> float | None:
        return float(np.percentile(x, q)) if len(x) else None

    return {
        "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99), "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()), "ticks": len(ms),
        "predict_ticks": int(pred.sum()), "predict_p50_ms": pct(ms[pred], 50), "predict_p99_ms": pct(ms[pred], 99),
        "queue_p50_ms": pct(ms[~pred], 50), "queue_p99_ms": pct(ms[~pred], 99),
        "runs": [{"p50_ms": float(np.percentile(s * 1e3, 50)), "p99_ms": float(np.percentile(s * 1e3, 99)),
                  "predict_p99_ms": pct(s[predicting] * 1e3, 99), "max_ms": float(s.max() * 1e3)} for s in samples],
    }


def sweep_summary(runs: dict[int, list[float]], calls: dict[int, list[int]]) -> dict[str, Any]:
    """Per batch size: median ms per call and us per sample over repeats, every run, and the paired
    per-repeat ratio of per-sample cost at 256 to at 1."""
    per_call = {b: statistics.median(v) * 1e3 for b, v in runs.items()}
    out: dict[str, Any] = {
        "per_call_ms": {str(b): v for b, v in per_call.items()},
        "per_sample_us": {str(b): v * 1e3 / b for b, v in per_call.items()},
        "samples_per_s": {str(b): b / (v / 1e3) for b, v in per_call.items()},
        "runs_ms": {str(b): [x * 1e3 for x in v] for b, v in runs.items()},
        "calls_per_run": {str(b): v for b, v in calls.items()},
    }
    out["batch256_per_sample_ratio"] = None
    if 1 in runs and 256 in runs:
        pairs = [(t256 / 256) / t1 for t1, t256 in zip(runs[1], runs[256])]
        out["batch256_per_sample_ratio"] = statistics.median(pairs)
        out["batch256_per_sample_ratio_runs"] = pairs
    return out


# ---- the run -----------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """The simulation benchmark's machine info plus torch's build, threads and GPU."""
    from robolearn.sim.bench import machine_info as base

    info = base()
    info["versions"] = {**info["versions"], "torch": torch.__version__}
    info["env"] = {**info["env"], **{k: os.environ.get(k) for k in ("MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}}
    info["torch"] = {"mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
                     "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def run(cfg: InferenceBenchConfig) -> dict[str, Any]:
    """Time every contender `repeats` times, interleaved; print a table; write and return the report.

    Returns a dict with `mlp_p99_ms`, `diffusion_p99_ms` and `batch256_per_sample_ratio` (None where a
    policy was left out) at the top level, their p50s and predicting-tick p99s, `latency` and `sweep`
    per policy (and per CUDA variant), the `cuda_*` figures (None without a GPU; `notes` says why),
    `targets`, `passed`, `torch_threads`, `config`, `machine` and `timestamp`.
    """
    from robolearn.inference import InferenceEngine

    cfg.validate()
    cfg = cfg.effective()
    started = time.perf_counter()
    machine = machine_info()
    notes: list[str] = []
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        policies = {}
        for name in cfg.policies:
            options = cfg.mlp_options if name == "mlp" else cfg.diffusion_options
            try:
                policies[name] = build_policy(name, options, cfg.seed)
            except ModuleNotFoundError as e:  # e.g. a checkout without robolearn/policies/diffusion yet
                notes.append(f"{name}: skipped, its module is not installed ({e})")
        # variants: (label, device, cuda_graphs, torch.compile, trace); the traced CPU one (how the control
        # loop runs) is what the latency targets are about, the eager CPU sweep what the ratio is about
        variants = [("cpu", "cpu", False, False, True), ("cpu_eager", "cpu", False, False, False)]
        if cfg.compile:
            variants.append(("cpu_compiled", "cpu", False, True, False))
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
            variants += [("cuda", "cuda", False, False, False), ("cuda_graphs", "cuda", True, False, False)]
        else:
            notes.append("cuda: skipped (" + ("device=cpu" if cfg.device == "cpu" else "no CUDA device visible")
                         + "); every cuda_* figure is null")
        units: list[tuple[str, Callable[[], None]]] = []
        latency_runs: dict[tuple[str, str], list[np.ndarray]] = {}
        sweep_runs: dict[tuple[str, str], dict[int, list[float]]] = {}
        sweep_calls: dict[tuple[str, str], dict[int, list[int]]] = {}
        predicting: dict[str, np.ndarray] = {}
        errors: dict[str, str] = {}
        for name, policy in policies.items():
            ticks = cfg.mlp_ticks if name == "mlp" else cfg.diffusion_ticks
            predicting[name] = predicting_ticks(policy, ticks, cfg.episode_ticks)
            stream = observation_stream(policy, 1, 256, cfg.seed)
            on = {"cpu": policy}  # InferenceEngine moves its policy: one copy per device
            for label, device, graphs, compiled, traced in variants:
                key = (label, name)
                try:
                    if device not in on:
                        on[device] = copy.deepcopy(policy)
                    engine = InferenceEngine(on[device], 1, device=device, compile=compiled, cuda_graphs=graphs,
                                             trace=traced)
                    engine.act(stream[0])  # builds the runner's buffers (compiles, captures the CUDA graph)
                    # CUDA graphs replay one batch shape: an engine of b envs per batch size; a compiled
                    # engine would compile once per shape (minutes each), so it has no sweep; the CPU
                    # sweep is the eager engine's (what evaluation and RL run)
                    calls = {} if compiled or traced else {
                        b: chunk_call(InferenceEngine(on[device], b, device=device, cuda_graphs=True)
                                      if graphs else engine, b, cfg.seed) for b in cfg.batch_sizes}
                    for fn in calls.values():
                        fn()  # warm-up (and the graph capture of each batch shape)
                except Exception as e:  # a variant beyond the CPU ones that cannot run is reported, not fatal
                    if device == "cpu" and not compiled:
                        raise
                    errors[f"{label}_{name}"] = f"{type(e).__name__}: {e}"
                    notes.append(f"{label} {name}: not timed, {type(e).__name__}: {e}")
                    continue
                latency_runs[key] = []

                def latency(key=key, engine=engine, stream=stream, ticks=ticks) -> None:
                    latency_runs[key].append(time_ticks(engine, stream, ticks, cfg.warmup_ticks, cfg.episode_ticks))

                def sweep(key=key, calls=calls) -> None:
                    # batch sizes in alternating order between repeats; 1 and 256 are timed in the same run
                    done = len(sweep_runs[key][cfg.batch_sizes[0]])
                    for b in cfg.batch_sizes if done % 2 == 0 else cfg.batch_sizes[::-1]:
                        t, n = time_calls(calls[b], cfg.sweep_min_seconds)
                        sweep_runs[key][b].append(t)
                        sweep_calls[key][b].append(n)

                units.append((f"{label} {name} latency", latency))
                if calls:
                    sweep_runs[key], sweep_calls[key] = {b: [] for b in calls}, {b: [] for b in calls}
                    units.append((f"{label} {name} sweep", sweep))

        for r in range(cfg.repeats):
            for label, fn in units if r % 2 == 0 else units[::-1]:
                print(f"repeat {r + 1}/{cfg.repeats}: {label}", flush=True)
                fn()
        torch_threads = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    finally:
        torch.set_num_threads(threads_before)

    latency = {f"{label}/{name}": latency_summary(v, predicting[name]) for (label, name), v in latency_runs.items()}
    sweep = {f"{label}/{name}": sweep_summary(sweep_runs[(label, name)], sweep_calls[(label, name)])
             for label, name in sweep_runs}
    figures: dict[str, Any] = {}
    for label in ("cpu", "cpu_eager", "cpu_compiled", "cuda", "cuda_graphs"):
        prefix = "" if label == "cpu" else f"{label}_"
        swept = "cpu_eager" if label == "cpu" else label  # the traced engine has no sweep: the eager one's
        for name in POLICIES:
            lat = latency.get(f"{label}/{name}", {})
            for stat in ("p50_ms", "p99_ms", "predict_p99_ms", "max_ms"):
                figures[f"{prefix}{name}_{stat}"] = lat.get(stat)
            if label not in ("cpu_compiled", "cpu_eager"):  # no sweep of their own
                figures[f"{prefix}{name}_batch256_per_sample_ratio"] = sweep.get(f"{swept}/{name}", {}).get(
                    "batch256_per_sample_ratio")
        if label not in ("cpu_compiled", "cpu_eager"):
            figures[f"{prefix}batch256_per_sample_ratio"] = figures[f"{prefix}diffusion_batch256_per_sample_ratio"]
    if "diffusion" in policies and not {1, 256} <= set(cfg.batch_sizes):
        notes.append("batch256_per_sample_ratio: null, batch_sizes must include 1 and 256")
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "format_version": FORMAT_VERSION,
        **{k: figures[k] for k in TARGETS},
        "targets": TARGETS,
        "passed": {k: (None if figures[k] is None else bool(figures[k] <= v)) for k, v in TARGETS.items()},
        **{k: v for k, v in figures.items() if k not in TARGETS},
        "latency": latency,
        "sweep": sweep,
        "policies": {name: {"type": name, "config": asdict(p.config),
                            "parameters": sum(x.numel() for x in p.parameters())} for name, p in policies.items()},
        "torch_threads": torch_threads,
        "errors": errors,
        "notes": notes,
        "config": asdict(cfg),
        "machine": machine,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(format_table(report))
    from robolearn.sim.bench import write_report

    write_report(report, cfg.json_path)
    return report


def format_table(report: dict[str, Any]) -> str:
    """The printed table: tick latency per policy and device, the sweep, each target figure with PASS/FAIL."""

    def f(v: float | None, digits: int = 3) -> str:
        if v is None:
            return "-"
        return f"{v:.{digits}f}" if v < 100 else f"{v:.0f}"

    cfg = report["config"]
    threads = report["torch_threads"]["intra_op"]
    lines = [f"latency of one control tick: InferenceEngine.act, 1 env, numpy obs, {threads} torch thread(s) (ms); "
             "cpu: trace=true (as the control loop runs), cpu_eager: the same engine eager",
             f"{'policy':<24} {'ticks':>6} {'p50':>7} {'p99':>7} {'max':>7} | {'predicting':>10} {'p50':>7} "
             f"{'p99':>7} | {'others p99':>10}"]
    for key, s in report["latency"].items():
        lines.append(f"{key:<24} {s['ticks']:>6} {f(s['p50_ms']):>7} {f(s['p99_ms']):>7} {f(s['max_ms']):>7} | "
                     f"{s['predict_ticks']:>10} {f(s['predict_p50_ms']):>7} {f(s['predict_p99_ms']):>7} | "
                     f"{f(s['queue_p99_ms']):>10}")
    batches = [str(b) for b in cfg["batch_sizes"]]
    lines += ["", "one chunk prediction per batch size B: ms per call / us per sample (median over repeats)",
              f"{'policy':<24} " + " ".join(f"{'B=' + b:>15}" for b in batches)]
    for key, s in report["sweep"].items():
        cells = [f"{f(s['per_call_ms'][b], 2)}/{f(s['per_sample_us'][b], 1)}" for b in batches]
        lines.append(f"{key:<24} " + " ".join(f"{c:>15}" for c in cells))
    lines += ["", f"{'figure':<42} {'value':>9} {'target':>8}  result"]
    for k, target in report["targets"].items():
        v = report[k]
        result = "skipped" if v is None else ("PASS" if v <= target else "FAIL")
        lines.append(f"{k:<42} {f(v, 4):>9} {'<= ' + format(target, 'g'):>8}  {result}")
    context = ["mlp_p50_ms", "mlp_predict_p99_ms", "diffusion_p50_ms", "diffusion_predict_p99_ms",
               "cpu_eager_mlp_p99_ms", "cpu_eager_diffusion_p99_ms", "mlp_batch256_per_sample_ratio"]
    context += [k for k in report if k.startswith("cuda") and report[k] is not None]
    for k in context:
        if report.get(k) is not None:
            lines.append(f"{k:<42} {f(report[k], 4):>9} {'':>8}  (context)")
    lines += [f"note: {n}" for n in report["notes"]]
    m = report["machine"]
    load = lambda v: "?" if v is None else " ".join(f"{x:.1f}" for x in v)
    lines.append(f"{m['cpus_usable']} CPUs ({m['cpu_model']}); load average {load(m['loadavg_start'])} at start, "
                 f"{load(m['loadavg_end'])} at end; {report['wall_seconds']} s")
    if m["loadavg_start"] and max(m["loadavg_start"][0], (m["loadavg_end"] or [0])[0]) > 0.9 * m["cpus_usable"]:
        lines.append("warning: the machine was busy (load average near or above its CPU count); p99s are inflated")
    return "\n".join(lines)

