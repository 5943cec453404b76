"""Typed configuration of simulated environments (YAML presets live in `configs/env/`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from robolearn.errors import ConfigError


@dataclass
class PhysicsRandomization:
    """Physics domain randomization; every range is [low, high] and 'off' is the neutral value."""

    friction_scale: tuple[float, float] = (1.0, 1.0)
    """multiplier on the sliding friction of the task's objects"""
    mass_scale: tuple[float, float] = (1.0, 1.0)
    """multiplier on the mass (and inertia) of the task's objects"""
    joint_damping_scale: tuple[float, float] = (1.0, 1.0)
    """multiplier on the arm's joint damping"""
    actuator_gain_scale: tuple[float, float] = (1.0, 1.0)
    """multiplier on the arm's position-actuator stiffness and damping (kp, kv)"""
    action_latency_steps: tuple[int, int] = (0, 0)
    """actions reach the robot this many control steps late (drawn per episode)"""
    observation_noise_std: float = 0.0
    """std of Gaussian noise added to observation.state (rad, rad/s, m)"""


@dataclass
class VisualRandomization:
    """Visual domain randomization of rendered cameras."""

    light_intensity_scale: tuple[float, float] = (1.0, 1.0)
    """multiplier on the diffuse intensity of the scene lights"""
    light_position_jitter: float = 0.0
    """uniform jitter of each light position, m"""
    object_color_jitter: float = 0.0
    """uniform jitter of each RGB channel of task objects and the table, 0..1"""
    camera_position_jitter: float = 0.0
    """uniform jitter of fixed camera positions, m"""
    camera_rotation_jitter: float = 0.0
    """uniform jitter of fixed camera orientations about a random axis, rad"""


@dataclass
class RandomizationConfig:
    """Domain randomization; everything is off by default and drawn anew at every reset."""

    physics: PhysicsRandomization = field(default_factory=PhysicsRandomization)
    visual: VisualRandomization = field(default_factory=VisualRandomization)


@dataclass
class PointCloudConfig:
    """Point cloud built from the depth images of the cameras."""

    enabled: bool = False
    """add observation.pointcloud (needs at least one camera; depth is rendered for it)"""
    num_points: int = 1024
    """fixed number of points per cloud (random subsample, or repeat when fewer)"""
    voxel_size: float = 0.005
    """open3d voxel downsampling size, m"""
    crop_min: tuple[float, float, float] = (0.0, -0.5, -0.01)
    """workspace crop box lower corner, m (world frame)"""
    crop_max: tuple[float, float, float] = (0.9, 0.5, 0.6)
    """workspace crop box upper corner, m (world frame)"""


@dataclass
class EnvConfig:
    """A batch of simulated environments of one task."""

    task: str = "lift"
    """registered task name (`robolearn tasks` lists them), e.g. lift, peg_insert, robosuite/Lift"""
    num_envs: int = 1
    """environments stepped together"""
    num_threads: int = 1
    """threads that step physics (mj_step releases the GIL)"""
    seed: int = 0
    """base seed; env i draws from SeedSequence(seed).spawn(num_envs)[i]"""
    control_hz: float = 20.0
    """policy / controller rate, Hz"""
    physics_hz: float = 500.0
    """physics rate, Hz (must be a multiple of control_hz)"""
    action_mode: Literal["ee_delta", "joint_pos"] = "ee_delta"
    """ee_delta: (dx, dy, dz, drx, dry, drz, gripper) in [-1, 1]; joint_pos: 7 joint targets (rad) + gripper"""
    max_dpos: float = 0.05
    """end-effector translation per control step at action 1.0, m"""
    max_drot: float = 0.5
    """end-effector rotation per control step at action 1.0, rad"""
    max_episode_steps: int = 0
    """truncate after this many control steps; 0 uses the task's default"""
    terminate_on_success: bool = True
    """end the episode (terminated=True) at the first successful step"""
    cameras: list[str] = field(default_factory=list)
    """cameras rendered into observation.images.<camera> (front, side, top, wrist)"""
    image_size: tuple[int, int] = (84, 84)
    """rendered image (height, width), pixels"""
    depth: bool = False
    """add observation.depth.<camera> (float32 metres)"""
    pointcloud: PointCloudConfig = field(default_factory=PointCloudConfig)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    task_options: dict[str, Any] = field(default_factory=dict)
    """task-specific options (see `robolearn tasks`), e.g. {clearance: 0.002} for peg_insert"""
    robot: str = "panda"
    """robot name under hardware/robots/ or a path to a hardware YAML"""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field and what it must be."""

        def bad(name: str, what: str) -> None:
            raise ConfigError(f"env config: {name}={getattr(self, name)!r} is invalid; it must be {what}")

        if self.num_envs < 1:
            bad("num_envs", "a positive integer")
        if self.num_threads < 1:
            bad("num_threads", "a positive integer")
        if not self.control_hz > 0:
            bad("control_hz", "a positive rate in Hz")
        if not self.physics_hz > 0:
            bad("physics_hz", "a positive rate in Hz")
        ratio = self.physics_hz / self.control_hz
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 1:
            bad("physics_hz", f"a whole multiple of control_hz={self.control_hz}")
        if self.action_mode not in ("ee_delta", "joint_pos"):
            bad("action_mode", "'ee_delta' or 'joint_pos'")
        if not (self.max_dpos > 0 and self.max_drot > 0):
            raise ConfigError("env config: max_dpos and max_drot must be positive")
        if self.max_episode_steps < 0:
            bad("max_episode_steps", "0 (task default) or a positive step count")
        if len(self.image_size) != 2 or min(self.image_size) < 8 or max(self.image_size) > 2048:
            bad("image_size", "(height, width) between 8 and 2048 pixels")
        if self.pointcloud.enabled and not self.cameras:
            raise ConfigError("env config: pointcloud.enabled needs at least one camera; set cameras=[front]")
        if self.pointcloud.enabled and self.pointcloud.num_points < 1:
            raise ConfigError("env config: pointcloud.num_points must be positive")
        if len(set(self.cameras)) != len(self.cameras):
            bad("cameras", "a list without repeats")

    @property
    def substeps(self) -> int:
        return round(self.physics_hz / self.control_hz)
