"""Domain randomization: physics (friction, mass, damping, actuator gain, latency, observation noise)
and visual (lights, colours, camera pose). Everything is off by default; values are drawn per env at
every reset from that env's own random stream, always relative to the nominal model, so that
randomization never accumulates across episodes and a seed gives the same draws every time.

What each knob writes (per env model copy; the nominal model is never changed):
  friction_scale       geom_friction[:, 0] of the task's objects and of every geom they can touch
  mass_scale           body_mass and body_inertia of the task's objects
  joint_damping_scale  dof_damping of the arm joints
  actuator_gain_scale  kp and kv of the arm's position actuators (gainprm[0], biasprm[1:3])
  light_*              light_diffuse (all lights, one scale) and light_pos (each light)
  object_color_jitter  geom_rgba of uncoloured-by-material objects, mat_rgba of the materials of the
                       others (the table): MuJoCo ignores a material once geom_rgba leaves its default
  camera_*             cam_pos and cam_quat of the cameras fixed to the world (not the wrist camera)
Latency and observation noise live in the env's step (see `draw_latency`, `noise`).
"""

from __future__ import annotations

from numbers import Integral, Real

import mujoco
import numpy as np

from robolearn.errors import ConfigError
from robolearn.sim.config import RandomizationConfig
from robolearn.sim.robot import RobotIds
from robolearn.sim.rotations import axis_angle_to_quat, quat_mul

SCALES = ("friction_scale", "mass_scale", "joint_damping_scale", "actuator_gain_scale")
JITTERS = {  # field: largest meaningful value
    "light_position_jitter": np.inf,
    "object_color_jitter": 1.0,
    "camera_position_jitter": np.inf,
    "camera_rotation_jitter": np.pi,
}


def _check_range(name: str, value, lower: float, *, strict: bool = False, integer: bool = False) -> None:
    """Raise ConfigError unless `value` is [low, high] with lower <= (or <) low <= high, finite."""
    kind = "integers" if integer else "numbers"
    bound = f"{lower} < low" if strict else f"{lower} <= low"
    ok = (
        isinstance(value, (tuple, list)) and len(value) == 2
        and all(isinstance(v, Integral if integer else Real) and not isinstance(v, bool) for v in value)
        and all(np.isfinite(value))
        and (value[0] > lower if strict else value[0] >= lower) and value[0] <= value[1]
    )
    if not ok:
        shown = list(value) if isinstance(value, (tuple, list)) else value
        off = "[0, 0]" if integer else "[1.0, 1.0]"
        raise ConfigError(
            f"randomization.{name}={shown!r} is invalid; it must be [low, high], two finite {kind} with "
            f"{bound} <= high ({off} turns it off)"
        )


def _check_amount(name: str, value, top: float = np.inf) -> None:
    """Raise ConfigError unless `value` is a finite number in [0, top]."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= top or not np.isfinite(value):
        limit = "" if top == np.inf else f" and <= {top:.4g}"
        raise ConfigError(
            f"randomization.{name}={value!r} is invalid; it must be a finite number >= 0{limit} (0 turns it off)"
        )


def validate(cfg: RandomizationConfig) -> None:
    """Raise ConfigError naming the first invalid randomization field and what it must be."""
    p, v = cfg.physics, cfg.visual
    for name in SCALES:
        # a zero mass would make a free body's dynamics singular; zero friction, damping or gain are legal
        _check_range(f"physics.{name}", getattr(p, name), 0.0, strict=name == "mass_scale")
    _check_range("physics.action_latency_steps", p.action_latency_steps, 0, integer=True)
    _check_amount("physics.observation_noise_std", p.observation_noise_std)
    _check_range("visual.light_intensity_scale", v.light_intensity_scale, 0.0)
    for name, top in JITTERS.items():
        _check_amount(f"visual.{name}", getattr(v, name), top)


class DomainRandomizer:
    """Applies a `RandomizationConfig` to per-env copies of a nominal model.

    object_bodies: body ids of the task's objects (mass, friction, colour);
    visual_geoms: geom ids whose colour is jittered (the objects' geoms and the table).
    """

    def __init__(self, cfg: RandomizationConfig, nominal: mujoco.MjModel, ids: RobotIds,
                 object_bodies: list[int], visual_geoms: list[int]):
        validate(cfg)
        p, v = cfg.physics, cfg.visual
        self.cfg, self.nominal, self.ids = cfg, nominal, ids
        self.object_bodies = np.asarray(object_bodies, dtype=int)
        self.object_geoms = np.flatnonzero(np.isin(nominal.geom_bodyid, self.object_bodies))
        # MuJoCo gives a contact the larger friction of its two geoms, so scaling the objects alone
        # would often change nothing (the Panda's finger pads have 2.0, more than most objects).
        # Scaling the objects and everything that can touch them scales every object contact by s.
        ct, ca = nominal.geom_contype, nominal.geom_conaffinity
        og = self.object_geoms
        touch = ((ct[:, None] & ca[og][None]) | (ca[:, None] & ct[og][None])).any(axis=1)
        self.friction_geoms = np.union1d(og, np.flatnonzero(touch))
        # colour: geoms without a material carry their own rgba; the others are coloured by their material
        vg = np.asarray(visual_geoms, dtype=int)
        mat = nominal.geom_matid[vg]
        self.color_geoms = vg[mat < 0]
        self.color_mats = np.unique(mat[mat >= 0])
        self.fixed_cams = np.flatnonzero(nominal.cam_bodyid == 0)  # cameras attached to the world
        neutral = lambda r: tuple(r) == (1.0, 1.0)  # noqa: E731
        self.physics_on = not all(neutral(getattr(p, n)) for n in SCALES)
        self.visual_on = not (neutral(v.light_intensity_scale) and all(getattr(v, n) == 0 for n in JITTERS))
        self.max_latency = int(p.action_latency_steps[1])

    @property
    def needs_model_copies(self) -> bool:
        return self.physics_on or self.visual_on

    def apply(self, model: mujoco.MjModel, rng: np.random.Generator) -> None:
        """Re-draw every randomized model field of one env from the nominal values."""
        nom, p, v = self.nominal, self.cfg.physics, self.cfg.visual
        u = lambda r, size=None: rng.uniform(r[0], r[1], size)  # noqa: E731
        if self.physics_on:
            g = self.friction_geoms
            model.geom_friction[g, 0] = nom.geom_friction[g, 0] * u(p.friction_scale)
            b = self.object_bodies
            s = u(p.mass_scale)
            model.body_mass[b] = nom.body_mass[b] * s
            model.body_inertia[b] = nom.body_inertia[b] * s
            dofs = self.ids.arm_dof
            model.dof_damping[dofs] = nom.dof_damping[dofs] * u(p.joint_damping_scale)
            a = self.ids.arm_act
            k = u(p.actuator_gain_scale)  # position actuator: force = kp * ctrl - kp * q - kv * dq
            model.actuator_gainprm[a, 0] = nom.actuator_gainprm[a, 0] * k
            model.actuator_biasprm[a, 1:3] = nom.actuator_biasprm[a, 1:3] * k
        if self.visual_on:
            model.light_diffuse[:] = nom.light_diffuse * u(v.light_intensity_scale)
            model.light_pos[:] = nom.light_pos + rng.uniform(-1, 1, nom.light_pos.shape) * v.light_position_jitter
            g, mats, jit = self.color_geoms, self.color_mats, v.object_color_jitter
            model.geom_rgba[g, :3] = np.clip(nom.geom_rgba[g, :3] + rng.uniform(-jit, jit, (len(g), 3)), 0, 1)
            model.mat_rgba[mats, :3] = np.clip(nom.mat_rgba[mats, :3] + rng.uniform(-jit, jit, (len(mats), 3)), 0, 1)
            c = self.fixed_cams
            model.cam_pos[c] = nom.cam_pos[c] + rng.uniform(-1, 1, (len(c), 3)) * v.camera_position_jitter
            axis = rng.normal(size=(len(c), 3))
            axis /= np.linalg.norm(axis, axis=1, keepdims=True)
            angle = rng.uniform(-1, 1, (len(c), 1)) * v.camera_rotation_jitter
            model.cam_quat[c] = quat_mul(axis_angle_to_quat(axis * angle), nom.cam_quat[c])

    def draw_latency(self, rng: np.random.Generator) -> int:
        """Control steps by which this episode's actions arrive late."""
        lo, hi = self.cfg.physics.action_latency_steps
        return int(rng.integers(lo, hi + 1))

    def noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x plus Gaussian noise of std observation_noise_std (x itself when it is 0)."""
        std = self.cfg.physics.observation_noise_std
        return x if std == 0 else x + rng.normal(0.0, std, x.shape)
