"""ROS control-loop benchmark (`robolearn bench ros`, GitHub issue 9): policy_node at 100 Hz over DDS on
loopback, against a bare rclpy relay as the floor.

Two contenders, each measured for `duration_s` in all, in `repeats` windows that alternate between them
(policy, relay | relay, policy | ...: a machine whose load drifts hurts both alike), each window after
`warmup_s` and facing a fresh node and a fresh `bench_driver_node` (ros_ws/src/robolearn_ros): a fake
ros2_control arm that publishes joint states (the
Panda's joint names) and the environment state at `rate_hz` from a wall-clock timer, replaying states
recorded beforehand from the policy driving the sim (so the policy, its IK and the safety filter see what
they would see on the arm), and records the arrival of every position command.

  policy   policy_node in timer mode at `rate_hz` (not step_on_state), the MLP policy on the CPU, the safety
           filter, enabled through its ~/enable service by the driver
  relay    relay_node: each joint state answered at once by a position command; no policy, no filter

Figures (over every sample of a contender's windows, pooled; both times are the driver's monotonic clock, so
nothing needs syncing):

  jitter_p99_ms    p99 of |interval between consecutive position commands arriving at the driver - 1/rate_hz|
  latency_p99_ms   p99 of (arrival of a command - publication of the joint state whose stamp it carries)
  cpu_percent      CPU time of the contender's process (/proc/<pid>/stat utime + stime, every thread) over the
                   windows / their wall time, in % of one core
and the relay's, `relay_*`, as the floor; `ratio_to_floor` divides the two (and `ratio_to_floor_per_repeat`
each window's by its neighbour's). The policy node's own view (period jitter of its ticks, compute per tick,
state age at the command) comes from its ~/status at the end of each window (`policy_node`).

This module never imports rclpy: the nodes run as processes, started as the launcher starts them.

    from robolearn.deploy.ros_bench import RosBenchConfig, run
    run(RosBenchConfig(quick=True, json_path=""))    # smoke budget (figures mean little)
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robolearn.errors import ConfigError, RobolearnError

FORMAT_VERSION = 1
TARGETS = {"jitter_p99_ms": 2.0, "latency_p99_ms": 5.0, "cpu_percent": 30.0}
"""the highest value of each figure that counts as PASS (issue 9)"""
CONTENDERS = ("policy", "relay")
DRIVER = "bench_driver"
DEFINITIONS = {
    "jitter_p99_ms": "p99 over the windows of |t[i+1] - t[i] - 1/rate_hz|, t = arrival times of consecutive position "
                     "commands at the driver (time.monotonic_ns first thing in its subscription callback), ms",
    "latency_p99_ms": "p99 over the windows' commands of (arrival at the driver - the driver's time.monotonic_ns "
                      "just before publishing the joint state whose stamp the command carries), ms: DDS both ways, "
                      "the contender's executor, waiting for its next tick, the tick itself",
    "cpu_percent": "sum over the windows of (utime + stime of the contender's process, all threads, "
                   "/proc/<pid>/stat, at the window's end - at its start) / the windows' wall time, x 100: % of "
                   "one core",
    "relay_*": "the same figures for relay_node in place of policy_node, in the same run (the floor)",
    "policy_node[].tick_jitter_p99_ms": "the policy node's own ~/status at a window's end: p99 of |interval "
                                        "between the starts of its ticks - 1/rate| over the window's length",
    "driver_publish_jitter_p99_ms": "p99 of |interval between the driver's joint-state publications - 1/rate|: "
                                    "what the driver's own timer adds to every figure",
    "others_cpu_percent": "CPU time of everything else on the machine during the windows (/proc/stat busy time "
                          "minus the contender's and the driver's, floored at 0; approximate: /proc/stat samples at "
                          "the kernel tick), % of one core: the competition",
    "steal_percent": "/proc/stat steal time during the windows (the hypervisor running other guests), % of one core",
}
_QUICK = {"duration_s": 3.0, "repeats": 1, "warmup_s": 1.5, "replay_steps": 100, "train_episodes": 2,
          "train_steps": 20}
READY_TIMEOUT_S = 120.0  # the policy node imports torch and loads the policy first
_DOMAINS = itertools.count()


@dataclass
class RosBenchConfig:
    """The ROS control-loop benchmark (`robolearn bench ros`): policy_node vs a bare relay, over DDS."""

    rate_hz: float = 100.0
    """control rate of the policy node, and the driver's joint-state rate, Hz"""
    duration_s: float = 30.0
    """measured time of each contender, s, split into `repeats` windows"""
    repeats: int = 3
    """windows per contender, alternating between the contenders (each window starts fresh nodes)"""
    warmup_s: float = 3.0
    """seconds between a contender being connected (and enabled) and each of its windows"""
    policy: str = ""
    """policy checkpoint (or training run directory) reading state and environment state; empty: train a small
    MLP BC policy on scripted `task` demos in the work directory first (~15 s)"""
    task: str = "lift"
    """native task of the trained policy and of the replayed states (a checkpoint that records its task wins)"""
    train_episodes: int = 4
    """scripted demos the policy is trained on, when `policy` is empty"""
    train_steps: int = 300
    """optimizer steps of that policy (the default MLPConfig: timing does not depend on how well it is trained)"""
    replay_steps: int = 400
    """states the driver replays (forwards, then backwards), recorded from the policy driving the sim at rate_hz"""
    executor: Literal["events", "single"] = "events"
    """rclpy executor of both contenders (their `executor` parameter)"""
    sync_to_states: bool = True
    """policy_node's `sync_to_states`: its timer answers each joint state as it arrives (false: the timer alone)"""
    torch_threads: int = 1
    """policy_node's `torch_threads` (0: torch's default, one per core)"""
    domain_id: int = -1
    """ROS_DOMAIN_ID of the nodes; -1: one derived from this process id (1..100)"""
    work_dir: str = ""
    """where the policy, the replayed states, the driver's samples and the node logs go; empty: a temporary
    directory, removed at the end"""
    json_path: str = "bench/results/ros_loop.json"
    """where the JSON report is written (empty: not written)"""
    quick: bool = False
    """smoke budget for tests: one 3 s window each, a policy trained for 20 steps (the figures mean little)"""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if not (self.rate_hz > 0 and self.duration_s > 0 and self.warmup_s >= 0):
            raise ConfigError(f"ros bench: rate_hz={self.rate_hz} and duration_s={self.duration_s} must be positive "
                              f"and warmup_s={self.warmup_s} >= 0")
        for name in ("repeats", "train_episodes", "train_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ros bench: {name}={getattr(self, name)} must be a positive integer")
        if self.replay_steps < 2:
            raise ConfigError(f"ros bench: replay_steps={self.replay_steps} must be at least 2")
        if self.executor not in ("events", "single"):
            raise ConfigError(f"ros bench: executor={self.executor!r} must be events or single")
        if self.torch_threads < 0:
            raise ConfigError(f"ros bench: torch_threads={self.torch_threads} must be >= 0 (0: torch's default)")
        if not -1 <= self.domain_id <= 232:
            raise ConfigError(f"ros bench: domain_id={self.domain_id} must be -1 (pick one) or a ROS domain 0..232")

    def resolved(self) -> RosBenchConfig:
        """This config with the quick budget applied (the one a run uses and reports)."""
        if not self.quick:
            return replace(self)
        return replace(self, **{k: min(getattr(self, k), v) for k, v in _QUICK.items()})


# ---- preparation: a policy and the states the driver replays ------------------------------------------------


def train_policy(cfg: RosBenchConfig, out: Path) -> Path:
    """A default-config MLP BC policy trained on `train_episodes` scripted demos of `task`; its checkpoint."""
    import torch

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = collect(CollectConfig(task=cfg.task, episodes=cfg.train_episodes, out=str(out / "demos"),
                                   num_envs=min(4, cfg.train_episodes), cameras=[], progress=False, fsync=False))
        run_dir = train(TrainBCConfig(dataset=str(ds), policy="mlp", out=str(out / "bc"), steps=cfg.train_steps,
                                      batch_size=64, warmup_steps=min(20, cfg.train_steps // 5),
                                      save_every=cfg.train_steps, log_every=cfg.train_steps, eval_episodes=0,
                                      device="cpu", progress=False))
    finally:
        torch.set_num_threads(threads)
    return run_dir / "checkpoints" / "last"


def record_states(cfg: RosBenchConfig, policy: str, path: Path) -> dict[str, Any]:
    """Run the policy on the sim in this process (ControlLoop on SimRobot, both at rate_hz) for `replay_steps`
    ticks and save what the arm reported as the driver's states file (q, dq, fingers, environment_state)."""
    from robolearn.deploy import ControlConfig, ControlLoop, SimRobot

    loop = ControlLoop(ControlConfig(policy=policy, robot="panda", rate_hz=cfg.rate_hz, device="cpu",
                                     task=cfg.task))
    if loop.required_cameras:
        raise ConfigError(f"ros bench: the policy reads cameras {loop.required_cameras}; the benchmark's driver "
                          "publishes joint states and the environment state only (use a state-based policy)")
    task = loop.task or cfg.task
    rows: dict[str, list] = {"q": [], "dq": [], "fingers": [], "environment_state": []}
    episodes = 1
    with SimRobot(task, seed=0, control_hz=cfg.rate_hz) as robot:
        loop.enable()
        for _ in range(cfg.replay_steps):
            state = robot.read()
            for key in rows:
                rows[key].append(getattr(state, key))
            robot.command(loop.step(state, state.stamp))
            if robot.done:
                robot.reset()
                loop.reset()
                episodes += 1
    arrays = {k: np.asarray(v, np.float64) for k, v in rows.items()}
    if not loop.needs_environment_state:
        del arrays["environment_state"]
    np.savez(path, **arrays)
    return {"task": task, "steps": cfg.replay_steps, "episodes": episodes, "action_mode": loop.action_mode,
            "environment_state": loop.needs_environment_state}


# ---- running the nodes --------------------------------------------------------------------------------------


def node_environment(domain: int) -> dict[str, str]:
    """The nodes' environment: this one, on `domain`, discovery on loopback only."""
    return {**os.environ, "ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOCALHOST_ONLY": "1"}


def run_contender(contender: str, cfg: RosBenchConfig, policy: str, states: Path, domain: int,
                  work: Path) -> dict[str, Any]:
    """Start the contender node, then the driver; wait for the driver's samples; stop both. The raw samples."""
    from robolearn.deploy.launch import NodeProcess

    env = node_environment(domain)
    out = work / f"{contender}_samples.json"
    driver_params: dict[str, Any] = {"hardware": "panda", "states_file": str(states), "rate_hz": cfg.rate_hz,
                                     "warmup_s": cfg.warmup_s, "duration_s": cfg.duration_s,
                                     "ready_timeout_s": READY_TIMEOUT_S, "output": str(out)}
    nodes: list[NodeProcess] = []
    try:
        if contender == "policy":
            node = NodeProcess("policy_node", "policy", {
                "checkpoint": policy, "hardware": "panda", "rate_hz": cfg.rate_hz, "device": "cpu",
                "environment_state_topic": f"/{DRIVER}/environment_state", "executor": cfg.executor,
                "sync_to_states": cfg.sync_to_states, "torch_threads": cfg.torch_threads,
                "timing_window": int(round(cfg.rate_hz * cfg.duration_s))}, env, work)
            driver_params.update(enable_service="/policy/enable", status_topic="/policy/status")
        else:
            node = NodeProcess("relay_node", "relay", {"robot": "panda", "executor": cfg.executor}, env, work)
        nodes.append(node)
        driver = NodeProcess("bench_driver_node", DRIVER, {**driver_params, "cpu_pid": node.pid}, env, work)
        nodes.append(driver)
        limit = READY_TIMEOUT_S + cfg.warmup_s + cfg.duration_s + 30.0
        try:
            rc = driver.proc.wait(limit)
        except subprocess.TimeoutExpired:
            rc = None
        crashed = node.proc.poll()
        samples = json.loads(out.read_text()) if out.is_file() else None
        if rc != 0 or samples is None or samples.get("error") or crashed is not None:
            why = (samples or {}).get("error") or (f"the driver did not finish within {limit:g} s" if rc is None
                                                   else f"the driver exited with code {rc}")
            if crashed is not None:
                why = f"{node.name} exited with code {crashed} ({why})"
            raise RobolearnError(f"ros bench, {contender}: {why}\n" + "\n".join(n.log_tail() for n in nodes))
        return samples
    finally:
        for n in nodes[::-1]:
            n.stop()


# ---- the figures ----------------------------------------------------------------------------------------------


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


def window_samples(samples: dict[str, Any]) -> dict[str, Any]:
    """One measured window of the driver's raw samples as arrays (ms) and counts."""
    dt_ns = 1e9 / samples["rate_hz"]
    start, end = samples["window_ns"]
    published = dict(zip(samples["states"]["stamp_ns"], samples["states"]["published_ns"]))
    arrival = np.asarray(samples["commands"]["arrival_ns"], np.int64)
    stamps = samples["commands"]["stamp_ns"]
    answered = np.array([published.get(s, -1) if s is not None else -1 for s in stamps], np.int64)
    known = answered >= 0
    pub = np.asarray(sorted(t for t in published.values() if start <= t < end), np.int64)
    window_states = {s for s, t in published.items() if start <= t < end - dt_ns}  # the last may be in flight
    cpu = samples["cpu"]
    return {
        "latency": (arrival[known] - answered[known]) / 1e6,
        "jitter": np.abs(np.diff(arrival) - dt_ns) / 1e6,
        "publish_jitter": np.abs(np.diff(pub) - dt_ns) / 1e6,
        "cpu_s": cpu["target_end_s"] - cpu["target_start_s"], "driver_cpu_s": cpu["self_end_s"] - cpu["self_start_s"],
        "machine_busy_s": cpu["machine_busy_s_end"] - cpu["machine_busy_s_start"],
        "steal_s": cpu["machine_steal_s_end"] - cpu["machine_steal_s_start"],
        "wall_s": cpu["wall_s"], "commands": len(arrival), "gripper_commands": samples["gripper_commands"],
        "states_published": len(pub), "states_unanswered": len(window_states - {s for s in stamps if s is not None}),
        "repeated_answers": sum(1 for a, b in zip(stamps, stamps[1:]) if a == b and a is not None),
        "unmatched_commands": int((~known).sum()),
    }


def _others(w: dict[str, Any]) -> float:
    """CPU of everything but the contender and the driver, % of one core (>= 0: /proc/stat's tick sampling can
    count a little less than the processes' own precise times)."""
    return max(0.0, 100.0 * (w["machine_busy_s"] - w["cpu_s"] - w["driver_cpu_s"]) / w["wall_s"])


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one contender over all its windows (`window_samples`), samples pooled; times in ms."""
    pool = {k: np.concatenate([w[k] for w in windows]) for k in ("latency", "jitter", "publish_jitter")}
    total = {k: sum(w[k] for w in windows) for k in ("cpu_s", "driver_cpu_s", "machine_busy_s", "steal_s",
                                                      "wall_s", "commands",
                                                      "gripper_commands", "states_published", "states_unanswered",
                                                      "repeated_answers", "unmatched_commands")}
    lat, jit = pool["latency"], pool["jitter"]
    return {
        "jitter_p99_ms": _pct(jit, 99), "latency_p99_ms": _pct(lat, 99),
        "cpu_percent": 100.0 * total["cpu_s"] / total["wall_s"],
        "jitter_p50_ms": _pct(jit, 50), "jitter_max_ms": float(jit.max()) if len(jit) else None,
        "latency_p50_ms": _pct(lat, 50), "latency_max_ms": float(lat.max()) if len(lat) else None,
        "commands_per_s": total["commands"] / total["wall_s"],
        **{k: total[k] for k in ("commands", "gripper_commands", "states_published", "states_unanswered",
                                 "repeated_answers", "unmatched_commands")},
        "driver_publish_jitter_p99_ms": _pct(pool["publish_jitter"], 99),
        "driver_cpu_percent": 100.0 * total["driver_cpu_s"] / total["wall_s"],
        "others_cpu_percent": _others(total),
        "steal_percent": 100.0 * total["steal_s"] / total["wall_s"],
        "measured_s": total["wall_s"], "windows": len(windows),
        "per_window": [{"jitter_p99_ms": _pct(w["jitter"], 99), "latency_p99_ms": _pct(w["latency"], 99),
                        "cpu_percent": 100.0 * w["cpu_s"] / w["wall_s"],
                        "others_cpu_percent": _others(w), "steal_percent": 100.0 * w["steal_s"] / w["wall_s"]}
                       for w in windows],
    }


def policy_node_view(status: dict | None) -> dict[str, Any] | None:
    """What the policy node's own ~/status said at the window's end (its timing over its last ticks)."""
    if not status:
        return None
    t = status.get("timing", {})
    return {"tick_jitter_p99_ms": t.get("period_jitter_ms_p99"), "tick_period_mean_ms": t.get("period_ms_mean"),
            "compute_p50_ms": t.get("compute_ms_p50"), "compute_p99_ms": t.get("compute_ms_p99"),
            "compute_max_ms": t.get("compute_ms_max"), "state_age_at_send_p50_ms": t.get("latency_ms_p50"),
            "state_age_at_send_p99_ms": t.get("latency_ms_p99"),
            "ticks_in_window": t.get("window"), "commands_sent": status.get("commands_sent"),
            "holds_sent": status.get("holds_sent"), "reason_counts": status.get("reason_counts"),
            "enabled": status.get("enabled")}


def run(cfg: RosBenchConfig) -> dict[str, Any]:
    """Measure policy_node and relay_node against the driver; print the table; write and return the report.

    Returns a dict with `jitter_p99_ms`, `latency_p99_ms`, `cpu_percent` (policy_node) and `relay_jitter_p99_ms`,
    `relay_latency_p99_ms`, `relay_cpu_percent` at the top level, `ratio_to_floor`, `targets`, `passed`,
    `contenders` (every figure of each), `policy_node` (its own status), `definitions`, `config`, `machine`."""
    from robolearn.data.format import atomic_write_json
    from robolearn.sim.bench import machine_info

    cfg.validate()
    cfg = cfg.resolved()
    started = time.perf_counter()
    machine = machine_info(("torch",))
    work = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix="robolearn_ros_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    domain = cfg.domain_id if cfg.domain_id >= 0 else 1 + (os.getpid() * 7 + next(_DOMAINS)) % 100
    try:
        t0 = time.perf_counter()
        policy = cfg.policy or str(train_policy(cfg, work))
        trained_s = time.perf_counter() - t0 if not cfg.policy else 0.0
        replay = record_states(cfg, policy, work / "states.npz")
        order = [c for r in range(cfg.repeats) for c in (CONTENDERS if r % 2 == 0 else CONTENDERS[::-1])]
        window = replace(cfg, duration_s=cfg.duration_s / cfg.repeats)
        raw: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
        for i, contender in enumerate(order):
            print(f"[{i + 1}/{len(order)}] {contender}: {cfg.warmup_s:g} s warm-up + {window.duration_s:g} s at "
                  f"{cfg.rate_hz:g} Hz (ROS domain {domain})", flush=True)
            raw[contender].append(run_contender(contender, window, policy, work / "states.npz", domain, work))
    finally:
        if not cfg.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    windows = {c: [window_samples(w) for w in raw[c]] for c in CONTENDERS}
    stats = {c: summarize(windows[c]) for c in CONTENDERS}
    figures = {k: stats["policy"][k] for k in TARGETS}
    floor = {f"relay_{k}": stats["relay"][k] for k in TARGETS}
    paired = {k: [p[k] / r[k] if r[k] else None for p, r in zip(stats["policy"]["per_window"],
                                                               stats["relay"]["per_window"])] for k in TARGETS}
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "format_version": FORMAT_VERSION,
        **figures, **floor,
        "relay_cpu_percent": stats["relay"]["cpu_percent"],
        "ratio_to_floor": {k: (figures[k] / floor[f"relay_{k}"] if floor[f"relay_{k}"] else None) for k in TARGETS},
        "ratio_to_floor_per_repeat": paired,
        "targets": TARGETS,
        "passed": {k: None if figures[k] is None else bool(figures[k] <= v) for k, v in TARGETS.items()},
        "contenders": stats,
        "policy_node": [policy_node_view(w.get("status")) for w in raw["policy"]],
        "replay": replay,
        "policy": cfg.policy or "(trained for the run: default MLPConfig, BC on scripted demos)",
        "train_s": round(trained_s, 1),
        "definitions": DEFINITIONS,
        "config": asdict(cfg),
        "machine": machine,
        "python": sys.executable,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(format_table(report))
    if cfg.json_path:
        atomic_write_json(Path(cfg.json_path), report, fsync=False)
        print(f"wrote {cfg.json_path}")
    return report


def format_table(report: dict[str, Any]) -> str:
    """Each figure, its target, the relay floor, the ratio to the floor and PASS/FAIL; then context."""

    def f(v: float | None, digits: int = 3) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    cfg = report["config"]
    lines = [f"policy_node (timer, {cfg['rate_hz']:g} Hz, MLP, safety filter) vs relay_node, over DDS on loopback, "
             f"{cfg['duration_s']:g} s each in {cfg['repeats']} alternating windows",
             f"{'figure':<16} {'policy_node':>11} {'target':>8} {'relay floor':>11} {'ratio':>7}  result"]
    for k, target in report["targets"].items():
        v, fl, r = report[k], report[f"relay_{k}"], report["ratio_to_floor"][k]
        result = "-" if v is None else ("PASS" if v <= target else "FAIL")
        lines.append(f"{k:<16} {f(v):>11} {'<= ' + format(target, 'g'):>8} {f(fl):>11} {f(r, 2):>7}  {result}")
    lines.append("")
    lines.append(f"{'context':<30} {'policy_node':>11} {'relay':>11}")
    for k in ("jitter_p50_ms", "jitter_max_ms", "latency_p50_ms", "latency_max_ms", "commands_per_s",
              "states_unanswered", "repeated_answers", "driver_publish_jitter_p99_ms", "driver_cpu_percent",
              "others_cpu_percent", "steal_percent"):
        p, r = report["contenders"]["policy"][k], report["contenders"]["relay"][k]
        lines.append(f"{k:<30} {f(p):>11} {f(r):>11}")
    for i, own in enumerate(report["policy_node"]):
        if own:
            lines.append(f"policy_node's status, window {i + 1}: tick jitter p99 {f(own['tick_jitter_p99_ms'])} ms, "
                         f"compute p50/p99/max {f(own['compute_p50_ms'])}/{f(own['compute_p99_ms'])}/"
                         f"{f(own['compute_max_ms'])} ms, holds {own['holds_sent']} of {own['commands_sent']}")
    m = report["machine"]
    load = lambda v: "?" if v is None else " ".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines.append(f"{m['cpus_usable']} CPUs ({m['cpu_model']}); load average {load(m['loadavg_start'])} at start, "
                 f"{load(m['loadavg_end'])} at end; {report['wall_s']} s")
    if m["loadavg_start"] and max(m["loadavg_start"][0], (m["loadavg_end"] or [0])[0]) > 0.9 * m["cpus_usable"]:
        lines.append("warning: the machine was busy (load average near or above its CPU count); p99s are inflated")
    return "\n".join(lines)
