"""`ArmKinematics`: forward kinematics, TCP Jacobian and the sim's differential IK for a real arm.

The Panda's model is the simulated one (`robolearn.sim.robot.attach_panda`), so the TCP position and
quaternion are exactly what the sim puts in observation.state (position of the `panda_grip_site`
site, orientation of the `panda_eef` body). Arms with a `kinematics:` section in their hardware file
(the UR5e) are built in MjSpec from their standard Denavit-Hartenberg parameters; their TCP is the
flange plus `tcp_offset`. Either way the arm base sits at `base_pos` in the policy's world frame.

`ee_delta_to_joint` is the sim's ArmController math: for 7 joints the very same compiled kernel
(`robolearn.sim._kernels.ee_delta_to_ctrl`), for other arms `dls_ee_delta`, its numpy twin.
"""

from __future__ import annotations

import numpy as np

from robolearn.deploy.robot import StateError
from robolearn.errors import ActionError, ConfigError, RobolearnError
from robolearn.hardware import RobotSpec

# the sim's ArmController defaults (robolearn.sim.controller)
DAMPING = 0.05
NULLSPACE_GAIN = 0.2
TCP_SITE, TCP_BODY = "tcp", "tcp"  # names in a DH-built model


def _dh_spec(robot: RobotSpec, base_pos):
    """MjSpec of a DH chain: body i turns about its own z (joint i); body i+1 sits at
    Trans_z(d_i) Trans_x(a_i) Rot_x(alpha_i) in it (standard DH); the TCP at tcp_offset in the last."""
    import mujoco

    spec = mujoco.MjSpec()
    parent = spec.worldbody.add_body(name="base", pos=list(map(float, base_pos)))
    pos, quat = [0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    for name, (d, a, alpha) in zip(robot.joint_names, robot.dh):
        body = parent.add_body(name=f"link_{name}", pos=pos, quat=quat, mass=1.0, inertia=[0.01, 0.01, 0.01])
        body.add_joint(name=name, type=mujoco.mjtJoint.mjJNT_HINGE, axis=[0.0, 0.0, 1.0])
        pos, quat = [float(a), 0.0, float(d)], [float(np.cos(alpha / 2)), float(np.sin(alpha / 2)), 0.0, 0.0]
        parent = body
    flange = parent.add_body(name="flange", pos=pos, quat=quat)
    tcp = flange.add_body(name=TCP_BODY, pos=list(map(float, robot.tcp_offset)))
    tcp.add_site(name=TCP_SITE)
    return spec


def dls_ee_delta(jac: np.ndarray, q: np.ndarray, action: np.ndarray, scale: np.ndarray, home: np.ndarray,
                 nullspace_gain: float, damping2: float, max_step: np.ndarray, lo: np.ndarray,
                 hi: np.ndarray) -> np.ndarray:
    """`ee_delta_to_ctrl` for one arm of any dof, in numpy: jac (6, dof), q (dof,), action (>= 6,)
    -> joint targets (dof,). dq = J^T (A + l^2 I)^-1 twist + z - J^T (A + eps I)^-1 J z, A = J J^T,
    z = k (home - q); scaled down as a whole to the per-step limit, then clipped to the joint limits."""
    from robolearn.sim._kernels import PROJECTION_EPS

    z = nullspace_gain * (home - q)
    a = jac @ jac.T
    y_t = np.linalg.solve(a + damping2 * np.eye(6), action[:6] * scale)
    y_z = np.linalg.solve(a + PROJECTION_EPS * np.eye(6), jac @ z)
    dq = z + jac.T @ (y_t - y_z)
    over = np.abs(dq) > max_step
    shrink = float(np.min(max_step[over] / np.abs(dq[over]))) if over.any() else 1.0
    return np.minimum(np.maximum(q + dq * shrink, lo), hi)


def state_names(dof: int) -> list[str]:
    """Names of `ArmKinematics.proprio`'s entries; robolearn.sim.vec_env.STATE_NAMES for the 7-joint Panda."""
    return ([f"q{i + 1}" for i in range(dof)] + [f"dq{i + 1}" for i in range(dof)]
            + ["tcp_x", "tcp_y", "tcp_z", "tcp_qw", "tcp_qx", "tcp_qy", "tcp_qz", "finger_left", "finger_right"])


class ArmKinematics:
    """A MuJoCo model of one arm: `fk`, `jacobian` and `ee_delta_to_joint` at given joint positions.

    Not thread-safe (one MjData, reused between calls)."""

    def __init__(self, robot: RobotSpec, base_pos=(0.0, 0.0, 0.0)):
        import mujoco

        self.robot = robot
        self.base_pos = np.asarray(base_pos, dtype=np.float64)
        if self.base_pos.shape != (3,) or not np.all(np.isfinite(self.base_pos)):
            raise ConfigError(f"base_pos must be 3 finite numbers (m, world frame), got {base_pos!r}")
        if robot.dh is None:
            from robolearn.sim import robot as sim_robot

            if robot.dof != 7 or len(robot.gripper_joint_names) != 2:
                raise ConfigError(f"{robot.path}: no 'kinematics' section, and the arm is not the simulated Panda (7 "
                                  "joints, 2 fingers); add its DH parameters as hardware/robots/ur5e.yaml does")

            spec = mujoco.MjSpec()
            sim_robot.attach_panda(spec, robot, tuple(self.base_pos))
            site, body = sim_robot.TCP_SITE, sim_robot.EE_BODY
        else:
            spec, site, body = _dh_spec(robot, self.base_pos), TCP_SITE, TCP_BODY
        self.model = m = spec.compile()
        self.data = mujoco.MjData(m)
        jid = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in robot.joint_names]
        if min(jid) < 0:
            raise RobolearnError(f"{robot.path}: joint {robot.joint_names[jid.index(-1)]!r} is not in the arm model")
        self._jid = np.array(jid, dtype=np.int64)
        self._qpos = m.jnt_qposadr[jid].astype(np.int64)
        self._dofs = m.jnt_dofadr[jid].astype(np.int64)
        fingers = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n) for n in robot.gripper_joint_names]
        self._finger_qpos = m.jnt_qposadr[fingers].astype(np.int64) if len(fingers) == 2 and min(fingers) >= 0 \
            else None
        self._site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, site)
        self._body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, body)
        self._jac = np.zeros((1, 6, m.nv))
        self._at: np.ndarray | None = None  # the (q, fingers) the data was last computed at
        self._jac_ready = False  # self._jac is the Jacobian at self._at
        self._reach: dict[int, float] = {}
        self.dof = robot.dof

    def _compute(self, q, fingers=None, jacobian: bool = False) -> None:
        """Kinematics at q (and the finger positions, when given); the TCP Jacobian too when asked."""
        import mujoco

        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self.dof,) or not np.isfinite(q).all():
            raise StateError(f"joint positions must be {self.dof} finite numbers, got {q!r}")
        key = q if fingers is None or self._finger_qpos is None else np.concatenate([q, fingers])
        if self._at is None or self._at.shape != key.shape or not np.array_equal(self._at, key):
            d = self.data
            d.qpos[self._qpos] = q
            if key.shape != q.shape:  # finger positions move the arm's centre of mass, which mj_jac works from
                d.qpos[self._finger_qpos] = fingers
            mujoco.mj_kinematics(self.model, d)
            self._at, self._jac_ready = key.copy(), False
        if jacobian and not self._jac_ready:
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jac[0, :3], self._jac[0, 3:], self._site)
            self._jac_ready = True

    def fk(self, q, fingers=None) -> tuple[np.ndarray, np.ndarray]:
        """q (dof,) rad -> TCP position (3,) m and quaternion (4,) wxyz, in the policy's world frame."""
        self._compute(q, fingers)
        return self.data.site_xpos[self._site].copy(), self.data.xquat[self._body].copy()

    def proprio(self, q, dq, fingers) -> np.ndarray:
        """observation.state (2 dof + 9,) as robolearn.sim assembles it: q, dq, TCP position, TCP quaternion
        (wxyz), the two finger positions (names: `state_names`)."""
        pos, quat = self.fk(q)
        return np.concatenate([q, dq, pos, quat, fingers])

    def tcp_pos(self, q) -> np.ndarray:
        """q (dof,) -> TCP position (3,) m (a view, valid until the next call)."""
        self._compute(q)
        return self.data.site_xpos[self._site]

    def jacobian(self, q, fingers=None) -> np.ndarray:
        """q (dof,) -> (6, dof) TCP Jacobian, linear rows then angular, world frame."""
        self._compute(q, fingers, jacobian=True)
        return self._jac[0][:, self._dofs].copy()

    def ee_delta_to_joint(self, q, action, max_dpos: float, max_drot: float, control_dt: float,
                          fingers=None) -> np.ndarray:
        """The sim's ee_delta control at joint positions q (dof,): action (7,) = (dx, dy, dz) * max_dpos m,
        (drx, dry, drz) * max_drot rad (world frame), gripper (ignored here) -> joint targets (dof,) rad,
        each within velocity_limit * control_dt of q and within the joint limits. `fingers` (2,), when
        given, are set in the model as the sim has them (the Jacobian then matches it to the last bit)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ActionError(f"ee_delta action must be 7 finite numbers (dpos 3, drot 3, gripper), got {a!r}")
        self._compute(q, fingers, jacobian=True)
        r = self.robot
        q = np.ascontiguousarray(q, dtype=np.float64)  # the kernel is compiled for contiguous arrays
        scale = np.array([max_dpos] * 3 + [max_drot] * 3, dtype=np.float64)
        max_step = r.velocity_limit * control_dt
        if self.dof == 7:
            from robolearn.sim._kernels import ee_delta_to_ctrl

            out = np.empty((1, 9))
            ee_delta_to_ctrl(self._jac, self._dofs, q[None], a[None], scale, r.home, NULLSPACE_GAIN, DAMPING**2,
                             max_step, r.position_lower, r.position_upper, r.gripper_width_max / 2, out)
            return out[0, :7].copy()
        return dls_ee_delta(self._jac[0][:, self._dofs], q, a, scale, r.home, NULLSPACE_GAIN, DAMPING**2,
                            max_step, r.position_lower, r.position_upper)

    def reach(self, samples: int = 4096) -> float:
        """Largest TCP distance from the base over `samples` random joint positions within the limits
        (seeded: the same every call), m."""
        if samples not in self._reach:
            r = self.robot
            qs = np.random.default_rng(0).uniform(r.position_lower, r.position_upper, (samples, self.dof))
            self._reach[samples] = max(float(np.linalg.norm(self.tcp_pos(q) - self.base_pos)) for q in qs)
        return self._reach[samples]
