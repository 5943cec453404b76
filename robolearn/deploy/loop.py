"""`ControlLoop`: a trained policy driving a robot at a fixed rate through the safety filter.

    loop = ControlLoop(ControlConfig(policy="runs/bc/lift_mlp", robot="panda"))
    loop.enable()
    cmd = loop.step(robot.read(), time.monotonic())    # or: stats = loop.run(robot, duration_s=30)

One tick: RobotState -> the policy's observation (observation.state built as the sim builds it: q, dq,
TCP position and quaternion by FK, fingers) -> the policy through the InferenceEngine (batch of 1,
its own history and chunk queue) -> joint targets (ee_delta through the sim's IK at the measured
joints; joint_pos as given) and a gripper width -> SafetyFilter -> Command.

Action scaling (max_dpos, max_drot), the control rate and the action mode come from the env the
policy's dataset was recorded in (saved in the checkpoint), as `robolearn eval` rebuilds it; the arm
base sits where that task put it (the world origin for every native task, robolearn.sim.vec_env).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from robolearn.deploy.kinematics import ArmKinematics
from robolearn.deploy.robot import Command, Robot, RobotState, check_state, width_from_action
from robolearn.deploy.safety import SafetyConfig, SafetyFilter, _is_number
from robolearn.errors import ConfigError, RobolearnError
from robolearn.hardware import load_robot

STATE, ENV_STATE, IMAGES = "observation.state", "observation.environment_state", "observation.images."
EE_DELTA_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]  # robolearn.data.collect.ACTION_NAMES
_VALUE = re.compile(r"(?<!joint )\b-?\d+(\.\d+)?(e[-+]?\d+)?\b")  # numbers in a reason, joint numbers aside


@dataclass
class ControlConfig:
    """What the control loop runs: one policy on one robot."""

    policy: str = ""
    """policy checkpoint directory, or a training run directory (its checkpoints/last)"""
    robot: str = "panda"
    """robot name under hardware/robots/ or a path to a hardware YAML"""
    rate_hz: float = 0.0
    """control rate, Hz; 0: the rate the policy was trained at"""
    device: str = "auto"
    """policy device: auto (cuda when present), cpu, cuda, cuda:N"""
    safety: SafetyConfig | None = None
    """safety limits; null: the defaults for the robot"""
    task: str = ""
    """task the policy was trained on, when its checkpoint does not record it (places the arm base)"""
    action_mode: Literal["auto", "ee_delta", "joint_pos"] = "auto"
    """auto: the training env's; else from the policy's action names and size"""
    max_dpos: float = 0.0
    """ee_delta translation per tick at action 1.0, m; 0: the training env's"""
    max_drot: float = 0.0
    """ee_delta rotation per tick at action 1.0, rad; 0: the training env's"""
    base_pos: list[float] = field(default_factory=list)
    """arm base in the policy's world frame, m; empty: where the training task puts it"""
    temporal_ensemble: float = -1.0
    """ACT temporal ensembling coefficient; < 0: the policy's own setting, 0: off"""
    seed: int = 0
    """torch seed (policies that sample, e.g. diffusion)"""
    trace: bool = True
    """run the policy's chunk predictor as a frozen TorchScript trace (InferenceEngine trace=true):
    the same actions as eager, ~2x quicker predicting ticks at batch 1 on a CPU; ~3 s at start-up"""
    prefetch: int = 0
    """> 0: predict each next chunk on a worker thread, asked for this many ticks before the current one
    runs out (InferenceEngine prefetch): for a policy whose chunk takes longer than a control period
    (diffusion on a CPU); each chunk is then planned from an observation that many ticks older. 0: off"""

    def validate(self) -> None:
        if not self.policy:
            raise ConfigError("control: name the policy checkpoint, e.g. policy=runs/bc/lift_mlp/checkpoints/last")
        if not self.rate_hz >= 0:
            raise ConfigError(f"control: rate_hz={self.rate_hz} must be >= 0 (0: the policy's training rate)")
        if self.prefetch < 0:
            raise ConfigError(f"control: prefetch={self.prefetch} must be >= 0 (0: off)")
        if self.action_mode not in ("auto", "ee_delta", "joint_pos"):
            raise ConfigError(f"control: action_mode={self.action_mode!r} must be auto, ee_delta or joint_pos")
        if not (self.max_dpos >= 0 and self.max_drot >= 0):
            raise ConfigError("control: max_dpos and max_drot must be >= 0 (0: the training env's)")
        if self.base_pos and (len(self.base_pos) != 3 or not all(np.isfinite(float(x)) for x in self.base_pos)):
            raise ConfigError(f"control: base_pos={self.base_pos!r} must be 3 finite numbers (m), or empty")
        if self.safety is not None:
            self.safety.validate()


def _training_env(cfg: ControlConfig) -> tuple[dict[str, Any], str, tuple[float, float, float]]:
    """(env config the policy was trained in, or {}; its task; base position of the arm in that task)."""
    from robolearn.eval.sim import recorded_env
    from robolearn.sim.registry import ROBOSUITE_PREFIX, get_task_class

    env, _ = recorded_env(cfg.policy)
    env = env or {}
    if cfg.task and cfg.task != env.get("task", cfg.task):
        env = {}  # another task than the recorded one: its defaults, as `robolearn eval --task` does
    task = cfg.task or env.get("task", "")
    if task.startswith(ROBOSUITE_PREFIX):
        raise ConfigError(f"control: the policy was trained on {task!r}; robosuite's actions drive its own OSC "
                          "controller in its own scene, which deploy does not reproduce. Deploy policies trained "
                          "on native tasks (`robolearn tasks`)")
    if task:
        get_task_class(task)  # an unknown task fails here, with a did-you-mean
    return env, task, (0.0, 0.0, 0.0)  # every native task attaches the arm at the origin (sim.vec_env.build_model)


class ControlLoop:
    """obs -> policy -> IK -> safety filter, for one robot (see the module doc)."""

    def __init__(self, cfg: ControlConfig):
        import torch

        from robolearn.inference.engine import InferenceEngine
        from robolearn.policies import load_policy
        from robolearn.sim.config import EnvConfig

        cfg.validate()
        self.cfg = cfg
        self.robot_spec = load_robot(cfg.robot)
        policy = load_policy(cfg.policy)
        env, self.task, base = _training_env(cfg)
        defaults = EnvConfig()
        self.training_hz = float(env.get("control_hz", defaults.control_hz))
        self.rate_hz = float(cfg.rate_hz or self.training_hz)
        self.control_dt = 1.0 / self.rate_hz
        self.max_dpos = float(cfg.max_dpos or env.get("max_dpos", defaults.max_dpos))
        self.max_drot = float(cfg.max_drot or env.get("max_drot", defaults.max_drot))
        self.action_mode = self._action_mode(policy, env.get("action_mode"))
        self._check_fit(policy)
        self.kinematics = ArmKinematics(self.robot_spec, cfg.base_pos or base)
        self.filter = SafetyFilter(self.robot_spec, cfg.safety or SafetyConfig(), self.control_dt, self.kinematics)
        torch.manual_seed(cfg.seed)
        self.policy = policy
        self.engine = InferenceEngine(policy, 1, device=cfg.device, trace=cfg.trace, prefetch=cfg.prefetch,
                                      temporal_ensemble=None if cfg.temporal_ensemble < 0 else cfg.temporal_ensemble)
        keys = policy.config.obs_keys
        self.required_cameras = [k.removeprefix(IMAGES) for k in keys if k.startswith(IMAGES)]
        self.needs_environment_state = ENV_STATE in keys
        self.enabled = False
        self.last_action: np.ndarray | None = None

    # ---- set-up checks -----------------------------------------------------------------------------
    def _action_mode(self, policy, recorded: str | None) -> str:
        if self.cfg.action_mode != "auto":
            return self.cfg.action_mode
        if recorded in ("ee_delta", "joint_pos"):
            return recorded
        names = list(policy.features["action"].names or [])
        if names == EE_DELTA_NAMES:
            return "ee_delta"
        if names and names[:-1] == list(self.robot_spec.joint_names):
            return "joint_pos"
        return "joint_pos" if policy.action_dim == self.robot_spec.dof + 1 != 7 else "ee_delta"

    def _check_fit(self, policy) -> None:
        """Refuse a policy whose actions or observations this robot cannot give it, naming what differs."""
        r = self.robot_spec
        want = 7 if self.action_mode == "ee_delta" else r.dof + 1
        if policy.action_dim != want:
            raise ConfigError(
                f"the policy outputs {policy.action_dim}-dim actions; robot {r.name!r} takes {want} in "
                f"action_mode={self.action_mode} (ee_delta: 7; joint_pos: {r.dof} joints + gripper = {r.dof + 1}). "
                "Was it trained for another robot or action mode?")
        names = policy.features["action"].names
        if self.action_mode == "joint_pos" and names and list(names[:-1]) != list(r.joint_names):
            raise ConfigError(f"the policy's actions are joint targets for {list(names[:-1])}; robot {r.name!r} has "
                              f"joints {list(r.joint_names)}")
        for key in policy.config.obs_keys:
            shape = tuple(policy.features[key].shape)
            if key == STATE and shape != (2 * r.dof + 9,):
                raise ConfigError(f"the policy reads {STATE} of shape {shape}, robot {r.name!r} gives "
                                  f"({2 * r.dof + 9},): q, dq ({r.dof} joints each), TCP position 3, quaternion 4, "
                                  "fingers 2. Was it trained on another robot?")
            if key not in (STATE, ENV_STATE) and not key.startswith(IMAGES):
                raise ConfigError(f"the policy reads {key!r}, which the control loop cannot build from a robot "
                                  f"state (it builds {STATE}, {ENV_STATE} and {IMAGES}<camera>)")

    # ---- enable / e-stop -----------------------------------------------------------------------------
    def enable(self) -> None:
        """Start commanding the policy; its history starts afresh (what it saw before is stale)."""
        if not self.enabled:
            self.engine.reset()
        self.enabled = True

    def disable(self) -> None:
        """Hold the current position; step() no longer runs the policy."""
        self.enabled = False

    def reset(self) -> None:
        """New episode: clear the policy's observation history and action queue."""
        self.engine.reset()

    def estop(self, reason: str = "e-stop") -> None:
        """Latch the safety filter's e-stop (cleared only by clear_estop / filter.reset())."""
        self.filter.estop(reason)

    def clear_estop(self) -> None:
        self.filter.reset()

    # ---- one tick ------------------------------------------------------------------------------------
    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """The policy's observation, batch 1: {key: (1, *shape)} for every key the policy reads.

        Raises StateError / ObservationError naming a missing or malformed input."""
        from robolearn.policies.base import ObservationError

        r = self.robot_spec
        check_state(state, r.dof)
        obs: dict[str, np.ndarray] = {}
        for key in self.policy.config.obs_keys:
            ft = self.policy.features[key]
            if key == STATE:
                obs[key] = self.kinematics.proprio(state.q, state.dq, state.fingers).astype(np.float32)[None]
            elif key == ENV_STATE:
                if state.environment_state is None:
                    raise ObservationError(
                        f"the policy reads {ENV_STATE} ({ft.shape[0]} values: {', '.join(ft.names or [])}), and the "
                        "robot state has none; fill RobotState.environment_state from an object tracker (or the sim)")
                v = np.asarray(state.environment_state, dtype=np.float32)
                if v.shape != tuple(ft.shape):
                    raise ObservationError(f"robot state environment_state has shape {v.shape}; the policy reads "
                                           f"{tuple(ft.shape)}")
                if not np.all(np.isfinite(v)):
                    raise ObservationError("robot state environment_state contains NaN or inf; check the tracker")
                obs[key] = v[None]
            else:
                cam = key.removeprefix(IMAGES)
                if cam not in state.images:
                    raise ObservationError(f"the policy reads camera {cam!r}, which the robot state lacks (it has "
                                           f"{', '.join(state.images) or 'no cameras'}); publish that camera")
                img = np.asarray(state.images[cam])
                if img.shape != tuple(ft.shape) or img.dtype != np.uint8:
                    raise ObservationError(f"camera {cam!r} gives {img.dtype} images of shape {img.shape}; the policy "
                                           f"reads uint8 {tuple(ft.shape)} (H, W, 3): resize the camera stream")
                obs[key] = img[None]
        return obs

    def step(self, state: RobotState | None, now: float) -> Command:
        """One tick: the safe command answering `state` at time `now` (a hold when disabled, when the
        state is missing, stale or unusable, or when the policy's observation cannot be built)."""
        if not self.enabled:
            return self.filter.hold(state, now, "disabled")
        held = self.filter.guard(state, now)
        if held is not None:
            return held
        try:
            obs = self.observation(state)
        except RobolearnError as e:
            return self.filter.hold(state, now, str(e))
        action = self.engine.act(obs)[0].astype(np.float64)
        self.last_action = action
        if not np.all(np.isfinite(action)):
            return self.filter.hold(state, now, "policy action contains NaN or inf")
        r = self.robot_spec
        if self.action_mode == "ee_delta":
            q = self.kinematics.ee_delta_to_joint(state.q, action, self.max_dpos, self.max_drot, self.control_dt,
                                                  fingers=state.fingers)
        else:
            q = action[: r.dof]
        return self.filter(q, width_from_action(action[-1], r.gripper_width_max), state, now)

    # ---- fixed-rate loop -----------------------------------------------------------------------------
    def run(self, robot: Robot, duration_s: float) -> dict:
        """Drive `robot` at rate_hz for `duration_s`: tick k wakes at t0 + k / rate_hz (absolute deadlines,
        so lateness never accumulates; deadlines already missed are skipped and counted as overruns).
        Returns timing stats in s: period jitter |period - 1/rate| and wake lateness, and obs -> command
        latency (state stamp to the command being sent), p50/p99 each; counts of ticks, holds, overruns, and
        of the filter's reasons (their numbers replaced by #)."""
        if not duration_s > 0:
            raise ConfigError(f"run: duration_s={duration_s} must be positive")
        dt = self.control_dt
        wakes, late, latency = [], [], []
        reasons: Counter[str] = Counter()
        held = overruns = k = 0
        t0 = time.monotonic()
        while k * dt < duration_s:
            deadline = t0 + k * dt
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            wake = time.monotonic()
            state = robot.read()
            cmd = self.step(state, wake)
            sent = time.monotonic()
            robot.command(cmd)
            wakes.append(wake)
            late.append(wake - deadline)
            if state is not None and _is_number(state.stamp):
                latency.append(sent - float(state.stamp))
            held += cmd.held
            reasons.update(_VALUE.sub("#", r) for r in cmd.reasons)
            k += 1
            missed = int((time.monotonic() - t0) / dt) + 1 - k  # deadlines already past
            if missed > 0:
                overruns += missed
                k += missed
        periods = np.diff(wakes)

        def pct(x, p) -> float | None:
            return float(np.percentile(x, p)) if len(x) else None

        jitter = np.abs(periods - dt)
        return {
            "ticks": len(wakes), "rate_hz": self.rate_hz, "duration_s": time.monotonic() - t0,
            "period_mean_s": float(periods.mean()) if len(periods) else None,
            "period_jitter_p50_s": pct(jitter, 50), "period_jitter_p99_s": pct(jitter, 99),
            "wake_late_p50_s": pct(late, 50), "wake_late_p99_s": pct(late, 99),
            "latency_p50_s": pct(latency, 50), "latency_p99_s": pct(latency, 99),
            "overruns": overruns, "held": held, "reasons": dict(reasons),
        }
