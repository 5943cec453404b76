"""What the control loop reads from a robot and sends to it: `RobotState`, `Command`, the `Robot` interface.

A `Robot` is anything with `read() -> RobotState | None` and `command(Command)`: `SimRobot` (a sim task),
and the ROS 2 nodes in ros_ws/ over topics. Units are SI, joint vectors in the hardware file's joint
order, finger positions as the simulated Panda reports them (left +width/2, right -width/2, m).

The gripper command is a width between the fingers. The sim's gripper action g in [-1, 1] (-1 open,
+1 closed) opens each finger by half_width * (1 - g) / 2, so width = width_max * (1 - g) / 2 and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from robolearn.errors import RobolearnError


class StateError(RobolearnError, ValueError):
    """A RobotState has a missing field, the wrong shape, or NaN/inf values."""


@dataclass
class RobotState:
    """One reading of the robot, as the ROS node assembles it from topics."""

    stamp: float
    """receive time on the caller's clock (time.monotonic()), s"""
    q: np.ndarray
    """(dof,) arm joint positions, rad, in the hardware file's joint order"""
    dq: np.ndarray
    """(dof,) arm joint velocities, rad/s"""
    fingers: np.ndarray
    """(2,) finger joint positions, m: (+width/2, -width/2) as in the sim's observation.state"""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """camera name -> (H, W, 3) uint8"""
    environment_state: np.ndarray | None = None
    """task object state (from a tracker or the sim), when the policy reads it"""

    @property
    def gripper_width(self) -> float:
        return float(self.fingers[0] - self.fingers[1])


@dataclass
class Command:
    """What the safety filter lets through for one control tick.

    `q` is empty (shape (0,)) and `gripper_width` NaN only while no valid robot state has ever been
    seen: there is no safe position to command, so nothing should be sent."""

    q: np.ndarray
    """(dof,) joint position targets, rad"""
    gripper_width: float
    """gripper opening, m (distance between the fingers)"""
    reasons: list[str]
    """what the safety filter changed and why (empty: passed unchanged)"""
    held: bool
    """True when this is a hold (disabled, watchdog, e-stop, unusable command)"""
    stamp: float
    """stamp of the RobotState it answers (NaN when there was none)"""

    @property
    def empty(self) -> bool:
        """No position is known yet: send nothing."""
        return self.q.size == 0


class Robot(Protocol):
    """What `ControlLoop.run` drives; the ROS nodes implement the same over topics."""

    def read(self) -> RobotState | None:
        """The newest state, or None when none has arrived."""

    def command(self, cmd: Command) -> None:
        """Send one command (a no-op for an empty one)."""


def check_state(state: RobotState, dof: int) -> None:
    """Raise StateError naming the field unless q, dq (dof,), fingers (2,) and stamp are finite numbers."""
    if not isinstance(state, RobotState):
        raise StateError(f"robot state must be a RobotState, got {type(state).__name__}")
    try:
        stamp = float(state.stamp)
    except (TypeError, ValueError):
        raise StateError(f"robot state stamp must be a number (time.monotonic() seconds), got {state.stamp!r}") \
            from None
    if not np.isfinite(stamp):
        raise StateError(f"robot state stamp is {stamp}; it must be a finite time in seconds")
    for name, n in (("q", dof), ("dq", dof), ("fingers", 2)):
        value = getattr(state, name)
        try:
            v = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise StateError(f"robot state {name} must be {n} numbers, got {value!r}") from None
        if v.shape != (n,):
            raise StateError(f"robot state {name} has shape {v.shape}; expected ({n},) for this {dof}-joint arm")
        if not np.isfinite(v).all():
            bad = int(np.flatnonzero(~np.isfinite(v))[0])
            raise StateError(f"robot state {name} contains NaN or inf (entry {bad}); check the joint_states source")


def width_from_action(g: float, width_max: float) -> float:
    """Sim gripper action g in [-1, 1] (clipped; -1 open) -> width between the fingers, m."""
    return width_max * (1.0 - min(max(float(g), -1.0), 1.0)) / 2.0


def action_from_width(width: float, width_max: float) -> float:
    """Width between the fingers, m -> the sim gripper action g (the inverse of `width_from_action`)."""
    return 1.0 - 2.0 * float(width) / width_max
