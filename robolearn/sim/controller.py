"""Batched arm control: end-effector deltas through damped-least-squares differential IK, or joint
position targets. One call per control step for all envs; the PD loop itself runs inside MuJoCo's
position actuators at the physics rate (no per-substep Python)."""

from __future__ import annotations

from typing import Literal

import mujoco
import numpy as np

from robolearn.hardware import RobotSpec
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
        self._damp = damping**2 * np.eye(6)
        self.nullspace_gain = nullspace_gain
        self.nv = nv
        self.half_width = robot.gripper_width_max / 2
        self._jac = np.zeros((6, nv))  # scratch for one env's Jacobian, its 6x6 system and solution
        self._a = np.zeros((6, 6))
        self._y = np.zeros(6)

    @property
    def action_dim(self) -> int:
        return 7 if self.mode == "ee_delta" else 8

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

    def ik(self, models, datas, q: np.ndarray, twist: np.ndarray) -> np.ndarray:
        """Damped-least-squares IK step with a null-space pull toward home: -> (N, 7) joint targets.

        dq = z + J^T y,  (J J^T + l^2 I) y = twist - J z,  z = k (home - q)
        i.e. J+ twist + (I - J+ J) z with J+ = J^T (J J^T + l^2 I)^-1. Solved per env with MuJoCo's
        6x6 Cholesky: numpy's LAPACK path costs more per call than the physics at these sizes, and
        the OpenBLAS bundled with numpy threads even a 6x6 factorization, which stalls on a busy CPU.
        The per-env cost (~10 us) is a fixed fraction of that env's physics, whatever N is.
        """
        site, dofs = self.ids.tcp_site, self.ids.arm_dof
        z = self.nullspace_gain * (self.robot.home - q)
        dq = np.empty_like(q)
        jac, a, y = self._jac, self._a, self._y
        for i, (m, d) in enumerate(zip(models, datas)):
            mujoco.mj_jacSite(m, d, jac[:3], jac[3:], site)
            j = jac[:, dofs]
            np.matmul(j, j.T, out=a)
            a += self._damp
            mujoco.mju_cholFactor(a, 0.0)
            mujoco.mju_cholSolve(y, a, twist[i] - j @ z[i])
            dq[i] = z[i] + j.T @ y
        # scale the whole step down when a joint would exceed its velocity limit: clipping joints one
        # by one would bend a straight-line command into a diagonal at full-scale actions
        scale = np.min(self.max_step / np.maximum(np.abs(dq), 1e-12), axis=1, keepdims=True)
        return q + dq * np.minimum(scale, 1.0)

    def ee_to_joint(self, models, datas, q: np.ndarray, ee_action: np.ndarray) -> np.ndarray:
        """ee_delta actions (N, 7) -> joint_pos actions (N, 8) at the current state."""
        q_target = self.ik(models, datas, q, ee_action[:, :6] * self._twist_scale)
        return np.concatenate([np.minimum(np.maximum(q_target, self.lo), self.hi), ee_action[:, 6:7]], axis=1)

    def compute(self, models, datas, q: np.ndarray, action: np.ndarray) -> np.ndarray:
        """(N, A) actions -> (N, 9) actuator targets."""
        if self.mode == "ee_delta":
            q_target = self.ik(models, datas, q, action[:, :6] * self._twist_scale)
        else:
            q_target = action[:, :7]
        out = np.empty((q.shape[0], 9))
        out[:, :7] = np.minimum(np.maximum(q_target, self.lo), self.hi)
        g = np.minimum(np.maximum(action[:, -1], -1.0), 1.0)
        out[:, 7] = self.half_width * (1.0 - g) / 2.0  # per finger opening, m
        out[:, 8] = -out[:, 7]
        return out
