"""Domain randomization: physics (friction, mass, damping, actuator gain, latency, observation noise)
and visual (lights, colours, camera pose). Everything is off by default; values are drawn per env at
every reset from that env's own random stream, always relative to the nominal model, so that
randomization never accumulates across episodes."""

from __future__ import annotations

import mujoco
import numpy as np

from robolearn.errors import ConfigError
from robolearn.sim.config import RandomizationConfig
from robolearn.sim.robot import RobotIds
from robolearn.sim.rotations import axis_angle_to_quat, quat_mul


def _check_range(name: str, rng: tuple, lower: float) -> None:
    if len(rng) != 2 or not (lower <= rng[0] <= rng[1]) or not np.all(np.isfinite(rng)):
        raise ConfigError(f"randomization.{name}={list(rng)} is invalid; it must be [low, high] with {lower} <= low <= high")


class DomainRandomizer:
    """Applies a `RandomizationConfig` to per-env copies of a nominal model."""

    def __init__(self, cfg: RandomizationConfig, nominal: mujoco.MjModel, ids: RobotIds,
                 object_bodies: list[int], visual_geoms: list[int]):
        p, v = cfg.physics, cfg.visual
        for name in ("friction_scale", "mass_scale", "joint_damping_scale", "actuator_gain_scale"):
            _check_range(f"physics.{name}", getattr(p, name), 0.0)
        _check_range("physics.action_latency_steps", p.action_latency_steps, 0)
        _check_range("visual.light_intensity_scale", v.light_intensity_scale, 0.0)
        for name in ("light_position_jitter", "object_color_jitter", "camera_position_jitter", "camera_rotation_jitter"):
            if not (getattr(v, name) >= 0):
                raise ConfigError(f"randomization.visual.{name} must be >= 0, got {getattr(v, name)}")
        if not p.observation_noise_std >= 0:
            raise ConfigError(f"randomization.physics.observation_noise_std must be >= 0, got {p.observation_noise_std}")
        self.cfg, self.nominal, self.ids = cfg, nominal, ids
        self.object_bodies = np.asarray(object_bodies, dtype=int)
        self.object_geoms = np.flatnonzero(np.isin(nominal.geom_bodyid, self.object_bodies))
        self.visual_geoms = np.asarray(visual_geoms, dtype=int)
        self.fixed_cams = np.flatnonzero(nominal.cam_bodyid == 0)  # cameras attached to the world
        neutral = lambda r: tuple(r) == (1.0, 1.0)  # noqa: E731
        self.physics_on = not all(neutral(getattr(p, n)) for n in
                                  ("friction_scale", "mass_scale", "joint_damping_scale", "actuator_gain_scale"))
        self.visual_on = not (neutral(v.light_intensity_scale) and v.light_position_jitter == 0
                              and v.object_color_jitter == 0 and v.camera_position_jitter == 0
                              and v.camera_rotation_jitter == 0)
        self.max_latency = int(p.action_latency_steps[1])

    @property
    def needs_model_copies(self) -> bool:
        return self.physics_on or self.visual_on

    def apply(self, model: mujoco.MjModel, rng: np.random.Generator) -> None:
        """Re-draw every randomized model field of one env from the nominal values."""
        nom, p, v = self.nominal, self.cfg.physics, self.cfg.visual
        u = lambda r, size=None: rng.uniform(r[0], r[1], size)  # noqa: E731
        if self.physics_on:
            g, b = self.object_geoms, self.object_bodies
            model.geom_friction[g, 0] = nom.geom_friction[g, 0] * u(p.friction_scale)
            s = u(p.mass_scale)
            model.body_mass[b] = nom.body_mass[b] * s
            model.body_inertia[b] = nom.body_inertia[b] * s
            dofs = self.ids.arm_dof
            model.dof_damping[dofs] = nom.dof_damping[dofs] * u(p.joint_damping_scale)
            a = self.ids.arm_act
            k = u(p.actuator_gain_scale)
            model.actuator_gainprm[a, 0] = nom.actuator_gainprm[a, 0] * k
            model.actuator_biasprm[a, 1:3] = nom.actuator_biasprm[a, 1:3] * k
        if self.visual_on:
            model.light_diffuse[:] = nom.light_diffuse * u(v.light_intensity_scale)
            model.light_pos[:] = nom.light_pos + rng.uniform(-1, 1, nom.light_pos.shape) * v.light_position_jitter
            g = self.visual_geoms
            jit = rng.uniform(-1, 1, (len(g), 3)) * v.object_color_jitter
            model.geom_rgba[g, :3] = np.clip(nom.geom_rgba[g, :3] + jit, 0, 1)
            mats = nom.geom_matid[g]
            has_mat = mats >= 0
            model.mat_rgba[mats[has_mat], :3] = np.clip(nom.mat_rgba[mats[has_mat], :3] + jit[has_mat], 0, 1)
            c = self.fixed_cams
            model.cam_pos[c] = nom.cam_pos[c] + rng.uniform(-1, 1, (len(c), 3)) * v.camera_position_jitter
            axis = rng.normal(size=(len(c), 3))
            axis /= np.linalg.norm(axis, axis=1, keepdims=True)
            angle = rng.uniform(-1, 1, (len(c), 1)) * v.camera_rotation_jitter
            model.cam_quat[c] = quat_mul(axis_angle_to_quat(axis * angle), nom.cam_quat[c])

    def draw_latency(self, rng: np.random.Generator) -> int:
        lo, hi = self.cfg.physics.action_latency_steps
        return int(rng.integers(lo, hi + 1))

    def noise(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = self.cfg.physics.observation_noise_std
        return x if std == 0 else x + rng.normal(0.0, std, x.shape)
