"""`SafetyFilter`: the last step before a joint command reaches the arm.

Every tick it either passes a command through, changed no more than needed, or holds:

- hold (`held=True`) when the e-stop is latched, when the newest robot state is missing, older than
  `max_obs_age_s` (the watchdog) or unusable (NaN, wrong shape), or when the command itself is;
  a hold freezes one target for as long as it lasts: the measured position when the state is fresh,
  else the last command sent (at most one tick of motion from the last good state);
- otherwise, in this order: the step from the measured position is scaled down as a whole so that no
  joint moves more than velocity_scale * velocity_limit * control_dt (a straight-line command stays
  straight, as in the sim's IK), then clipped to the joint limits; the TCP (via FK) is kept inside
  the workspace box by shortening the step (when the arm is already outside the box, no step may take
  it further out than the measured position, clipped into the limits, is); the gripper width is
  clipped to its range.

So a command that is not a hold always lies within the joint limits, one tick of motion of the
measured position, the workspace box and the gripper range; a hold lies within the joint and gripper
limits. Each change is named in `Command.reasons`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from robolearn.deploy.kinematics import ArmKinematics
from robolearn.deploy.robot import Command, RobotState, StateError, check_state
from robolearn.errors import ConfigError
from robolearn.hardware import RobotSpec

TOL = 1e-9  # changes below this (rad, m) are rounding, not worth a reason
WORKSPACE_BISECTIONS = 12  # the step kept inside the box is within 1/4096 of the longest that fits


@dataclass
class SafetyConfig:
    """Limits the safety filter enforces on top of the hardware file's joint and gripper limits."""

    workspace_lo: list[float] = field(default_factory=list)
    """lower corner of the TCP box, m, policy world frame; empty: the robot's default (its hardware
    file's `workspace`, else reach-sized around the base and above the mounting plane)"""
    workspace_hi: list[float] = field(default_factory=list)
    """upper corner of the TCP box, m; empty: the robot's default"""
    velocity_scale: float = 1.0
    """fraction of the datasheet joint velocity limit a command may move per tick (0 < s <= 1)"""
    max_obs_age_s: float = 0.0
    """watchdog: hold when the newest robot state is older than this, s; 0: 1.5 control periods"""
    watchdog_action: Literal["hold", "stop"] = "hold"
    """hold: hold until fresh states return; stop: also latch the e-stop (only reset() clears it)"""

    def validate(self) -> None:
        for name in ("workspace_lo", "workspace_hi"):
            v = getattr(self, name)
            if v and (len(v) != 3 or not all(np.isfinite(float(x)) for x in v)):
                raise ConfigError(f"safety: {name}={v!r} must be 3 finite numbers (x, y, z in m), or empty")
        if bool(self.workspace_lo) != bool(self.workspace_hi):
            raise ConfigError("safety: set both workspace_lo and workspace_hi, or neither (the robot's default)")
        if self.workspace_lo and any(a >= b for a, b in zip(self.workspace_lo, self.workspace_hi)):
            raise ConfigError(f"safety: workspace_lo={self.workspace_lo} must be below workspace_hi="
                              f"{self.workspace_hi} on every axis")
        if not 0 < self.velocity_scale <= 1:
            raise ConfigError(f"safety: velocity_scale={self.velocity_scale} must be in (0, 1]")
        if not self.max_obs_age_s >= 0:
            raise ConfigError(f"safety: max_obs_age_s={self.max_obs_age_s} must be >= 0 (0: 1.5 control periods)")
        if self.watchdog_action not in ("hold", "stop"):
            raise ConfigError(f"safety: watchdog_action={self.watchdog_action!r} must be 'hold' or 'stop'")


def default_workspace(robot: RobotSpec, kinematics: ArmKinematics) -> tuple[np.ndarray, np.ndarray]:
    """The robot's default TCP box in the world frame: its hardware file's `workspace` (base frame) moved
    to the base, else +-reach around the base in x and y, from the mounting plane up to reach in z."""
    base = kinematics.base_pos
    if robot.workspace_lo is not None:
        return base + robot.workspace_lo, base + robot.workspace_hi
    r = kinematics.reach()
    return base + np.array([-r, -r, 0.0]), base + np.array([r, r, r])


class SafetyFilter:
    """Joint, velocity, workspace and gripper limits, watchdog and e-stop latch (see the module doc)."""

    def __init__(self, robot: RobotSpec, cfg: SafetyConfig, control_dt: float, kinematics: ArmKinematics):
        cfg.validate()
        if not control_dt > 0:
            raise ConfigError(f"safety: control_dt={control_dt} must be a positive period, s")
        self.robot, self.cfg, self.control_dt, self.kin = robot, cfg, float(control_dt), kinematics
        self.lo, self.hi = robot.position_lower, robot.position_upper
        self.max_step = cfg.velocity_scale * robot.velocity_limit * control_dt  # (dof,) rad per tick
        self.max_age = cfg.max_obs_age_s or 1.5 * control_dt
        if cfg.workspace_lo:
            self.ws_lo, self.ws_hi = np.asarray(cfg.workspace_lo, float), np.asarray(cfg.workspace_hi, float)
        else:
            self.ws_lo, self.ws_hi = default_workspace(robot, kinematics)
        self._box_lo, self._box_hi = self.ws_lo.tolist(), self.ws_hi.tolist()
        self.w_lo, self.w_hi = robot.gripper_width_min, robot.gripper_width_max
        self._estop: str | None = None
        self.reset()

    # ---- e-stop ------------------------------------------------------------------------------------
    def estop(self, reason: str) -> None:
        """Latch the e-stop: every later command is a hold until reset()."""
        if self._estop is None:
            self._estop = str(reason) or "e-stop"

    def reset(self) -> None:
        """Clear the e-stop and any hold; the next command is filtered against the state it comes with."""
        self._estop = None
        self._holding = False
        self._hold_q: np.ndarray | None = None
        self._hold_w = float("nan")
        self._last: tuple[np.ndarray, float] | None = None  # the last command that was not a hold
        self._good: tuple[np.ndarray, float] | None = None  # the last valid measured (q, width)

    @property
    def estopped(self) -> bool:
        return self._estop is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop

    # ---- the filter --------------------------------------------------------------------------------
    def check_state(self, state: RobotState | None, now: float) -> str | None:
        """Why `state` cannot be commanded from at time `now` (None: it can); remembers a valid one."""
        if state is None:
            return "watchdog: no robot state"
        try:
            check_state(state, self.robot.dof)
        except StateError as e:
            return str(e)
        age = float(now) - float(state.stamp)
        if not age <= self.max_age:  # also NaN `now`
            return f"watchdog: newest robot state is {age:.3f} s old (limit {self.max_age:.3f} s)"
        self._good = (np.array(state.q, dtype=np.float64), float(state.fingers[0] - state.fingers[1]))
        return None

    def hold(self, state: RobotState | None, now: float, reason: str) -> Command:
        """A hold command answering `state` (see the module doc for the target it freezes)."""
        return self._hold(state, reason, fresh=self.check_state(state, now) is None)

    def _hold(self, state: RobotState | None, reason: str, fresh: bool) -> Command:
        if not self._holding or self._hold_q is None:
            if fresh:
                target = self._good
            elif self._last is not None:
                target = self._last
            else:
                target = self._good  # the last valid state, if there ever was one
            if target is not None:
                self._hold_q = np.minimum(np.maximum(target[0], self.lo), self.hi)
                self._hold_w = min(max(target[1], self.w_lo), self.w_hi)
            self._holding = True
        stamp = float(state.stamp) if isinstance(state, RobotState) and _is_number(state.stamp) else float("nan")
        q = self._hold_q.copy() if self._hold_q is not None else np.empty(0)
        return Command(q=q, gripper_width=self._hold_w, reasons=[reason], held=True, stamp=stamp)

    def guard(self, state: RobotState | None, now: float) -> Command | None:
        """The hold answering `state` when the e-stop is latched or the state cannot be commanded from
        (the watchdog; with watchdog_action=stop this latches the e-stop), else None."""
        if self._estop is not None:
            return self.hold(state, now, f"e-stop: {self._estop}")
        problem = self.check_state(state, now)
        if problem is None:
            return None
        if self.cfg.watchdog_action == "stop":
            self.estop(problem)
        return self._hold(state, problem, fresh=False)

    def __call__(self, q_cmd, gripper_width_cmd, state: RobotState | None, now: float) -> Command:
        """Filter one command (q_cmd (dof,) rad, gripper width m) against the newest `state` at `now`."""
        held = self.guard(state, now)
        if held is not None:
            return held
        q_meas = self._good[0]
        try:
            q = np.asarray(q_cmd, dtype=np.float64).reshape(-1).copy()
            w = float(gripper_width_cmd)
        except (TypeError, ValueError):
            return self._hold(state, f"command: not numbers ({type(q_cmd).__name__}, "
                                     f"{type(gripper_width_cmd).__name__})", fresh=True)
        if q.shape != (self.robot.dof,) or np.ndim(q_cmd) != 1:
            return self._hold(state, f"command: q has shape {np.shape(q_cmd)}, expected ({self.robot.dof},)",
                              fresh=True)
        if not np.isfinite(q).all():
            bad = int(np.flatnonzero(~np.isfinite(q))[0])
            return self._hold(state, f"command: joint {bad + 1} is NaN or inf", fresh=True)
        if not np.isfinite(w):
            return self._hold(state, "command: gripper width is NaN or inf", fresh=True)

        reasons: list[str] = []
        names = self.robot.joint_names
        # the interval each joint may reach this tick: its limits and one tick of motion from where it is
        lo = np.maximum(self.lo, q_meas - self.max_step)
        hi = np.minimum(self.hi, q_meas + self.max_step)
        if np.any(lo > hi):
            k = int(np.flatnonzero(lo > hi)[0])
            return self._hold(state, f"joint {k + 1} ({names[k]}) at {q_meas[k]:.3f} rad is more than one tick of "
                                     "motion outside its limits", fresh=True)
        step = q - q_meas
        ratio = np.abs(step) / self.max_step
        if ratio.max() > 1 + TOL:
            k = int(np.argmax(ratio))
            step /= ratio[k]
            reasons.append(f"step scaled to {1 / ratio[k]:.3g} of the command (joint {k + 1} velocity limit)")
        out = np.minimum(np.maximum(q_meas + step, lo), hi)
        for k in np.flatnonzero(np.abs(out - (q_meas + step)) > TOL):
            side = "upper" if out[k] < q_meas[k] + step[k] else "lower"
            reasons.append(f"joint {k + 1} ({names[k]}) clipped to {side} limit")
        out, why = self._inside_workspace(np.minimum(np.maximum(q_meas, lo), hi), out)
        if why:
            reasons.append(why)
            out = np.minimum(np.maximum(out, lo), hi)  # a convex combination stays inside, up to rounding
        w_out = min(max(w, self.w_lo), self.w_hi)
        if abs(w_out - w) > TOL:
            reasons.append(f"gripper width {w:.4g} m clipped to {w_out:.4g} m")
        self._holding, self._hold_q = False, None
        self._last = (out, w_out)
        return Command(q=out.copy(), gripper_width=w_out, reasons=reasons, held=False, stamp=float(state.stamp))

    def outside(self, pos: np.ndarray) -> float:
        """Distance of a TCP position from the workspace box, m (0 inside)."""
        d2 = 0.0
        for p, lo, hi in zip(pos.tolist(), self._box_lo, self._box_hi):  # 3 floats: plain Python is fastest
            e = lo - p if p < lo else p - hi if p > hi else 0.0
            d2 += e * e
        return d2**0.5

    def _inside_workspace(self, q0: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, str]:
        """q, or the longest part of the step q0 -> q that keeps the TCP in the box (no further out than
        at q0 when that is outside already); q0: the measured position clipped into this tick's limits."""
        out = self.outside(self.kin.tcp_pos(q))
        if out == 0.0:
            return q, ""
        allowed = self.outside(self.kin.tcp_pos(q0)) + TOL
        if out <= allowed:
            return q, ""
        ok, bad = 0.0, 1.0  # fractions of the step known to keep / leave the box
        for _ in range(WORKSPACE_BISECTIONS):
            mid = (ok + bad) / 2
            if self.outside(self.kin.tcp_pos(q0 + mid * (q - q0))) <= allowed:
                ok = mid
            else:
                bad = mid
        return q0 + ok * (q - q0), f"step shortened to {ok:.3g} to keep the TCP inside the workspace box"


def _is_number(x) -> bool:
    try:
        return bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False
