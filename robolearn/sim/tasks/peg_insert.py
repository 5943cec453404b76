"""peg_insert: insert a square peg into a square hole with millimetre clearance."""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numba
import numpy as np

from robolearn.errors import ConfigError
from robolearn.sim.registry import register_task
from robolearn.sim.rotations import axis_angle_to_quat, quat_mul, quat_rotate, quat_to_yaw, rotation_error, yaw_quat
from robolearn.sim.task import (
    BatchState,
    ScriptedExpert,
    Task,
    TaskEval,
    TaskOptions,
    free_joint_qpos,
    grasp_quat,
    mocap_id,
)

QUARTER = np.pi / 2


def fold_quarter(angle: np.ndarray) -> np.ndarray:
    """Fold angles into [-pi/4, pi/4): a square peg in a square hole looks the same every 90 degrees."""
    return (angle + np.pi / 4) % QUARTER - np.pi / 4


TERMS = ("reach", "grasp", "lift", "align_xy", "align_yaw", "insert", "success")  # judge_peg_insert's columns


@numba.njit(cache=True, nogil=True)
def _quat_yaw(q):
    """Yaw (rotation about world z) of one wxyz quaternion (rotations.quat_to_yaw)."""
    w, x, y, z = q[0], q[1], q[2], q[3]
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


@numba.njit(cache=True, nogil=True)
def _point_on_axis(pos, q, h, out):
    """out = pos + q rotating (0, 0, h): the point at height h along a body's z axis, world frame
    (rotations.quat_rotate written out for one quaternion, in the same order of operations)."""
    w, x, y, z = q[0], q[1], q[2], q[3]
    t0, t1, t2 = 2.0 * (y * h - z * 0.0), 2.0 * (z * 0.0 - x * h), 2.0 * (x * 0.0 - y * 0.0)
    out[0] = pos[0] + ((0.0 + w * t0) + (y * t2 - z * t1))
    out[1] = pos[1] + ((0.0 + w * t1) + (z * t0 - x * t2))
    out[2] = pos[2] + ((h + w * t2) + (x * t1 - y * t0))


@numba.njit(cache=True, nogil=True)
def judge_peg_insert(tcp, peg, peg_quat, hole, hole_quat, contact, peg_half_length, grasp_offset, hole_depth,
                     insert_depth, hole_half_width, xy_tol, yaw_tol, stage, success, terms,
                     env_state):
    """Stage, success, dense terms (columns in TERMS order) and environment state of
    every env, in one compiled pass.

    Geometry: the peg's bottom centre and its grasp point (`grasp_offset` below its top) lie on its
    axis; `rel` is the bottom relative to the hole's rim centre in the fixture's (yawed) frame, so
    rel[2] is its height above the rim; the yaw error is hole yaw minus peg yaw folded into
    [-pi/4, pi/4) (a square peg looks the same every 90 degrees).
    Stages: reach -> grasp (TCP within 2 cm of the grasp point) -> align (both fingers on the peg)
    -> insert (held, bottom hovering 0-3 cm above the rim, centred within xy_tol and turned within
    yaw_tol; or already in the hole). In the hole = bottom below the rim and its centre inside the
    hole's square, which the walls allow only when the peg is really in; success at insert_depth."""
    bottom, grasp_pt = np.empty(3), np.empty(3)
    for e in range(tcp.shape[0]):
        _point_on_axis(peg[e], peg_quat[e], -peg_half_length, bottom)
        _point_on_axis(peg[e], peg_quat[e], peg_half_length - grasp_offset, grasp_pt)
        hole_yaw = _quat_yaw(hole_quat[e])
        c, sn = np.cos(hole_yaw), np.sin(hole_yaw)
        d0, d1, d2 = bottom[0] - hole[e, 0], bottom[1] - hole[e, 1], bottom[2] - hole[e, 2]
        rel0, rel1, rel2 = c * d0 + sn * d1, -sn * d0 + c * d1, d2
        xy_err = np.sqrt(rel0 * rel0 + rel1 * rel1)
        yaw_err = abs((hole_yaw - _quat_yaw(peg_quat[e]) + np.pi / 4) % QUARTER - np.pi / 4)
        r0, r1, r2 = tcp[e, 0] - grasp_pt[0], tcp[e, 1] - grasp_pt[1], tcp[e, 2] - grasp_pt[2]
        reach_dist = np.sqrt(r0 * r0 + r1 * r1 + r2 * r2)
        grasped = contact[e, 0] and contact[e, 1]
        in_footprint = abs(rel0) < hole_half_width and abs(rel1) < hole_half_width
        depth = -rel2
        inserted = in_footprint and depth > 0
        succeeded = in_footprint and depth >= insert_depth
        hovering = rel2 > -0.001 and rel2 < 0.03  # bottom just above the rim
        aligned = grasped and hovering and xy_err < xy_tol and yaw_err < yaw_tol
        stage[e] = 3 if (aligned or inserted) else (2 if grasped else (1 if reach_dist < 0.02 else 0))
        success[e] = succeeded
        engaged = grasped or inserted
        # move the TCP to the grasp point near the peg's top
        terms[e, 0] = 1.0 - np.tanh(10.0 * reach_dist)
        # both fingers on the peg
        terms[e, 1] = 1.0 if grasped else 0.0
        # raise the held peg until its bottom clears the rim (table at z = 0)
        terms[e, 2] = min(max(bottom[2] / (hole_depth + 0.01), 0.0), 1.0) if grasped else 0.0
        # bring the peg's bottom over the hole's centre; the second tanh resolves the last
        # millimetres, which are what the clearance asks for
        terms[e, 3] = 1.0 - 0.5 * (np.tanh(10.0 * xy_err) + np.tanh(200.0 * xy_err)) if engaged else 0.0
        # turn the peg to the hole's yaw (mod 90 degrees)
        terms[e, 4] = 1.0 - yaw_err / (np.pi / 4) if engaged else 0.0
        # push the peg down into the hole
        terms[e, 5] = min(max(depth / insert_depth, 0.0), 1.0) if inserted else 0.0
        terms[e, 6] = 1.0 if succeeded else 0.0
        # peg pose, hole pose, peg bottom -> hole, peg -> TCP
        for k in range(3):
            env_state[e, k] = peg[e, k]
            env_state[e, 7 + k] = hole[e, k]
            env_state[e, 14 + k] = hole[e, k] - bottom[k]
            env_state[e, 17 + k] = tcp[e, k] - peg[e, k]
        for k in range(4):
            env_state[e, 3 + k] = peg_quat[e, k]
            env_state[e, 10 + k] = hole_quat[e, k]


@dataclass
class PegInsertOptions(TaskOptions):
    clearance: float = 0.002
    """hole width minus peg width, m (total play, split over both sides); must be > 0"""
    peg_half_width: float = 0.01
    """half edge of the peg's square cross-section, m"""
    peg_half_length: float = 0.045
    """half length of the peg, m"""
    peg_mass: float = 0.05
    """peg mass, kg (a 2 x 2 x 9 cm hardwood or plastic peg)"""
    hole_depth: float = 0.035
    """depth of the hole = height of the fixture walls above the table, m"""
    wall_thickness: float = 0.02
    """thickness of the fixture walls around the hole, m"""
    insert_depth: float = 0.02
    """how far below the rim the peg's bottom must be for success, m (< hole_depth)"""
    grasp_offset: float = 0.02
    """grasp point (reach target, where the expert closes): this far below the peg's top, along the peg, m"""
    peg_x_range: tuple[float, float] = (0.45, 0.6)
    """peg x at reset, m (robot base at the origin)"""
    peg_y_range: tuple[float, float] = (-0.2, -0.06)
    """peg y at reset, m"""
    hole_x_range: tuple[float, float] = (0.45, 0.6)
    """hole centre x at reset, m"""
    hole_y_range: tuple[float, float] = (0.06, 0.2)
    """hole centre y at reset, m"""
    hole_yaw_range: tuple[float, float] = (-np.pi / 4, np.pi / 4)
    """fixture yaw at reset, rad (a quarter turn covers every distinct orientation of a square hole)"""


@register_task
class PegInsert(Task):
    """Pick up an upright square peg and insert it into a square hole with tight clearance.

    The peg (2 x 2 x 9 cm by default, free joint) stands on the table; the hole fixture is four box
    walls around a square hole whose width is the peg's plus `clearance` (2 mm in total by default,
    1 mm per side), `hole_depth` deep, pinned in place as a mocap body. No chamfers: the peg goes in
    only when it is centred within the clearance and yaw-aligned within about clearance / peg width
    rad, which is the precision regime where behaviour cloning alone falls short (ResiP, Ankile et
    al. 2024). Contacts are real box-box contacts with stiffened solref/solimp so that the walls do
    not give way by more than a fraction of the clearance.

    Randomized: peg position (x, y uniform in `peg_x_range` x `peg_y_range`) and yaw (uniform),
    fixture position (uniform in `hole_x_range` x `hole_y_range`) and yaw (uniform in
    `hole_yaw_range`), and the arm's start pose (home + Gaussian noise).

    Succeeds when the peg's bottom centre is at least `insert_depth` below the hole's rim and inside
    the hole's footprint.
    """

    name = "peg_insert"
    description = "insert a square peg into a hole with 2 mm clearance"
    stages = ("reach", "grasp", "align", "insert")
    max_episode_steps = 150
    tracked_bodies = ("peg", "hole")
    grasp_geoms = ("peg_geom",)
    randomized_bodies = ("peg",)
    reward_weights = {
        "reach": 1.0,
        "grasp": 0.5,
        "lift": 1.0,
        "align_xy": 1.5,
        "align_yaw": 0.5,
        "insert": 2.0,
        "success": 5.0,
    }
    term_order = TERMS
    Options = PegInsertOptions

    def __init__(self, options=None):
        super().__init__(options)
        o = self.options
        if not o.clearance > 0:
            raise ConfigError(
                f"task option peg_insert.clearance={o.clearance!r} is invalid; it must be > 0 m "
                "(hole width minus peg width, e.g. 0.002 for 2 mm)"
            )
        if o.clearance >= 2 * o.peg_half_width:
            raise ConfigError(
                f"task option peg_insert.clearance={o.clearance} m is not a tight fit for a "
                f"{2 * o.peg_half_width} m peg; it must be smaller than the peg width"
            )
        for key in ("peg_half_width", "peg_half_length", "peg_mass", "hole_depth", "wall_thickness"):
            if not getattr(o, key) > 0:
                raise ConfigError(f"task option peg_insert.{key}={getattr(o, key)!r} must be > 0")
        if not 0 < o.insert_depth < o.hole_depth:
            raise ConfigError(
                f"task option peg_insert.insert_depth={o.insert_depth} must be in (0, hole_depth={o.hole_depth})"
            )
        if not 0 <= o.grasp_offset < 2 * o.peg_half_length - o.hole_depth:
            raise ConfigError(
                f"task option peg_insert.grasp_offset={o.grasp_offset} must be in [0, peg length - hole_depth) "
                "so that the fingers stay above the rim when the peg is inserted"
            )
        for key in ("peg_x_range", "peg_y_range", "hole_x_range", "hole_y_range", "hole_yaw_range"):
            r = getattr(o, key)
            if len(r) != 2 or not all(np.isfinite(r)) or not r[0] <= r[1]:
                raise ConfigError(f"task option peg_insert.{key}={list(r)} is invalid; it must be [low, high] in m/rad")
        # The peg must never spawn inside the fixture: the two reset regions, each grown by the
        # radius of what stands in it (half diagonals), must not meet.
        gap = np.hypot(max(0.0, o.hole_x_range[0] - o.peg_x_range[1], o.peg_x_range[0] - o.hole_x_range[1]),
                       max(0.0, o.hole_y_range[0] - o.peg_y_range[1], o.peg_y_range[0] - o.hole_y_range[1]))
        reach = np.sqrt(2) * (o.peg_half_width + o.peg_half_width + o.clearance / 2 + o.wall_thickness)
        if gap < reach:
            raise ConfigError(
                f"task option peg_insert: the peg and hole reset regions are {gap:.3f} m apart; they must be at "
                f"least {reach:.3f} m apart (peg + fixture half diagonals) so the peg never spawns in the fixture"
            )
        self.hole_half_width = o.peg_half_width + o.clearance / 2
        # Yaw a centred square peg may have and still enter: half-width * (cos + sin) <= hole half
        # width gives ~clearance / peg width rad; the align stage asks for half of it.
        self.yaw_tol = 0.5 * o.clearance / (2 * o.peg_half_width)
        # Centring tolerance of the align stage: half of the per-side play.
        self.xy_tol = o.clearance / 4

    # ---- scene -------------------------------------------------------------------------------
    def build(self, spec: mujoco.MjSpec) -> None:
        o = self.options
        box = mujoco.mjtGeom.mjGEOM_BOX
        # Contacts of peg and walls: timeconst 4 ms (2 physics steps, the stiffest that stays stable
        # at 500 Hz) and impedance near 1 so that a pressed wall yields by well under the clearance;
        # no margin, which would make the walls act closer than they are and shrink the clearance.
        solref = [0.004, 1.0]
        solimp = [0.999, 0.9999, 0.0001, 0.5, 2.0]
        peg = spec.worldbody.add_body(name="peg", pos=[0.5, -0.1, o.peg_half_length])
        peg.add_freejoint(name="peg_joint")
        # Low friction of the peg's own surface keeps peg-wall sliding easy (MuJoCo takes the max of
        # the two geoms' friction, so the finger pads' friction of 2 still holds the grasp).
        peg.add_geom(name="peg_geom", type=box, size=[o.peg_half_width, o.peg_half_width, o.peg_half_length],
                     mass=o.peg_mass, friction=[0.4, 0.005, 0.0001], solref=solref, solimp=solimp,
                     rgba=[0.9, 0.55, 0.1, 1])

        # The fixture's origin is the centre of the hole's rim, so that the hole's pose is exactly
        # where the peg's bottom has to go.
        hole = spec.worldbody.add_body(name="hole", pos=[0.5, 0.1, o.hole_depth], mocap=True)
        hw, t, hd = self.hole_half_width, o.wall_thickness, o.hole_depth / 2
        walls = {
            "hole_wall_px": ([hw + t / 2, 0, -hd], [t / 2, hw + t, hd]),
            "hole_wall_nx": ([-hw - t / 2, 0, -hd], [t / 2, hw + t, hd]),
            "hole_wall_py": ([0, hw + t / 2, -hd], [hw, t / 2, hd]),
            "hole_wall_ny": ([0, -hw - t / 2, -hd], [hw, t / 2, hd]),
        }
        for name, (pos, size) in walls.items():
            hole.add_geom(name=name, type=box, pos=pos, size=size, friction=[0.4, 0.005, 0.0001],
                          solref=solref, solimp=solimp, rgba=[0.25, 0.45, 0.75, 1])

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self.peg_qpos = free_joint_qpos(model, "peg")
        self.hole_mocap = mocap_id(model, "hole")

    # ---- reset distribution ------------------------------------------------------------------
    def sample_reset(self, rng):
        o = self.options
        return {
            "peg_xy": np.array([rng.uniform(*o.peg_x_range), rng.uniform(*o.peg_y_range)]),
            "peg_yaw": rng.uniform(-np.pi, np.pi),
            "hole_xy": np.array([rng.uniform(*o.hole_x_range), rng.uniform(*o.hole_y_range)]),
            "hole_yaw": rng.uniform(*o.hole_yaw_range),
        }

    def apply_reset(self, model, data, sample):
        o = self.options
        a = self.peg_qpos
        data.qpos[a : a + 3] = [*sample["peg_xy"], o.peg_half_length]
        data.qpos[a + 3 : a + 7] = yaw_quat(sample["peg_yaw"])
        data.mocap_pos[self.hole_mocap] = [*sample["hole_xy"], o.hole_depth]
        data.mocap_quat[self.hole_mocap] = yaw_quat(sample["hole_yaw"])

    # ---- judging -----------------------------------------------------------------------------
    @property
    def environment_state_names(self):
        xyz, quat = ("x", "y", "z"), ("qw", "qx", "qy", "qz")
        return ([f"peg_{c}" for c in xyz] + [f"peg_{c}" for c in quat]
                + [f"hole_{c}" for c in xyz] + [f"hole_{c}" for c in quat]
                + [f"peg_bottom_to_hole_{c}" for c in xyz] + [f"peg_to_tcp_{c}" for c in xyz])

    def evaluate(self, s: BatchState) -> TaskEval:
        o = self.options
        return self.judge_compiled(
            s, judge_peg_insert, s.tcp_pos, s.body_pos["peg"], s.body_quat["peg"], s.body_pos["hole"],
            s.body_quat["hole"], s.grasp_contact, o.peg_half_length, o.grasp_offset, o.hole_depth, o.insert_depth,
            self.hole_half_width, self.xy_tol, self.yaw_tol)

    def make_expert(self, num_envs, max_dpos, max_drot):
        return PegInsertExpert(self, num_envs, max_dpos, max_drot)


class PegInsertExpert(ScriptedExpert):
    """above peg -> descend -> close -> lift -> over hole (align yaw) -> fine-align -> insert -> done.

    Before the grasp the expert servos the TCP; from `lift` on it servos the peg's actual bottom
    (from its privileged pose) and turns the TCP by the rotation that would make the peg upright
    and yaw-aligned with the hole, so whatever slip or tilt the grasp picked up is corrected on the
    way. Fine alignment slows down near the goal and waits until the bottom has stayed centred
    within a fraction of the clearance before the slow descent, during which the hand keeps the
    orientation it had at that moment (re-orienting a peg that touches the walls levers it in the
    grasp). An integral term removes the steady offset that a proportional servo leaves whenever
    the arm does not move by exactly the commanded delta (IK damping and null-space motion, the
    arm's dynamics while moving, contact friction): at sub-millimetre tolerances that offset decides
    between entering the hole and hitting the rim. A peg that ends up sitting on the rim is lifted
    back to hover for another try.
    """

    ABOVE, DESCEND, CLOSE, LIFT, TRANSPORT, ALIGN, INSERT, DONE = range(8)
    PHASE_STAGE = np.array([0, 0, 1, 2, 2, 2, 3, 3])
    #                    ABOVE DESCEND CLOSE LIFT TRANSPORT ALIGN INSERT DONE
    GAIN = np.array([1.0, 1.0, 1.0, 1.0, 0.7, 0.6, 1.0, 1.0])
    """fraction of the remaining error commanded per step; < 1 slows down near the goal"""
    SPEED = np.array([1.0, 0.5, 0.2, 0.6, 0.6, 0.1, 0.06, 0.06])
    """translation limit per step, as a fraction of max_dpos (0.06 * 5 cm = 3 mm per step in the hole)"""
    ENTRY_SPEED = 0.01  # 0.5 mm per step from hover until ENTRY_DEPTH: faster drags the bottom sideways
    ENTRY_DEPTH = 0.003  # this far below the rim the walls guide the peg and SPEED applies again, m
    APPROACH = 0.025  # height of the peg's bottom above the rim while it travels to the hole, m
    HOVER = 0.008  # height above the rim where fine alignment happens, m
    KI = 0.3  # integral gain, per control step
    I_RADIUS = 0.02  # the integrator runs only within this distance of the goal (no wind-up on moves), m
    I_INPUT = 0.003  # and sees the error clipped to this, per axis, m
    I_MAX = 0.008  # bound of the integral correction, m per step
    SETTLE_STEPS = 3  # control steps the peg must stay aligned before the descent
    RIM_PATIENCE = 8  # steps the bottom may spend within 1 mm of the rim (4 at ENTRY_SPEED) before a retry

    def __init__(self, task: Task, num_envs: int, max_dpos: float, max_drot: float):
        super().__init__(task, num_envs, max_dpos, max_drot)
        self.integral = np.zeros((num_envs, 3))
        self.close_pos = np.zeros((num_envs, 3))
        self.insert_quat = np.tile([1.0, 0.0, 0.0, 0.0], (num_envs, 1))
        self.settled = np.zeros(num_envs, dtype=np.int64)
        self.rim_steps = np.zeros(num_envs, dtype=np.int64)

    def reset(self, env_ids: np.ndarray | None = None) -> None:
        super().reset(env_ids)
        ids = slice(None) if env_ids is None else env_ids
        self.integral[ids] = 0.0
        self.settled[ids] = 0
        self.rim_steps[ids] = 0

    # ---- the expert's own geometry (the task judges the same points in judge_peg_insert)
    def point_on_peg_axis(self, s: BatchState, height: float) -> np.ndarray:
        """(N, 3) point `height` above the peg's centre along its axis, world frame."""
        up = np.broadcast_to([0.0, 0.0, height], s.body_pos["peg"].shape)
        return s.body_pos["peg"] + quat_rotate(s.body_quat["peg"], up)

    def relative_yaw(self, s: BatchState) -> np.ndarray:
        """(N,) hole yaw minus peg yaw, folded into [-pi/4, pi/4)."""
        return fold_quarter(quat_to_yaw(s.body_quat["hole"]) - quat_to_yaw(s.body_quat["peg"]))

    def act(self, s: BatchState):
        task: PegInsert = self.task
        o = task.options
        n = self.num_envs
        ph = self.phase.copy()  # advance() below must not chain phases within one step
        self.timer += 1

        def col(mask: np.ndarray) -> np.ndarray:
            return mask[:, None]  # (N,) mask -> (N, 1), to select between (N, 3) arrays

        peg_q = s.body_quat["peg"]
        grasp_pt = self.point_on_peg_axis(s, o.peg_half_length - o.grasp_offset)  # where the TCP closes
        bottom = self.point_on_peg_axis(s, -o.peg_half_length)  # centre of the peg's bottom face
        hole = s.body_pos["hole"]
        rim_z = hole[:, 2]

        # ---- before the grasp: error of the TCP; while closing it holds where the descent ended
        # (a zero action is not guaranteed to hold the arm still, and a TCP that drifts up while the
        # fingers close ends up grasping the peg by its very top)
        free = ph <= self.CLOSE
        tcp_target = np.where(col(ph == self.ABOVE), grasp_pt + [0.0, 0.0, 0.08], grasp_pt)
        tcp_target = np.where(col(ph == self.CLOSE), self.close_pos, tcp_target)
        grip_quat = grasp_quat(fold_quarter(quat_to_yaw(peg_q)))

        # ---- once held: error of the peg's bottom
        hover_xy_err = np.linalg.norm(hole[:, :2] - bottom[:, :2], axis=1)
        goal = np.empty((n, 3))
        goal[:, :2] = np.where(col(ph == self.LIFT), bottom[:, :2], hole[:, :2])
        # Fine alignment lowers the peg toward just above the rim as it gets centred: the height
        # grows continuously with the xy error (a switch between two heights would make the arm
        # bob up and down, since every vertical move drags the bottom sideways a little).
        # (5 mm higher per mm of xy error beyond the first).
        hover = self.HOVER + np.minimum(self.APPROACH - self.HOVER, 5.0 * np.maximum(hover_xy_err - 0.001, 0.0))
        # In the hole the goal lies 6 mm past the success depth, so the descent keeps its speed there.
        goal[:, 2] = rim_z + np.select([ph <= self.TRANSPORT, ph == self.ALIGN], [self.APPROACH, hover],
                                       -o.insert_depth - 0.006)
        # Turn the TCP by the rotation that makes the peg upright with the hole's yaw (mod 90 deg).
        turn = rotation_error(yaw_quat(quat_to_yaw(peg_q) + self.relative_yaw(s)), peg_q)
        held_quat = quat_mul(axis_angle_to_quat(turn), s.tcp_quat)

        err = np.where(col(free), tcp_target - s.tcp_pos, goal - bottom)
        quat = np.where(col(free), grip_quat, np.where(col(ph >= self.INSERT), self.insert_quat, held_quat))

        # Integrate near the goal only. While inserting, z keeps the value learnt while hovering (the
        # goal's z runs ahead of the peg on purpose), and xy integrates only until the bottom reaches
        # the rim: a vertical move drags the bottom sideways a little every step (the damped IK does
        # not move exactly along the command), which the integral cancels on the way down, but
        # against a wall it would only wind up into a sideways push that wedges the peg.
        depth = rim_z - bottom[:, 2]
        axes = np.where(col(ph == self.INSERT), [True, True, False] & col(depth < 0.0), True)
        near = np.linalg.norm(err * axes, axis=1) < self.I_RADIUS
        self.integral += np.where(col(near) & axes, self.KI * np.clip(err, -self.I_INPUT, self.I_INPUT), 0.0)
        norm = np.linalg.norm(self.integral, axis=1, keepdims=True)
        self.integral *= np.minimum(1.0, self.I_MAX / np.maximum(norm, 1e-12))

        dpos = self.GAIN[ph, None] * err / self.max_dpos
        speed = np.where((ph == self.INSERT) & (depth < self.ENTRY_DEPTH), self.ENTRY_SPEED, self.SPEED[ph])
        dpos *= np.minimum(1.0, speed / np.maximum(np.linalg.norm(dpos, axis=1), 1e-9))[:, None]
        a = np.zeros((n, 7))
        a[:, :3] = dpos + self.integral / self.max_dpos
        a[:, 3:6] = rotation_error(quat, s.tcp_quat) / self.max_drot
        a[:, :6] = np.clip(a[:, :6], -1.0, 1.0)
        a[:, 6] = np.where(ph >= self.CLOSE, 1.0, -1.0)

        # ---- phase transitions
        dist = np.linalg.norm(err, axis=1)
        xy_err = np.linalg.norm(err[:, :2], axis=1)
        aligned = ((ph == self.ALIGN) & (xy_err < task.xy_tol) & (np.abs(err[:, 2]) < 0.002)
                   & (np.linalg.norm(turn, axis=1) < task.yaw_tol))
        self.settled = np.where(aligned, self.settled + 1, 0)
        start_close = (ph == self.DESCEND) & (dist < 0.004)
        self.close_pos[start_close] = grasp_pt[start_close]
        start_insert = self.settled >= self.SETTLE_STEPS
        self.insert_quat[start_insert] = s.tcp_quat[start_insert]
        self.advance((ph == self.ABOVE) & (dist < 0.01))
        self.advance(start_close)
        self.advance((ph == self.CLOSE) & (self.timer >= 8))
        self.advance((ph == self.LIFT) & (err[:, 2] < 0.005))
        self.advance((ph == self.TRANSPORT) & (xy_err < 0.004) & (np.abs(err[:, 2]) < 0.005))
        self.advance(start_insert)
        self.advance((ph == self.INSERT) & (depth > o.insert_depth + 0.002))
        # A peg that sits on the rim instead of passing it missed the hole (no chamfer to slide on),
        # and pushing on only levers it in the grasp: lift back to hover and re-align.
        on_rim = (ph == self.INSERT) & (np.abs(depth) < 0.001)
        self.rim_steps = np.where(on_rim, self.rim_steps + 1, 0)
        missed = self.rim_steps > self.RIM_PATIENCE
        self.phase[missed] = self.ALIGN
        self.timer[missed] = 0
        self.rim_steps[missed] = 0
        return a, self.PHASE_STAGE[np.minimum(self.phase, self.DONE)]
