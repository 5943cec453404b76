"""Batched arm control: end-effector deltas through damped-least-squares differential IK, or joint
position targets. One call per control step for all envs; the PD loop itself runs inside MuJoCo's
position actuators at the physics rate (no per-substep Python)."""

from __future__ import annotations

from typing import Literal

import mujoco
import numpy as np

from robolearn.hardware import RobotSpec
from robolearn.sim._kernels import ee_delta_to_ctrl
from robolearn.sim.robot import RobotIds


class ArmController:
    """Turns actions into actuator targets.

    ee_delta action (N, 7): (dx, dy, dz) * max_dpos [m, world frame], (drx, dry, drz) * max_drot
    [rotation vector, world frame], gripper in [-1, 1] (-1 open, +1 closed).
    joint_pos action (N, 8): 7 joint position targets [rad], gripper in [-1, 1].
    Returns ctrl (N, 9): 7 arm joint targets then the two finger targets.
    """

    def __init__(self, robot: RobotSpec, ids: RobotIds, nv: int, mode: Literal["ee_delta", "joint_pos"],
                 max_dpos: float, max_drot: float, control_dt: float, damping: float = 0.05,
                 nullspace_gain: float = 0.2):
        self.robot, self.ids, self.mode = robot, ids, mode
        self.max_dpos, self.max_drot = max_dpos, max_drot
        self._twist_scale = np.array([max_dpos] * 3 + [max_drot] * 3)
        self.lo, self.hi = robot.position_lower, robot.position_upper
        self.max_step = robot.velocity_limit * control_dt  # joint change per control step, rad
        self._damping2 = damping**2
        self.nullspace_gain = nullspace_gain
        self.nv = nv
        self.half_width = robot.gripper_width_max / 2
        self._jac = np.zeros((0, 6, nv))
        self._dofs = ids.arm_dof.astype(np.int64)

    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "ee_delta":
            return -np.ones(7, np.float32), np.ones(7, np.float32)
        lo = np.append(self.lo, -1.0).astype(np.float32)
        hi = np.append(self.hi, 1.0).astype(np.float32)
        return lo, hi

    def hold_action(self, q: np.ndarray) -> np.ndarray:
        """(N, A) action that keeps the arm where it is with the gripper open."""
        n = q.shape[0]
        if self.mode == "ee_delta":
            a = np.zeros((n, 7))
        else:
            a = np.concatenate([q, np.zeros((n, 1))], axis=1)
        a[:, -1] = -1.0
        return a

    def jacobians(self, models, datas) -> np.ndarray:
        """(N, 6, nv) TCP Jacobians (linear; angular) of every env, in a reused buffer."""
        n = len(datas)
        if self._jac.shape[0] != n:
            self._jac = np.zeros((n, 6, self.nv))
            self._jac_rows = [(self._jac[i, :3], self._jac[i, 3:]) for i in range(n)]
        site = self.ids.tcp_site
        for m, d, (jacp, jacr) in zip(models, datas, self._jac_rows):
            mujoco.mj_jacSite(m, d, jacp, jacr, site)
        return self._jac

    def _ik_ctrl(self, models, datas, q: np.ndarray, action: np.ndarray) -> np.ndarray:
        out = np.empty((q.shape[0], 9))
        ee_delta_to_ctrl(self.jacobians(models, datas), self._dofs, q, action,
                         self._twist_scale, self.robot.home, self.nullspace_gain, self._damping2, self.max_step,
                         self.lo, self.hi, self.half_width, out)
        return out

    def ee_to_joint(self, models, datas, q: np.ndarray, ee_action: np.ndarray) -> np.ndarray:
        """ee_delta actions (N, 7) -> joint_pos actions (N, 8) at the current state."""
        ctrl = self._ik_ctrl(models, datas, q, np.ascontiguousarray(ee_action, dtype=np.float64))
        return np.concatenate([ctrl[:, :7], ee_action[:, 6:7]], axis=1)

    def compute(self, models, datas, q: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(N, A) actions -> (N, 9) actuator targets."""
        if self.mode == "ee_delta":
            return self._ik_ctrl(models, datas, q, action)
        out = np.empty((q.shape[0], 9))
        out[:, :7] = np.minimum(np.maximum(action[:, :7], self.lo), self.hi)
        g = np.minimum(np.maximum(action[:, -1], -1.0), 1.0)
        out[:, 7] = self.half_width * (1.0 - g) / 2.0  # per finger opening, m
        out[:, 8] = -out[:, 7]
        return out
