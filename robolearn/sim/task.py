"""The `Task` interface: what a native manipulation task declares, and the scripted expert base.

A task adds its objects to the shared tabletop scene, samples its reset distribution, and judges a
batch of environments from privileged state: named stages with predicates, a success predicate and
named dense reward terms. Everything a task computes is batched over environments (arrays of shape
(N, ...)), so that one numpy call serves every env and the per-step Python cost stays small.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import mujoco
import numpy as np

from robolearn.errors import ConfigError
from robolearn.sim.rotations import quat_mul, quat_to_yaw, rotation_error, yaw_quat

# TCP orientation with the gripper pointing straight down and the fingers closing along world y
# (the Panda "ready" pose): x_tcp = +y_world, y_tcp = +x_world, z_tcp = -z_world.
DOWN_QUAT = np.array([0.0, 0.70710678, 0.70710678, 0.0])


@dataclass
class BatchState:
    """Privileged state of N environments after a control step; every array is batch-first.

    q, dq: (N, 7) arm joint positions (rad) and velocities (rad/s)
    fingers: (N, 2) finger joint positions (m); gripper_width: (N,) distance between fingers (m)
    tcp_pos: (N, 3) tool centre point (m, world); tcp_quat: (N, 4) wxyz
    body_pos / body_quat: name -> (N, 3) / (N, 4) for the task's tracked bodies
    grasp_contact: (N, 2) bool, left / right finger touching the task's grasp target
    """

    q: np.ndarray
    dq: np.ndarray
    fingers: np.ndarray
    tcp_pos: np.ndarray
    tcp_quat: np.ndarray
    body_pos: dict[str, np.ndarray]
    body_quat: dict[str, np.ndarray]
    grasp_contact: np.ndarray

    @property
    def gripper_width(self) -> np.ndarray:
        return self.fingers[:, 0] - self.fingers[:, 1]

    @property
    def grasped(self) -> np.ndarray:
        """(N,) bool: both fingers touch the grasp target."""
        return self.grasp_contact[:, 0] & self.grasp_contact[:, 1]


@dataclass
class TaskEval:
    """Judgement of a batch: current stage index (N,) int, success (N,) bool, dense terms.

    A task that judges in one compiled kernel may also fill `reward` (N,) and `environment_state`
    (N, D) float32 on the way; the env then uses them instead of calling back into the task."""

    stage: np.ndarray
    success: np.ndarray
    terms: dict[str, np.ndarray]
    reward: np.ndarray | None = None
    environment_state: np.ndarray | None = None


@dataclass
class TaskOptions:
    """Base of the per-task options (`task_options` in the env config)."""

    robot_init_noise: float = 0.02
    """std of Gaussian noise added to the home joint pose at reset, rad"""


class Task(ABC):
    """A manipulation task on the tabletop. Subclasses document: what the task is, what is
    randomized, and when it succeeds (ManiSkill's habit)."""

    name: ClassVar[str]
    description: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]
    max_episode_steps: ClassVar[int]
    tracked_bodies: ClassVar[tuple[str, ...]]
    """bodies whose pose the env gathers into BatchState each step"""
    grasp_geoms: ClassVar[tuple[str, ...]] = ()
    """geoms that count as 'grasped' when both fingers touch them"""
    randomized_bodies: ClassVar[tuple[str, ...]] = ()
    """free bodies whose mass, friction and colour domain randomization may change"""
    reward_weights: ClassVar[dict[str, float]]
    """weight of each named dense term in the scalar reward"""
    term_order: ClassVar[tuple[str, ...]] = ()
    """column order of the terms a compiled judgement kernel writes (see `judge_compiled`)"""
    Options: ClassVar[type[TaskOptions]] = TaskOptions

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = parse_options(self.Options, options or {}, self.name)
        self._weights = np.fromiter(self.reward_weights.values(), float)
        self._term_weights = np.array([self.reward_weights[t] for t in self.term_order])
        self._env_dim = len(self.environment_state_names)  # the names are static; judged every step

    # ---- scene -------------------------------------------------------------------------------
    @abstractmethod
    def build(self, spec: mujoco.MjSpec) -> None:
        """Add the task's objects and fixtures to the tabletop scene."""

    def bind(self, model: mujoco.MjModel) -> None:
        """Look up ids in the compiled model (called once; every env's model has the same layout)."""
        self.model = model

    # ---- reset distribution ------------------------------------------------------------------
    @abstractmethod
    def sample_reset(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw one env's initial object poses (and anything else the reset needs)."""

    @abstractmethod
    def apply_reset(self, model: mujoco.MjModel, data: mujoco.MjData, sample: dict[str, np.ndarray]) -> None:
        """Write a sample into `data` (qpos of free joints, mocap poses)."""

    # ---- judging -----------------------------------------------------------------------------
    @property
    @abstractmethod
    def environment_state_names(self) -> list[str]:
        """Names of the columns of `environment_state`."""

    def environment_state(self, s: BatchState) -> np.ndarray:
        """Privileged object state: (N, D_env) float. By default the one `evaluate` computes."""
        env_state = self.evaluate(s).environment_state
        if env_state is None:
            raise NotImplementedError(f"{type(self).__name__} must override environment_state or fill it in evaluate")
        return env_state

    @abstractmethod
    def evaluate(self, s: BatchState) -> TaskEval:
        """Stage index, success and named dense reward terms of every env."""

    def judge_compiled(self, s: BatchState, kernel, *inputs) -> TaskEval:
        """Judge a batch with a compiled kernel: `kernel(*inputs, stage, success, terms, env_state)`
        fills stage (N,) int64, success (N,) bool, terms (N, T) in `term_order` and the environment
        state (N, D) float32 in one pass; the reward is their weighted sum. At one env, the ~20 numpy
        calls of a plain judgement cost ~10% of a physics step; one compiled call costs ~1%."""
        n = s.q.shape[0]
        stage, success = np.empty(n, np.int64), np.empty(n, bool)
        terms = np.empty((n, len(self.term_order)))
        env_state = np.empty((n, self._env_dim), np.float32)
        kernel(*inputs, stage, success, terms, env_state)
        return TaskEval(stage=stage, success=success,
                        terms={name: terms[:, k] for k, name in enumerate(self.term_order)},
                        reward=terms @ self._term_weights, environment_state=env_state)

    def reward(self, ev: TaskEval) -> np.ndarray:
        """(N,) weighted sum of the named dense terms."""
        if ev.reward is not None:
            return ev.reward
        return self._weights @ np.array([ev.terms[name] for name in self.reward_weights], dtype=float)

    # ---- expert ------------------------------------------------------------------------------
    @abstractmethod
    def make_expert(self, num_envs: int, max_dpos: float, max_drot: float) -> ScriptedExpert:
        """A scripted expert for `num_envs` envs that acts in end-effector-delta space."""


class ScriptedExpert(ABC):
    """Batched state-machine expert. `act` returns ee-delta actions (N, 7) in [-1, 1] (dpos, drot,
    gripper; gripper +1 closes) and the stage (N,) int the expert believes each env is in."""

    def __init__(self, task: Task, num_envs: int, max_dpos: float, max_drot: float):
        self.task, self.num_envs = task, num_envs
        self.max_dpos, self.max_drot = max_dpos, max_drot
        self.phase = np.zeros(num_envs, dtype=np.int64)
        self.timer = np.zeros(num_envs, dtype=np.int64)

    def reset(self, env_ids: np.ndarray | None = None) -> None:
        ids = slice(None) if env_ids is None else env_ids
        self.phase[ids] = 0
        self.timer[ids] = 0

    @abstractmethod
    def act(self, s: BatchState) -> tuple[np.ndarray, np.ndarray]:
        ...

    def advance(self, mask: np.ndarray) -> None:
        """Move the envs in `mask` to their next phase and restart their phase timers."""
        self.phase[mask] += 1
        self.timer[mask] = 0

    def servo(self, s: BatchState, pos: np.ndarray, quat: np.ndarray, gain: float = 1.0,
              max_speed: float = 1.0) -> np.ndarray:
        """Normalized (N, 6) action moving the TCP toward `pos` (N, 3) and `quat` (N, 4)."""
        dpos = gain * (pos - s.tcp_pos) / self.max_dpos
        norm = np.linalg.norm(dpos, axis=1, keepdims=True)
        dpos = dpos * np.minimum(1.0, max_speed / np.maximum(norm, 1e-9))
        drot = rotation_error(quat, s.tcp_quat) / self.max_drot
        return np.clip(np.concatenate([dpos, drot], axis=1), -1.0, 1.0)


def grasp_quat(yaw: np.ndarray) -> np.ndarray:
    """(N,) yaw -> (N, 4) TCP orientation pointing down with the fingers closing along the yawed y axis."""
    return quat_mul(yaw_quat(yaw), np.broadcast_to(DOWN_QUAT, (*np.shape(yaw), 4)))


def square_grasp_yaw(object_quat: np.ndarray) -> np.ndarray:
    """Gripper yaw for an object with 90-degree symmetry, folded into [-pi/4, pi/4] to spare the wrist."""
    yaw = quat_to_yaw(object_quat)
    return (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4


def parse_options(cls: type, raw: dict[str, Any], task_name: str):
    """Build a task's options dataclass from a dict, naming any unknown key or bad value."""
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"task {task_name!r} has no option {key!r}; its options are: {', '.join(sorted(known))}"
            )
    out = {}
    for key, value in raw.items():
        default = getattr(cls, key, None)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                value = type(default)(value)
            except (TypeError, ValueError):
                raise ConfigError(f"task option {task_name}.{key} must be a number, got {value!r}") from None
            if not np.isfinite(value):
                raise ConfigError(f"task option {task_name}.{key} must be finite, got {value!r}")
        out[key] = value
    return cls(**out)


def _body_id(model: mujoco.MjModel, body: str) -> int:
    bid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body)
    if bid < 0:  # a -1 would silently index the last body
        raise ConfigError(f"the task's scene has no body {body!r}; check the task's build()")
    return bid


def free_joint_qpos(model: mujoco.MjModel, body: str) -> int:
    """qpos address of the free joint of `body`."""
    bid = _body_id(model, body)
    if model.body_jntnum[bid] != 1 or model.jnt_type[model.body_jntadr[bid]] != mujoco.mjtJoint.mjJNT_FREE:
        raise ConfigError(f"body {body!r} has no free joint; give it one in the task's build()")
    return int(model.jnt_qposadr[model.body_jntadr[bid]])


def mocap_id(model: mujoco.MjModel, body: str) -> int:
    """Index into data.mocap_pos / mocap_quat of a mocap `body`."""
    mid = int(model.body_mocapid[_body_id(model, body)])
    if mid < 0:
        raise ConfigError(f"body {body!r} is not a mocap body; declare it with mocap=true")
    return mid
