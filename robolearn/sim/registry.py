"""Task registry: native tasks by name, and any robosuite environment as `robosuite/<EnvName>`.

A new task is a new module in `robolearn/sim/tasks/` with `@register_task` on its class, plus its
module name in `NATIVE_TASK_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from robolearn.errors import UnknownNameError, did_you_mean

if TYPE_CHECKING:
    from robolearn.sim.config import EnvConfig
    from robolearn.sim.task import Task

NATIVE_TASK_MODULES = ("lift", "pick_place", "peg_insert")
ROBOSUITE_PREFIX = "robosuite/"
ROBOSUITE_LISTED = ("Lift", "Stack", "NutAssemblySquare")

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task name {cls.name!r} registered twice")
    _TASKS[cls.name] = cls
    return cls


def _load_native() -> None:
    for mod in NATIVE_TASK_MODULES:
        try:
            importlib.import_module(f"robolearn.sim.tasks.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"robolearn.sim.tasks.{mod}":
                raise


def native_task_names() -> list[str]:
    _load_native()
    return sorted(_TASKS)


def task_names() -> list[str]:
    return native_task_names() + [ROBOSUITE_PREFIX + n for n in ROBOSUITE_LISTED]


def get_task_class(name: str) -> type[Task]:
    _load_native()
    if name not in _TASKS:
        known = task_names()
        raise UnknownNameError(
            f"unknown task {name!r}; registered tasks: {', '.join(known)} (or robosuite/<EnvName> for any "
            f"robosuite env)." + did_you_mean(name, known)
        )
    return _TASKS[name]


def make_env(cfg: EnvConfig | str | None = None, **overrides: Any):
    """Build the batched env for `cfg`: a config, or a task name, plus field overrides
    (`make_env("lift", num_envs=8, pointcloud={"enabled": True}, cameras=["front"])`); overrides
    get the same checks and messages as the CLI's (a misspelt field is named, with a suggestion)."""
    from robolearn.config import config_from_dict, config_to_dict
    from robolearn.sim.config import EnvConfig

    if isinstance(cfg, EnvConfig):
        base = config_to_dict(cfg)
    else:
        base = {"task": cfg or overrides.pop("task", "lift")}
    cfg = config_from_dict(EnvConfig, {**base, **overrides})
    if cfg.task.startswith(ROBOSUITE_PREFIX):
        from robolearn.sim.robosuite_env import RobosuiteVecEnv

        return RobosuiteVecEnv(cfg)
    from robolearn.sim.vec_env import VecEnv

    return VecEnv(cfg, get_task_class(cfg.task)(cfg.task_options))


def describe_tasks() -> list[dict[str, Any]]:
    """Name, stages, observation and action spaces of every native task (for `robolearn tasks`)."""
    from robolearn.sim.config import EnvConfig
    from robolearn.sim.vec_env import VecEnv

    out = []
    for name in native_task_names():
        cls = _TASKS[name]
        modes = {}
        obs = {}
        for mode in ("ee_delta", "joint_pos"):
            env = VecEnv(EnvConfig(task=name, action_mode=mode), cls())
            sp = env.single_action_space
            modes[mode] = {"shape": list(sp.shape), "low": sp.low.round(4).tolist(), "high": sp.high.round(4).tolist()}
            obs = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in env.single_observation_space.items()}
            obs["observation.environment_state"]["names"] = cls().environment_state_names
            env.close()
        out.append({
            "name": name,
            "description": cls.description,
            "stages": list(cls.stages),
            "observation": obs,
            "action_modes": modes,
            "max_episode_steps": cls.max_episode_steps,
            "options": asdict(cls.Options()),
        })
    return out
