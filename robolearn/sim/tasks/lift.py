"""lift: pick a cube off the table."""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numba
import numpy as np

from robolearn.sim.registry import register_task
from robolearn.sim.task import (
    BatchState,
    ScriptedExpert,
    Task,
    TaskEval,
    TaskOptions,
    free_joint_qpos,
    grasp_quat,
    square_grasp_yaw,
)


@dataclass
class LiftOptions(TaskOptions):
    cube_half_size: float = 0.02
    """half edge of the cube, m"""
    lift_height: float = 0.05
    """height above its resting pose the cube must reach, m"""
    x_range: tuple[float, float] = (0.42, 0.62)
    """cube x at reset, m (robot base at the origin)"""
    y_range: tuple[float, float] = (-0.15, 0.15)
    """cube y at reset, m"""


TERMS = ("reach", "grasp", "lift", "success")  # column order of judge_lift's terms


@numba.njit(cache=True, nogil=True)
def judge_lift(tcp, cube, cube_quat, contact, half_size, lift_height, stage, success, terms, env_state):
    """Stage, success, dense terms (columns in TERMS order) and environment state of
    every env, in one compiled pass (at one env, ~20 numpy calls cost 10% of a physics step).

    Stages: reach -> grasp (TCP within 2 cm of the cube) -> lift (both fingers on the cube).
    Terms: reach 1 - tanh(10 d) approaches the cube; grasp 1 while both fingers touch it; lift
    rises to 1 at the success height while it is held; success 1 once it is lifted."""
    for e in range(tcp.shape[0]):
        d0, d1, d2 = tcp[e, 0] - cube[e, 0], tcp[e, 1] - cube[e, 1], tcp[e, 2] - cube[e, 2]
        dist = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
        grasped = contact[e, 0] and contact[e, 1]
        height = cube[e, 2] - half_size
        lifted = height > lift_height
        stage[e] = 2 if grasped else (1 if dist < 0.02 else 0)
        success[e] = lifted
        terms[e, 0] = 1.0 - np.tanh(10.0 * dist)
        terms[e, 1] = 1.0 if grasped else 0.0
        terms[e, 2] = min(max(height / lift_height, 0.0), 1.0) if grasped else 0.0
        terms[e, 3] = 1.0 if lifted else 0.0
        for c in range(3):
            env_state[e, c] = cube[e, c]
            env_state[e, 7 + c] = d0 if c == 0 else (d1 if c == 1 else d2)
        for c in range(4):
            env_state[e, 3 + c] = cube_quat[e, c]


@register_task
class Lift(Task):
    """Pick up a cube from the table and hold it above the table.

    Randomized: cube position (x, y uniform in `x_range` x `y_range`) and yaw (uniform), and the
    arm's start pose (home + Gaussian noise). Succeeds when the cube's centre is `lift_height` above
    its resting height.
    """

    name = "lift"
    description = "pick a cube off the table"
    stages = ("reach", "grasp", "lift")
    max_episode_steps = 100
    tracked_bodies = ("cube",)
    grasp_geoms = ("cube_geom",)
    randomized_bodies = ("cube",)
    reward_weights = {"reach": 1.0, "grasp": 0.5, "lift": 1.5, "success": 2.0}
    term_order = TERMS
    Options = LiftOptions

    def build(self, spec: mujoco.MjSpec) -> None:
        h = self.options.cube_half_size
        body = spec.worldbody.add_body(name="cube", pos=[0.5, 0, h])
        body.add_freejoint(name="cube_joint")
        body.add_geom(name="cube_geom", type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, h], rgba=[0.85, 0.15, 0.1, 1],
                      mass=0.08, friction=[1.2, 0.005, 0.0001])

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self.cube_qpos = free_joint_qpos(model, "cube")

    def sample_reset(self, rng):
        o = self.options
        return {"xy": np.array([rng.uniform(*o.x_range), rng.uniform(*o.y_range)]), "yaw": rng.uniform(-np.pi, np.pi)}

    def apply_reset(self, model, data, sample):
        a = self.cube_qpos
        data.qpos[a : a + 3] = [*sample["xy"], self.options.cube_half_size]
        data.qpos[a + 3 : a + 7] = [np.cos(sample["yaw"] / 2), 0, 0, np.sin(sample["yaw"] / 2)]

    @property
    def environment_state_names(self):
        return ["cube_x", "cube_y", "cube_z", "cube_qw", "cube_qx", "cube_qy", "cube_qz",
                "cube_to_tcp_x", "cube_to_tcp_y", "cube_to_tcp_z"]

    def evaluate(self, s: BatchState) -> TaskEval:
        o = self.options
        return self.judge_compiled(s, judge_lift, s.tcp_pos, s.body_pos["cube"], s.body_quat["cube"], s.grasp_contact,
                                   o.cube_half_size, o.lift_height)

    def make_expert(self, num_envs, max_dpos, max_drot):
        return LiftExpert(self, num_envs, max_dpos, max_drot)


class LiftExpert(ScriptedExpert):
    """above cube -> descend -> close -> lift. Phases map to stages reach, reach, grasp, lift."""

    PHASE_STAGE = np.array([0, 0, 1, 2])

    def act(self, s: BatchState):
        n = self.num_envs
        cube = s.body_pos["cube"]
        quat = grasp_quat(square_grasp_yaw(s.body_quat["cube"]))
        above = cube + [0, 0, 0.08]
        grip_at = cube.copy()
        lifted = cube.copy()
        lifted[:, 2] = self.task.options.cube_half_size + 0.15
        ph = self.phase.copy()  # advance() below must not chain phases within one step
        target = np.select([ph[:, None] == 0, ph[:, None] == 1, ph[:, None] == 2], [above, grip_at, s.tcp_pos], lifted)
        a = np.zeros((n, 7))
        a[:, :6] = self.servo(s, target, quat, gain=1.0)
        a[:, 6] = np.where(ph >= 2, 1.0, -1.0)
        err = np.linalg.norm(target - s.tcp_pos, axis=1)
        self.timer += 1
        self.advance((ph == 0) & (err < 0.01))
        self.advance((ph == 1) & (err < 0.006))
        self.advance((ph == 2) & (self.timer >= 6))
        return a, self.PHASE_STAGE[np.minimum(self.phase, 3)]
