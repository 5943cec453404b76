"""`SimRobot`: a native sim task behind the `Robot` interface, for tests and the ROS sim_robot_node.

One env (num_envs=1) in action_mode joint_pos; each `command` steps one control period with the
command's joint targets and its gripper width turned back into the sim's gripper action. The episode
never resets by itself: `done` says when it has succeeded or run out of steps, and `reset()` starts
the next one (so the arm never jumps under a running controller).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from robolearn.deploy.robot import Command, RobotState, action_from_width
from robolearn.errors import ActionError, ConfigError

NEVER = 10**9  # the env's own step limit: episodes end when the caller resets


class SimRobot:
    """A sim task as a robot: `read()` the state, `command()` one control period.

    randomization: a RandomizationConfig or its dict (domain randomization, off by default); clock: the
    time source of RobotState.stamp."""

    def __init__(self, task: str, seed: int = 0, robot: str = "panda", cameras=(), control_hz: float | None = None,
                 task_options: dict[str, Any] | None = None, randomization=None,
                 image_size: tuple[int, int] = (84, 84), max_episode_steps: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        from robolearn.sim.registry import ROBOSUITE_PREFIX, make_env

        if task.startswith(ROBOSUITE_PREFIX):
            raise ConfigError(f"SimRobot runs native tasks (joint position control); {task!r} is a robosuite env")
        overrides: dict[str, Any] = {"num_envs": 1, "seed": seed, "robot": robot, "cameras": list(cameras),
                                     "image_size": tuple(image_size), "action_mode": "joint_pos",
                                     "terminate_on_success": False, "max_episode_steps": NEVER,
                                     "task_options": dict(task_options or {})}
        if control_hz:
            overrides["control_hz"] = control_hz
        if randomization is not None:
            from robolearn.config import config_to_dict

            is_config = not isinstance(randomization, dict)
            overrides["randomization"] = config_to_dict(randomization) if is_config else randomization
        self.env = make_env(task, **overrides)
        self.task = task
        self.robot_spec = self.env.robot
        self.cameras = list(cameras)
        self.control_dt = 1.0 / self.env.cfg.control_hz
        self.max_episode_steps = int(max_episode_steps or self.env.task.max_episode_steps)
        self.stage_names = list(self.env.task.stages)
        self.clock = clock
        self.reset(seed)

    def reset(self, seed: int | None = None) -> RobotState:
        """Start a new episode (seeded like VecEnv.reset: None continues the env's random stream)."""
        self._obs, info = self.env.reset(seed=seed)
        self.success = False  # the episode has succeeded at some step
        self.stage = int(info["stage"][0])
        self.elapsed_steps = 0
        return self.read()

    @property
    def environment_state(self) -> np.ndarray:
        """(D,) float32 privileged object state of the current step."""
        return self._obs["observation.environment_state"][0].copy()

    @property
    def done(self) -> bool:
        """The episode has succeeded or used up max_episode_steps."""
        return self.success or self.elapsed_steps >= self.max_episode_steps

    def read(self) -> RobotState:
        s = self.env.state
        return RobotState(
            stamp=self.clock(), q=s.q[0].copy(), dq=s.dq[0].copy(), fingers=s.fingers[0].copy(),
            images={cam: self._obs[f"observation.images.{cam}"][0].copy() for cam in self.cameras},
            environment_state=self.environment_state,
        )

    def command(self, cmd: Command) -> None:
        """Step one control period towards cmd.q with the gripper at cmd.gripper_width (an empty command
        holds the current position and opening)."""
        r = self.robot_spec
        if cmd.q.size == 0:
            q, width = self.env.state.q[0], float(self.env.state.gripper_width[0])
        else:
            q, width = np.asarray(cmd.q, dtype=np.float64), float(cmd.gripper_width)
        if q.shape != (r.dof,):
            raise ActionError(f"command q has shape {q.shape}; {r.name} takes ({r.dof},) joint targets")
        action = np.append(q, action_from_width(width, r.gripper_width_max))
        self._obs, _, _, _, info = self.env.step(action[None])
        self.elapsed_steps += 1
        self.stage = int(info["stage"][0])
        self.success = self.success or bool(info["success"][0])

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> SimRobot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
