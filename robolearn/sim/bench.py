"""Simulation throughput benchmark: native `lift` against robosuite `Lift`, its own physics, threads
and a camera, all in one run at the same control and physics rates.

Four ratios (each the median over `repeats` of a ratio of two runs timed in the same repeat; higher
is better):

  vs_robosuite        native lift steps/s (1 env, 1 thread, no camera) / robosuite Lift steps/s
  vs_physics_ceiling  native lift steps/s / 1 / (substeps x raw mj_step time), the raw time measured
                      by replaying the same control sequence from the same start state on a copy of
                      the model and data with a bare Python loop of single `mujoco.mj_step` calls
  thread_scaling      VecEnv env-steps/s with num_threads=2 / with num_threads=1, same num_envs
  camera_ratio        native lift steps/s with one camera (84x84 by default) / without

and two for context: robosuite's own camera ratio, and the 16-env VecEnv (1 thread) against the same
bare replay of its controls (`vec_vs_physics_ceiling`: the physics fraction once per-step Python work
is shared by many envs).

Both simulators get the same action sequence: end-effector deltas in [-1, 1] that mean the same in
both (native `max_dpos=0.05 m`, `max_drot=0.5 rad` at 1.0; robosuite's default OSC_POSE controller
scales its delta input to the same limits), held for `hold_steps` and then reversed, so the arm
sweeps through its workspace without drifting to a joint limit. Construction, resets and warm-up
steps are outside the timed regions (`time.perf_counter`). Episodes never end inside a timed run
(native `max_episode_steps` is larger than the run, robosuite has `ignore_done=True`), so no
auto-reset is timed. `bench/README.md` says what each figure means and how to read it.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import ConfigError

FORMAT_VERSION = 1
TARGETS = {"vs_robosuite": 8.0, "vs_physics_ceiling": 0.85, "thread_scaling": 1.5, "camera_ratio": 0.5}
"""the lowest value of each ratio that counts as PASS"""
RATIO_DOC = {
    "vs_robosuite": ("native", "robosuite", "native lift / robosuite Lift, no camera"),
    "vs_physics_ceiling": ("native", "physics_ceiling", "native lift / bare mj_step replay of its controls"),
    "thread_scaling": ("vec_2_threads", "vec_1_thread", "VecEnv 2 threads / 1 thread (env-steps/s)"),
    "camera_ratio": ("native_camera", "native", "native lift with one camera / without"),
}
"""ratio key -> (numerator contender, denominator contender, one-line meaning)"""
CONTENDER_DOC = {  # contender -> what one timed run is; also the table order
    "native": "native lift, 1 env, 1 thread",
    "physics_ceiling": "bare mj_step replay of native's controls",
    "robosuite": "robosuite Lift, OSC_POSE",
    "vec_1_thread": "VecEnv {n} envs, 1 thread (env-steps/s)",
    "vec_physics_ceiling": "bare mj_step replay of vec_1_thread's controls",
    "vec_2_threads": "VecEnv {n} envs, 2 threads (env-steps/s)",
    "raw_1_thread": "bare mj_step(m, d, substeps), {n} MjData, 1 thread",
    "raw_2_threads": "bare mj_step(m, d, substeps), {n} MjData, 2 threads",
    "native_camera": "native lift + {cam} {h}x{w}",
    "robosuite_camera": "robosuite Lift + {rcam} {h}x{w}",
}
CONTEXT_DOC = {
    "robosuite_camera_ratio": ("robosuite_camera", "robosuite", "robosuite with camera / without"),
    "vec_vs_physics_ceiling": ("vec_1_thread", "vec_physics_ceiling", "VecEnv 1 thread / bare mj_step replay"),
    # what this machine's two cores give pure C physics right now: the ceiling of thread_scaling
    "raw_thread_scaling": ("raw_2_threads", "raw_1_thread", "bare mj_step on 2 threads / 1 (the machine's limit)"),
}
"""figures reported for context, with no target"""
CEILING_OF = {"native": "physics_ceiling", "vec_1_thread": "vec_physics_ceiling"}
# quick=true caps the run lengths at these values (a ~20 s smoke run)
_QUICK = {"steps": 120, "camera_steps": 12, "vec_steps": 20, "warmup_steps": 5, "repeats": 3}


@dataclass
class BenchConfig:
    """Simulation throughput benchmark (`robolearn bench sim`)."""

    steps: int = 300
    """control steps per timed run of a single env without a camera"""
    camera_steps: int = 40
    """control steps per timed run with a camera (off-screen rendering is far slower, so fewer)"""
    vec_steps: int = 60
    """control steps per timed VecEnv run; each counts num_envs_threaded env-steps"""
    warmup_steps: int = 10
    """untimed control steps after each reset, before the clock starts"""
    repeats: int = 9
    """timed runs per contender, interleaved across contenders; figures are medians over them"""
    num_envs_threaded: int = 16
    """envs in the VecEnv that thread_scaling times with 1 and with 2 threads"""
    image_size: tuple[int, int] = (84, 84)
    """camera image (height, width), pixels, for the camera runs of both simulators"""
    native_camera: str = "front"
    """camera of the native lift scene rendered in the camera runs"""
    robosuite_camera: str = "agentview"
    """camera of robosuite Lift rendered in its camera run"""
    control_hz: float = 20.0
    """control rate of both simulators, Hz"""
    physics_hz: float = 500.0
    """physics rate of both simulators, Hz (robosuite only runs at 1 / robosuite.macros.SIMULATION_TIMESTEP)"""
    action_scale: float = 0.25
    """magnitude of the random end-effector delta actions, as a fraction of the [-1, 1] range"""
    hold_steps: int = 8
    """control steps each random direction is held before it is reversed"""
    seed: int = 0
    """seed of the action sequence and of every reset"""
    include_robosuite: bool = True
    """time robosuite Lift too (vs_robosuite is null without it)"""
    include_cameras: bool = True
    """time the camera runs too (camera_ratio is null without them; they need an off-screen GL backend)"""
    quick: bool = False
    """smoke run of about 20 s: caps steps, camera_steps, vec_steps, warmup_steps and repeats at small values"""
    json_path: str | None = "bench/results/sim_throughput.json"
    """where the JSON report is written (parent folders are created); null writes none"""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and what it must be."""

        def bad(name: str, what: str) -> None:
            raise ConfigError(f"bench config: {name}={getattr(self, name)!r} is invalid; it must be {what}")

        for name in ("steps", "camera_steps", "vec_steps", "repeats", "hold_steps"):
            if getattr(self, name) < 1:
                bad(name, "a positive integer")
        if self.warmup_steps < 0:
            bad("warmup_steps", "0 or a positive integer")
        if self.num_envs_threaded < 2:
            bad("num_envs_threaded", "at least 2 (two threads need two envs to share out)")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            bad("image_size", "(height, width) of at least 8 pixels each")
        if not 0 < self.action_scale <= 1:
            bad("action_scale", "in (0, 1]")
        if not (self.control_hz > 0 and self.physics_hz > 0):
            raise ConfigError("bench config: control_hz and physics_hz must be positive rates in Hz")
        ratio = self.physics_hz / self.control_hz
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            bad("physics_hz", f"a whole multiple of control_hz={self.control_hz}")

    def effective(self) -> BenchConfig:
        """This config with the `quick` caps applied (the one a run uses and reports)."""
        if not self.quick:
            return self
        return replace(self, **{k: min(getattr(self, k), v) for k, v in _QUICK.items()})

    @property
    def substeps(self) -> int:
        return round(self.physics_hz / self.control_hz)


def action_sequence(num_steps: int, scale: float, hold: int, seed: int) -> np.ndarray:
    """(num_steps, 7) ee-delta actions in [-1, 1]: a random direction (dpos, drot) held `hold` steps,
    then its reverse for `hold` steps, so the end effector sweeps and comes back; the gripper
    command (+1 close, -1 open) is drawn once per out-and-back segment."""
    rng = np.random.default_rng(seed)
    segments = -(-num_steps // (2 * hold))
    out = np.empty((segments, 2 * hold, 7))
    direction = rng.uniform(-1.0, 1.0, (segments, 1, 6)) * scale
    out[:, :hold, :6] = direction
    out[:, hold:, :6] = -direction
    out[:, :, 6] = rng.choice([-1.0, 1.0], (segments, 1))
    return out.reshape(-1, 7)[:num_steps]


# ---- contenders: each returns steps per second of one timed run ------------------------------------


def _native_env(cfg: BenchConfig, num_envs: int = 1, num_threads: int = 1, cameras: tuple[str, ...] = ()):
    from robolearn.sim.config import EnvConfig
    from robolearn.sim.registry import make_env

    longest = max(cfg.steps, cfg.camera_steps, cfg.vec_steps) + cfg.warmup_steps
    return make_env(EnvConfig(
        task="lift", num_envs=num_envs, num_threads=num_threads, seed=cfg.seed, control_hz=cfg.control_hz,
        physics_hz=cfg.physics_hz, action_mode="ee_delta", max_episode_steps=longest + 1,
        terminate_on_success=False, cameras=list(cameras), image_size=tuple(cfg.image_size),
    ))


def _warm_then_time(step: Callable[[np.ndarray], Any], actions: np.ndarray, warmup: int) -> float:
    """Call `step` on actions[:warmup] untimed, then on the rest; returns the rest's steps per second."""
    for a in actions[:warmup]:
        step(a)
    timed = actions[warmup:]
    t0 = time.perf_counter()
    for a in timed:
        step(a)
    return len(timed) / (time.perf_counter() - t0)


def _time_native(env, actions: np.ndarray, warmup: int, seed: int) -> float:
    """Env-steps/s of `env.step` over actions[warmup:] (actions (T, N, 7)), after a reset and warm-up."""
    env.reset(seed=seed)
    return _warm_then_time(env.step, actions, warmup) * env.num_envs


def _time_with_ceiling(env, actions: np.ndarray, warmup: int, seed: int, substeps: int,
                       block: int = 30) -> tuple[float, float, float]:
    """Env-steps/s of `env.step` and of its physics ceiling, measured in alternating blocks.

    For each block of `block` control steps: snapshot every env's state, time the env over the
    block while recording the ctrl it applied, then time a bare Python loop of single `mj_step` calls
    that replays those ctrls from the snapshot on a copy of the model. Blocks of ~50 ms keep each
    comparison within the same machine speed. Returns (env sps, ceiling sps, largest qpos difference
    between replay and env at a block's end: 0 when the replay redid exactly the env's physics)."""
    import mujoco

    env.reset(seed=seed)
    for a in actions[:warmup]:
        env.step(a)
    timed = actions[warmup:]
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    copies = [(copy.copy(m), mujoco.MjData(m)) for m in env.models]
    state = np.zeros(mujoco.mj_stateSize(env.models[0], spec))
    ctrls = np.zeros((block, env.num_envs, env.models[0].nu))
    mj_step, step, datas = mujoco.mj_step, env.step, env.datas
    t_env = t_raw = error = 0.0
    for start in range(0, len(timed), block):
        chunk = timed[start : start + block]
        starts = []
        for m, d in zip(env.models, datas):
            mujoco.mj_getState(m, d, state, spec)
            starts.append(state.copy())
        t0 = time.perf_counter()
        for k, a in enumerate(chunk):
            step(a)
            for i, d in enumerate(datas):
                ctrls[k, i] = d.ctrl  # a 9-float copy per env, ~1 us against ~1 ms of physics
        t_env += time.perf_counter() - t0
        for i, (m2, d2) in enumerate(copies):
            mujoco.mj_setState(m2, d2, starts[i], spec)
            ctrl = d2.ctrl
            t0 = time.perf_counter()
            for c in ctrls[: len(chunk), i]:
                ctrl[:] = c
                for _ in range(substeps):
                    mj_step(m2, d2)
            t_raw += time.perf_counter() - t0
            error = max(error, float(np.abs(d2.qpos - datas[i].qpos).max()))
    n = len(timed) * env.num_envs
    return n / t_env, n / t_raw, error


def _time_raw_threads(env, steps: int, substeps: int, threads: int) -> float:
    """Env-steps/s of bare `mj_step(m, d, substeps)` calls on copies of the env's MjData, split over
    `threads` Python threads with no synchronisation: what the cores give physics alone."""
    import threading

    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    pairs = []
    for m, d in zip(env.models, env.datas):
        state = np.zeros(mujoco.mj_stateSize(m, spec))
        mujoco.mj_getState(m, d, state, spec)
        m2 = copy.copy(m)
        d2 = mujoco.MjData(m2)
        mujoco.mj_setState(m2, d2, state, spec)
        d2.ctrl[:] = d.ctrl
        pairs.append((m2, d2))

    def work(chunk) -> None:
        for _ in range(steps):
            for m2, d2 in chunk:
                mujoco.mj_step(m2, d2, substeps)

    workers = [threading.Thread(target=work, args=(pairs[k::threads],)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return steps * len(pairs) / (time.perf_counter() - t0)


def _robosuite_env(cfg: BenchConfig, camera: bool):
    import robosuite

    h, w = cfg.image_size
    env = robosuite.make(
        "Lift", robots="Panda", control_freq=cfg.control_hz, has_renderer=False, has_offscreen_renderer=camera,
        use_camera_obs=camera, camera_names=cfg.robosuite_camera, camera_heights=h, camera_widths=w,
        ignore_done=True, horizon=10**9, reward_shaping=True, seed=cfg.seed,  # dense reward, as native computes
        hard_reset=False,  # a hard reset rebuilds the sim and its GL context: slow, and nothing to time
    )
    substeps = int(env.control_timestep / env.model_timestep)
    if abs(env.sim.model.opt.timestep - 1.0 / cfg.physics_hz) > 1e-9 or substeps != cfg.substeps:
        env.close()
        raise ConfigError(
            f"bench config: physics_hz={cfg.physics_hz} is not what robosuite simulates (timestep "
            f"{env.sim.model.opt.timestep} s, {substeps} substeps per control step); set physics_hz="
            f"{1.0 / env.sim.model.opt.timestep:g} or include_robosuite=false"
        )
    return env


def _robosuite_gl_current(env) -> None:
    # robosuite renders into whichever GL context is current and only makes its own current when it is
    # created; the native renderer makes its context current on every render, so switch back here.
    ctx = getattr(env.sim, "_render_context_offscreen", None)
    if ctx is not None:
        ctx.gl_ctx.make_current()


def _time_robosuite(env, actions: np.ndarray, warmup: int) -> float:
    """Steps/s of robosuite's env.step over actions[warmup:] (actions (T, 7))."""
    _robosuite_gl_current(env)
    env.reset()  # the cube's placement comes from the env's own seeded generator (seed= at make)
    return _warm_then_time(env.step, actions, warmup)


# ---- the run ----------------------------------------------------------------------------------------


def machine_info(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """CPU count, platform and library versions (plus `extra_packages`'), for reading a report later."""
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu_model)
    except OSError:
        pass

    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("robolearn", "mujoco", "robosuite", "numpy", "gymnasium",
                                              *extra_packages)},
        "env": {k: os.environ.get(k) for k in ("MUJOCO_GL", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")},
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Time every contender `repeats` times, interleaved; print a table; write and return the report.

    Returns a dict with the four ratios (`vs_robosuite`, `vs_physics_ceiling`, `thread_scaling`,
    `camera_ratio`; None where a contender was skipped) at the top level, `steps_per_second`
    {contender: {median, min, max, samples}}, `targets`, `passed`, `config`, `machine`, `timestamp`.
    """
    from tqdm import tqdm

    cfg.validate()
    cfg = cfg.effective()
    started = time.perf_counter()
    machine = machine_info()
    n_vec = cfg.num_envs_threaded
    w = cfg.warmup_steps

    # one action sequence for everything; the VecEnv's envs each start at a different offset of it
    base = action_sequence(w + max(cfg.steps, cfg.camera_steps, cfg.vec_steps), cfg.action_scale,
                           cfg.hold_steps, cfg.seed)
    single = base[: w + cfg.steps, None]  # (T, 1, 7)
    single_cam = base[: w + cfg.camera_steps, None]
    t_vec = w + cfg.vec_steps
    shifts = (np.arange(t_vec)[:, None] + 3 * np.arange(n_vec)[None]) % len(base)
    batch = base[shifts]  # (T, N, 7)

    native = _native_env(cfg)
    vec = {1: _native_env(cfg, n_vec, 1), 2: _native_env(cfg, n_vec, 2)}
    native_cam = _native_env(cfg, cameras=(cfg.native_camera,)) if cfg.include_cameras else None
    rs = rs_cam = None
    if cfg.include_robosuite:
        rs = _robosuite_env(cfg, camera=False)
        rs_cam = _robosuite_env(cfg, camera=True) if cfg.include_cameras else None

    replay_error = 0.0

    def with_ceiling(name: str, env, actions: np.ndarray) -> Callable[[], dict[str, float]]:
        def timed() -> dict[str, float]:
            nonlocal replay_error
            sps, ceiling, error = _time_with_ceiling(env, actions, w, cfg.seed, cfg.substeps)
            replay_error = max(replay_error, error)
            return {name: sps, CEILING_OF[name]: ceiling}

        return timed

    # each ratio's two contenders run back to back, so that they see the same machine speed
    units: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("native + physics ceiling", with_ceiling("native", native, single))
    ]
    if native_cam is not None:
        units.append(("native camera", lambda: {"native_camera": _time_native(native_cam, single_cam, w, cfg.seed)}))
    if rs is not None:
        units.append(("robosuite", lambda: {"robosuite": _time_robosuite(rs, base[: w + cfg.steps], w)}))
    if rs_cam is not None:
        units.append(("robosuite camera",
                      lambda: {"robosuite_camera": _time_robosuite(rs_cam, base[: w + cfg.camera_steps], w)}))
    units.append(("vec 1 thread + physics ceiling", with_ceiling("vec_1_thread", vec[1], batch)))
    units.append(("vec 2 threads", lambda: {"vec_2_threads": _time_native(vec[2], batch, w, cfg.seed)}))
    units.append(("bare mj_step, 1 and 2 threads", lambda: {
        "raw_1_thread": _time_raw_threads(vec[1], cfg.vec_steps, cfg.substeps, 1),
        "raw_2_threads": _time_raw_threads(vec[1], cfg.vec_steps, cfg.substeps, 2),
    }))

    samples: dict[str, list[float]] = {}
    try:
        with tqdm(total=cfg.repeats * len(units), desc="bench sim", unit="run", leave=False) as bar:
            for r in range(cfg.repeats):
                # alternate the order so that a slow drift of the machine does not favour one contender
                for name, fn in units if r % 2 == 0 else units[::-1]:
                    bar.set_postfix_str(f"repeat {r + 1}/{cfg.repeats}: {name}")
                    for key, value in fn().items():
                        samples.setdefault(key, []).append(value)
                    bar.update()
    finally:
        for env in (native, native_cam, *vec.values(), rs, rs_cam):
            if env is not None:
                env.close()

    sps = {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "samples": v}
           for k in CONTENDER_DOC if (v := samples.get(k))}

    def paired(num: str, den: str) -> list[float] | None:
        """Per-repeat ratios: both runs of a pair were timed in the same repeat, seconds apart, so a
        machine that speeds up or slows down between repeats (these VMs do, by 30%) cancels out."""
        if num not in samples or den not in samples:
            return None
        return [a / b for a, b in zip(samples[num], samples[den], strict=True)]

    def ratio(num: str, den: str) -> float | None:
        pairs = paired(num, den)
        return None if pairs is None else statistics.median(pairs)

    ratios = {key: ratio(num, den) for key, (num, den, _) in RATIO_DOC.items()}
    ratio_samples = {key: paired(num, den) for key, (num, den, _) in {**RATIO_DOC, **CONTEXT_DOC}.items()}
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "format_version": FORMAT_VERSION,
        **ratios,
        "targets": TARGETS,
        "passed": {k: (None if v is None else bool(v >= TARGETS[k])) for k, v in ratios.items()},
        **{key: ratio(num, den) for key, (num, den, _) in CONTEXT_DOC.items()},
        "ratio_samples": ratio_samples,
        "steps_per_second": sps,
        "replay_max_qpos_error": replay_error,
        "config": asdict(cfg),
        "machine": machine,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(format_report(report))
    write_report(report, cfg.json_path)
    return report


def write_report(report: dict[str, Any], json_path: str) -> None:
    """Write a benchmark's JSON report to `json_path` (nothing when it is empty) and say where."""
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")


def format_report(report: dict[str, Any]) -> str:
    """The printed table: steps/s per contender (median, min, max), then each ratio against its target."""
    cfg = report["config"]
    h, w = cfg["image_size"]
    fill = {"n": cfg["num_envs_threaded"], "cam": cfg["native_camera"], "rcam": cfg["robosuite_camera"], "h": h, "w": w}
    rows = [(f"{k:<17} {CONTENDER_DOC.get(k, k).format(**fill)}", s) for k, s in report["steps_per_second"].items()]
    width = max([len(label) for label, _ in rows] + [10])
    lines = [f"{'contender':<{width}} {'steps/s median':>14} {'min':>9} {'max':>9}"]
    lines += [f"{label:<{width}} {s['median']:>14.1f} {s['min']:>9.1f} {s['max']:>9.1f}" for label, s in rows]
    ratio_rows = [(f"{k:<22} {doc}", report[k], report["targets"][k]) for k, (_, _, doc) in RATIO_DOC.items()]
    ratio_rows += [(f"{k:<22} {doc}", report[k], None) for k, (_, _, doc) in CONTEXT_DOC.items() if report[k]]
    width = max(len(label) for label, _, _ in ratio_rows)
    lines += ["", f"{'median paired ratio':<{width}} {'value':>7} {'target':>8}  result"]
    for label, value, target in ratio_rows:
        shown = "-" if value is None else f"{value:.2f}"
        if target is None:
            lines.append(f"{label:<{width}} {shown:>7} {'':>8}  (context)")
            continue
        result = "skipped" if value is None else ("PASS" if value >= target else "FAIL")
        lines.append(f"{label:<{width}} {shown:>7} {'>= ' + format(target, 'g'):>8}  {result}")
    if report["replay_max_qpos_error"] > 1e-9:
        lines.append(f"warning: the physics replay ended {report['replay_max_qpos_error']:.2e} away from the env's "
                     "qpos; the env changes state beyond ctrl, so vs_physics_ceiling compares different work")
    m = report["machine"]
    load = lambda v: "?" if v is None else " ".join(f"{x:.1f}" for x in v)
    lines.append(f"{m['cpus_usable']} CPUs ({m['cpu_model']}); load average {load(m['loadavg_start'])} at start, "
                 f"{load(m['loadavg_end'])} at end; {report['wall_seconds']} s")
    return "\n".join(lines)
