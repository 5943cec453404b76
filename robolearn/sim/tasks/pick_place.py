"""pick_place: pick a cube off the table and put it into a bin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mujoco
import numba
import numpy as np

from robolearn.errors import ConfigError
from robolearn.sim.registry import register_task
from robolearn.sim.task import (
    BatchState,
    ScriptedExpert,
    Task,
    TaskEval,
    TaskOptions,
    free_joint_qpos,
    grasp_quat,
    mocap_id,
    square_grasp_yaw,
)
from robolearn.sim.vec_env import SIM_ASSETS

BIN_XML = SIM_ASSETS / "objects" / "bin.xml"
BIN_WALLS = ("bin_wall_px", "bin_wall_nx", "bin_wall_py", "bin_wall_ny")


@dataclass
class PickPlaceOptions(TaskOptions):
    object_half_size: float = 0.02
    """half edge of the cube to be placed, m (4 cm cube fits the 8 cm gripper with room to spare)"""
    object_x_range: tuple[float, float] = (0.40, 0.60)
    """cube x at reset, m (robot base at the origin)"""
    object_y_range: tuple[float, float] = (-0.22, -0.06)
    """cube y at reset, m: the right-hand side of the workspace"""
    bin_x_range: tuple[float, float] = (0.42, 0.58)
    """bin centre x at reset, m"""
    bin_y_range: tuple[float, float] = (0.10, 0.20)
    """bin centre y at reset, m: the left-hand side, clear of the cube region (checked at construction)"""
    reach_distance: float = 0.02
    """TCP-to-cube distance below which the reach stage is complete, m"""
    lift_height: float = 0.03
    """height of the cube's underside above the table that completes the lift stage, m"""
    carry_clearance: float = 0.04
    """height of the cube's underside above the bin's wall top while it is carried (expert and lift reward), m"""


TERMS = ("reach", "grasp", "lift", "transport", "place", "success")  # column order of judge_pick_place's terms


@numba.njit(cache=True, nogil=True)
def judge_pick_place(tcp, obj, obj_quat, bin_pos, contact, half_size, reach_distance, lift_height, carry_height,
                     floor_top, wall_top, inner_half_x, inner_half_y, stage, success, terms,
                     env_state):
    """Stage, success, dense terms (columns in TERMS order) and environment state of
    every env, in one compiled pass (at one env, the per-step cost of ~40 small numpy calls adds up).

    Stage = the stage being worked on: the last completed predicate + 1, checked from the top so that
    a cube let go inside the bin stays in "place" (not back to "reach"): over the bin -> 4, lifted
    -> 3, grasped -> 2, reached -> 1, else 0. A finger already on the cube also counts as reached:
    the first finger to close nudges the cube a centimetre away from the TCP before the second one
    arrives. Success: the cube is inside the bin's inner footprint and below its wall top, rests on
    the floor (within 1 cm of the flat resting height; a cube leaning on a wall is ~0.8 cm up) and
    neither finger touches it.

    Terms (earlier ones held at their maximum once the cube is in the bin, so letting go never lowers
    the reward): reach 1 - tanh(10 d) approaches the cube (1 once it is held); grasp 1 while both
    fingers touch it; lift rises to 1 at `carry_height` (clears the bin walls) while it is held;
    transport 1 - tanh(5 d_xy) brings the lifted cube over the bin centre; place 1 - tanh(10 h)
    lowers it onto the bin floor once over the bin; success 1 on success.

    Environment state (16 columns): object pos (3) + quat (4), bin pos (3), tcp - object (3),
    bin - object (3)."""
    for e in range(tcp.shape[0]):
        d0, d1, d2 = tcp[e, 0] - obj[e, 0], tcp[e, 1] - obj[e, 1], tcp[e, 2] - obj[e, 2]
        dist = np.sqrt(d0 * d0 + d1 * d1 + d2 * d2)
        r0, r1, r2 = obj[e, 0] - bin_pos[e, 0], obj[e, 1] - bin_pos[e, 1], obj[e, 2] - bin_pos[e, 2]
        touching = contact[e, 0] or contact[e, 1]
        grasped = contact[e, 0] and contact[e, 1]
        height = obj[e, 2] - half_size  # underside above the table (exact when the cube lies flat)
        reached = dist < reach_distance or touching
        lifted = grasped and height > lift_height
        over_bin = abs(r0) < inner_half_x and abs(r1) < inner_half_y
        in_bin = over_bin and r2 < wall_top
        resting = r2 < floor_top + half_size + 0.01
        ok = in_bin and resting and not touching
        stage[e] = 4 if over_bin else (3 if lifted else (2 if grasped else (1 if reached else 0)))
        success[e] = ok
        xy_to_bin = np.sqrt(r0 * r0 + r1 * r1)
        above_floor = max(r2 - (floor_top + half_size), 0.0)
        held = grasped or in_bin
        terms[e, 0] = 1.0 if held else 1.0 - np.tanh(10.0 * dist)
        terms[e, 1] = 1.0 if held else 0.0
        if in_bin:
            terms[e, 2] = 1.0
        else:
            terms[e, 2] = min(max(height / carry_height, 0.0), 1.0) if grasped else 0.0
        if in_bin:
            terms[e, 3] = 1.0
        else:
            terms[e, 3] = 1.0 - np.tanh(5.0 * xy_to_bin) if lifted else 0.0
        terms[e, 4] = 1.0 - np.tanh(10.0 * above_floor) if over_bin else 0.0
        terms[e, 5] = 1.0 if ok else 0.0
        for c in range(3):
            env_state[e, c] = obj[e, c]
            env_state[e, 7 + c] = bin_pos[e, c]
            env_state[e, 10 + c] = tcp[e, c] - obj[e, c]
            env_state[e, 13 + c] = bin_pos[e, c] - obj[e, c]
        for c in range(4):
            env_state[e, 3 + c] = obj_quat[e, c]


@register_task
class PickPlace(Task):
    """Pick up a cube from the table, carry it over a bin, lower it in and let go.

    Randomized: cube position (x, y uniform in `object_x_range` x `object_y_range`) and yaw
    (uniform), bin position (uniform in `bin_x_range` x `bin_y_range`, axis-aligned; the two regions
    never overlap), and the arm's start pose (home + Gaussian noise). Succeeds when the cube rests
    on the bin floor, inside the bin's inner footprint and below its wall top, and neither finger
    touches it (released).
    """

    name = "pick_place"
    description = "put a cube into a bin"
    stages = ("reach", "grasp", "lift", "transport", "place")
    # the expert succeeds in ~50 steps (at most ~75); 200 leaves room for slow policies and a regrasp
    max_episode_steps = 200
    tracked_bodies = ("object", "bin")
    grasp_geoms = ("object_geom",)
    randomized_bodies = ("object",)
    # Earlier terms are held at their maximum once a later stage is reached (ManiSkill's staged
    # dense rewards), so letting go of the cube in the bin never lowers the reward.
    reward_weights = {"reach": 1.0, "grasp": 0.5, "lift": 1.0, "transport": 1.5, "place": 1.5, "success": 3.0}
    term_order = TERMS
    Options = PickPlaceOptions

    def __init__(self, options: dict[str, Any] | None = None):
        super().__init__(options)
        o = self.options
        for key in ("object_x_range", "object_y_range", "bin_x_range", "bin_y_range"):
            raw = getattr(o, key)
            try:
                r = np.asarray(raw, dtype=float)
            except (TypeError, ValueError):
                r = np.zeros(0)
            if r.shape != (2,) or not np.all(np.isfinite(r)) or r[0] > r[1]:
                raise ConfigError(f"task option pick_place.{key}={raw!r} must be [low, high] in m with low <= high")
            setattr(o, key, (float(r[0]), float(r[1])))
        if not 0.005 <= o.object_half_size <= 0.035:
            raise ConfigError(
                f"task option pick_place.object_half_size={o.object_half_size} must be in [0.005, 0.035] m "
                "(the gripper opens to 0.08 m)"
            )

    # ---- scene -------------------------------------------------------------------------------
    def build(self, spec: mujoco.MjSpec) -> None:
        h = self.options.object_half_size
        body = spec.worldbody.add_body(name="object", pos=[0.5, -0.15, h])
        body.add_freejoint(name="object_joint")
        body.add_geom(name="object_geom", type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, h], rgba=[0.9, 0.55, 0.1, 1],
                      mass=0.08, friction=[1.2, 0.005, 0.0001])
        bin_spec = mujoco.MjSpec.from_file(str(BIN_XML))
        spec.worldbody.add_frame().attach_body(bin_spec.body("bin"), "", "")

    def bind(self, model: mujoco.MjModel) -> None:
        super().bind(model)
        self.object_qpos = free_joint_qpos(model, "object")
        self.bin_mocap = mocap_id(model, "bin")
        # bin dimensions come from the compiled MJCF (geom pos/size are in the bin's body frame)
        ids = {name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name) for name in ("bin_floor", *BIN_WALLS)}
        missing = [name for name, i in ids.items() if i < 0]
        if missing:
            raise ConfigError(f"{BIN_XML} lacks the geoms {missing}; the bin needs bin_floor and "
                              f"{', '.join(BIN_WALLS)}")
        floor, px, py = ids["bin_floor"], ids["bin_wall_px"], ids["bin_wall_py"]
        self.bin_floor_top = float(model.geom_pos[floor, 2] + model.geom_size[floor, 2])
        self.bin_wall_top = float(model.geom_pos[px, 2] + model.geom_size[px, 2])
        self.bin_inner_half = np.array([model.geom_pos[px, 0] - model.geom_size[px, 0],
                                        model.geom_pos[py, 1] - model.geom_size[py, 1]])
        bin_outer_half = np.array([model.geom_pos[px, 0] + model.geom_size[px, 0],
                                   model.geom_pos[py, 1] + model.geom_size[py, 1]])
        o = self.options
        if np.any(self.bin_inner_half < 2 * o.object_half_size):
            raise ConfigError(f"{BIN_XML}: the bin's inner footprint {2 * self.bin_inner_half} m is too small for a "
                              f"cube of edge {2 * o.object_half_size} m")
        # the cube region, padded by the cube's half diagonal, must not meet any bin position
        pad = bin_outer_half + np.sqrt(2) * o.object_half_size
        apart_x = o.object_x_range[1] + pad[0] <= o.bin_x_range[0] or o.bin_x_range[1] + pad[0] <= o.object_x_range[0]
        apart_y = o.object_y_range[1] + pad[1] <= o.bin_y_range[0] or o.bin_y_range[1] + pad[1] <= o.object_y_range[0]
        if not (apart_x or apart_y):
            raise ConfigError(
                "task options pick_place.object_*_range and bin_*_range overlap: the cube could start inside the bin; "
                f"keep the bin-centre ranges at least {pad.round(3).tolist()} m (x, y) from the cube ranges in x or y"
            )

    # ---- reset distribution ------------------------------------------------------------------
    def sample_reset(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        o = self.options
        return {
            "object_xy": np.array([rng.uniform(*o.object_x_range), rng.uniform(*o.object_y_range)]),
            "object_yaw": np.array(rng.uniform(-np.pi, np.pi)),
            "bin_xy": np.array([rng.uniform(*o.bin_x_range), rng.uniform(*o.bin_y_range)]),
        }

    def apply_reset(self, model: mujoco.MjModel, data: mujoco.MjData, sample: dict[str, np.ndarray]) -> None:
        a, yaw = self.object_qpos, float(sample["object_yaw"])
        data.qpos[a : a + 3] = [*sample["object_xy"], self.options.object_half_size]
        data.qpos[a + 3 : a + 7] = [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
        data.mocap_pos[self.bin_mocap] = [*sample["bin_xy"], 0.0]
        data.mocap_quat[self.bin_mocap] = [1.0, 0.0, 0.0, 0.0]

    # ---- judging -----------------------------------------------------------------------------
    @property
    def environment_state_names(self) -> list[str]:
        return ["object_x", "object_y", "object_z", "object_qw", "object_qx", "object_qy", "object_qz",
                "bin_x", "bin_y", "bin_z",
                "object_to_tcp_x", "object_to_tcp_y", "object_to_tcp_z",
                "object_to_bin_x", "object_to_bin_y", "object_to_bin_z"]

    def carry_height(self) -> float:
        """Height of the cube's underside above the table while carried over the wall top, m."""
        return self.bin_wall_top + self.options.carry_clearance

    def evaluate(self, s: BatchState) -> TaskEval:
        """environment_state (N, 16) float32: object pos (3) + quat (4), bin pos (3), tcp - object (3),
        bin - object (3)."""
        o = self.options
        return self.judge_compiled(
            s, judge_pick_place, s.tcp_pos, s.body_pos["object"], s.body_quat["object"], s.body_pos["bin"],
            s.grasp_contact, o.object_half_size, o.reach_distance, o.lift_height, self.carry_height(),
            self.bin_floor_top, self.bin_wall_top, float(self.bin_inner_half[0]), float(self.bin_inner_half[1]))

    def make_expert(self, num_envs: int, max_dpos: float, max_drot: float) -> PickPlaceExpert:
        return PickPlaceExpert(self, num_envs, max_dpos, max_drot)


class PickPlaceExpert(ScriptedExpert):
    """above cube -> descend -> close -> lift -> carry above bin -> lower -> open -> retreat.

    Phases map to the stages reach, reach, grasp, lift, transport, place, place, place. If the cube
    is not held for 3 steps while lifting or carrying (a missed grasp or a slip), the expert opens
    and starts over from phase 0 (a regrasp), which the generous episode length allows.
    """

    PHASE_STAGE = np.array([0, 0, 1, 2, 3, 4, 4, 4])
    ABOVE, DESCEND, CLOSE, LIFT, CARRY, LOWER, OPEN, RETREAT = range(8)

    def __init__(self, task: PickPlace, num_envs: int, max_dpos: float, max_drot: float):
        super().__init__(task, num_envs, max_dpos, max_drot)
        self.lost = np.zeros(num_envs, dtype=np.int64)  # consecutive steps without a grasp while carrying

    def reset(self, env_ids: np.ndarray | None = None) -> None:
        super().reset(env_ids)
        self.lost[slice(None) if env_ids is None else env_ids] = 0

    def act(self, s: BatchState) -> tuple[np.ndarray, np.ndarray]:
        """(N, 7) ee-delta actions in [-1, 1] and the (N,) stage each env's phase belongs to."""
        task: PickPlace = self.task
        h = task.options.object_half_size
        obj, bin_pos = s.body_pos["object"], s.body_pos["bin"]
        ph = self.phase.copy()  # advance() below must not chain phases within one step
        col = ph[:, None]

        # where the TCP holds the cube (its offset from the cube centre), so that the cube itself is
        # steered over the bin centre and not the TCP
        hold = s.tcp_pos - obj
        carry_z = task.carry_height() + h  # cube centre height above the table while carried
        lift_to = s.tcp_pos.copy()
        lift_to[:, 2] = carry_z + hold[:, 2]
        over_bin = hold.copy()
        over_bin[:, :2] += bin_pos[:, :2]
        over_bin[:, 2] += carry_z
        # release 5 mm above the floor: the cube drops flat instead of being pressed into it
        in_bin = bin_pos + hold
        in_bin[:, 2] += task.bin_floor_top + h + 0.005
        retreat = s.tcp_pos.copy()
        retreat[:, 2] = carry_z + 0.05
        target = np.select(
            [col == self.ABOVE, col == self.DESCEND, col == self.CLOSE, col == self.LIFT, col == self.CARRY,
             col == self.LOWER, col == self.OPEN],
            # CLOSE keeps servoing to the cube centre: the arm lags its targets by ~1 cm after the
            # descent, and holding the TCP where it is would close the fingers off-centre
            [obj + [0.0, 0.0, 0.08], obj, obj, lift_to, over_bin, in_bin, s.tcp_pos],
            retreat,
        )
        # keep the grasp yaw of the cube: while it is held the two turn together, so this also
        # stops the cube from being twisted during the carry
        quat = grasp_quat(square_grasp_yaw(s.body_quat["object"]))
        carrying = (ph >= self.LIFT) & (ph <= self.LOWER)
        # descend and carry more slowly than free motion: less overshoot next to the cube, and the
        # carried cube does not swing out of the fingers
        slow = carrying | (ph == self.DESCEND)
        a = np.zeros((self.num_envs, 7))
        a[:, :6] = np.where(slow[:, None], self.servo(s, target, quat, max_speed=0.5), self.servo(s, target, quat))
        a[:, 6] = np.where((ph >= self.CLOSE) & (ph <= self.LOWER), 1.0, -1.0)

        err = np.linalg.norm(target - s.tcp_pos, axis=1)
        xy_err = np.linalg.norm(target[:, :2] - s.tcp_pos[:, :2], axis=1)
        self.timer += 1
        # a cube lost while lowering is already over the bin and falls in; only earlier drops need a regrasp
        self.lost = np.where((ph >= self.LIFT) & (ph <= self.CARRY) & ~s.grasped, self.lost + 1, 0)
        self.advance((ph == self.ABOVE) & (err < 0.01))
        self.advance((ph == self.DESCEND) & ((err < 0.006) | (self.timer >= 30)))
        self.advance((ph == self.CLOSE) & (self.timer >= 6))
        self.advance((ph == self.LIFT) & (s.tcp_pos[:, 2] > target[:, 2] - 0.01))
        self.advance((ph == self.CARRY) & (xy_err < 0.01))
        self.advance((ph == self.LOWER) & ((err < 0.006) | (self.timer >= 20)))
        self.advance((ph == self.OPEN) & (self.timer >= 5))
        # dropped: start over (the gripper opens in phase 0 on the next step)
        dropped = self.lost >= 3
        self.phase[dropped] = self.ABOVE
        self.timer[dropped] = 0
        self.lost[dropped] = 0
        return a, self.PHASE_STAGE[self.phase]
