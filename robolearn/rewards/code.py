"""Reward *code*: a Python function over named observation fields, run in the sandbox, as an RL reward.

A reward program (VLM-written by `robolearn vlm reward-code`, or a person's) defines

    def compute_reward(obs, action):
        # obs["tcp_pos"]: (N, 3) m, obs["cube_pos"]: (N, 3) m, obs["gripper_width"]: (N,) m, ...
        # action: (N, A)
        return {"reach": ..., "lift": ...}      # named terms, each (N,); the reward is their sum

The fields are not the raw flat vectors but the task's declared feature names grouped into what a
person would call them (`tcp_x, tcp_y, tcp_z` -> `tcp_pos` (N, 3)), so a program reads like the task
description the model was given (`describe_fields`). The program only ever runs in the sandbox
(`robolearn.rewards.vlm.sandbox`): a separate, resource-limited process behind an allow-list check.

`CodeRewardWrapper` puts a program around any of our vector envs the way `RewardWrapper` puts a
progress model there: the sum of the terms is the potential Phi(s) of the state reached and
`ShapingConfig` decides how it becomes the reward (potential-based by default, which keeps the
optimal policy of the task's success reward, Ng et al. 1999; `shaping.mode=progress` uses the
program's value as the reward itself, as Eureka does). Every term is logged as `code/<term>`.
Used by `robolearn train residual --reward code:PATH`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robolearn.data.format import Feature
from robolearn.errors import ConfigError
from robolearn.rewards.shaping import ShapingConfig, shaped_reward
from robolearn.rewards.wrapper import reached_obs, sparse_reward

_AXES = ("x", "y", "z")
_QUAT = ("qw", "qx", "qy", "qz")


@dataclass
class ObsField:
    """One named field a reward program reads: `key`'s columns `columns`."""

    name: str
    key: str
    columns: list[int]
    unit: str
    doc: str
    derived: bool = False
    """computed from its columns (gripper_width: left - right finger) rather than read as they are"""

    @property
    def shape(self) -> str:
        return "(N,)" if len(self.columns) == 1 or self.derived else f"(N, {len(self.columns)})"


def obs_fields(features: dict[str, Feature]) -> list[ObsField]:
    """Group the per-dimension names of the low-dimensional observation features into fields:
    `<p>_x/_y/_z` -> `<p>_pos` (or `<p>` for a relative vector `a_to_b`), `<p>_qw.._qz` -> `<p>_quat`
    (wxyz), `q1..q7` -> `q`, `dq1..` -> `dq`, `finger_left/right` -> `fingers`; anything else stays one
    column. Adds `gripper_width` (finger gap) when the fingers are there."""
    out: list[ObsField] = []
    for key, ft in features.items():
        if ft.is_video or key in ("action",) or key.startswith("next.") or not key.startswith("observation."):
            continue
        if len(ft.shape) != 1:
            continue
        names = list(ft.names or [f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(ft.shape[0])])
        used: set[int] = set()
        index = {n: i for i, n in enumerate(names)}
        for i, n in enumerate(names):
            if i in used:
                continue
            m = re.fullmatch(r"(.+)_(x|y|z|qw|qx|qy|qz)", n)
            group = None
            if m and m.group(2) in _AXES and all(f"{m.group(1)}_{a}" in index for a in _AXES):
                p = m.group(1)
                rel = "_to_" in p
                group = ObsField(p if rel else f"{p}_pos", key, [index[f"{p}_{a}"] for a in _AXES], "m",
                                 f"vector from {p.replace('_to_', ' to ')}" if rel else f"{p} position, world frame")
            elif m and m.group(2) in _QUAT and all(f"{m.group(1)}_{a}" in index for a in _QUAT):
                p = m.group(1)
                group = ObsField(f"{p}_quat", key, [index[f"{p}_{a}"] for a in _QUAT], "",
                                 f"{p} orientation, unit quaternion w, x, y, z")
            elif re.fullmatch(r"(d?q)\d+", n):
                stem = re.fullmatch(r"(d?q)\d+", n).group(1)
                cols = [j for j, o in enumerate(names) if re.fullmatch(rf"{stem}\d+", o)]
                group = ObsField(stem, key, cols, "rad/s" if stem == "dq" else "rad",
                                 "arm joint velocities" if stem == "dq" else "arm joint positions")
            elif n in ("finger_left", "finger_right") and {"finger_left", "finger_right"} <= set(index):
                group = ObsField("fingers", key, [index["finger_left"], index["finger_right"]], "m",
                                 "finger joint positions, left and right (the gap is left - right)")
            if group is None:
                group = ObsField(n, key, [i], "", f"{n} ({key})")
            used.update(group.columns)
            out.append(group)
    if any(f.name == "fingers" for f in out):
        f = next(f for f in out if f.name == "fingers")
        out.append(ObsField("gripper_width", f.key, f.columns, "m", "distance between the fingers (0: closed)",
                            derived=True))
    return out


def describe_fields(fields: list[ObsField], action: Feature | None = None) -> str:
    """The compact field table a VLM reads: one line per field, name, shape, unit, meaning."""
    width = max(len(f.name) for f in fields) + 2
    lines = [f'obs["{f.name}"]'.ljust(width + 7) + f"{f.shape:<8} {f.unit or '-':<6} {f.doc}" for f in fields]
    if action is not None:
        names = ", ".join(action.names or [])
        lines.append(f"{'action'.ljust(width + 7)}(N, {action.shape[0]})  {'':6} the action taken: {names}")
    return "\n".join(lines)


def split_obs(fields: list[ObsField], obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat observation arrays (N, D) -> {field: (N,) or (N, k) float64}."""
    out = {}
    for f in fields:
        x = np.asarray(obs[f.key], np.float64)
        if f.name == "gripper_width":
            out[f.name] = x[:, f.columns[0]] - x[:, f.columns[1]]
        else:
            out[f.name] = x[:, f.columns[0]] if len(f.columns) == 1 else x[:, f.columns]
    return out


def parse_code_reward(spec: str) -> Path | None:
    """`code:PATH` -> PATH (checked to exist); anything else -> None."""
    if not spec.startswith("code:"):
        return None
    path = Path(spec[5:]).expanduser()
    if not path.is_file():
        raise ConfigError(f"--reward {spec}: {path} is not a file; pass code:PATH to a reward program "
                          "(e.g. the reward.py `robolearn vlm reward-code` writes)")
    return path


class CodeReward:
    """A reward program bound to a feature set, evaluated in the sandbox."""

    def __init__(self, source: str, features: dict[str, Feature], limits=None, name: str = "reward code"):
        from robolearn.rewards.vlm.sandbox import RewardSandbox, check_code

        check_code(source)
        self.source, self.name = source, name
        self.fields = obs_fields(features)
        if not self.fields:
            raise ConfigError(f"{name}: the features ({', '.join(features)}) have no low-dimensional observation "
                              "for a reward program to read")
        self.keys = sorted({f.key for f in self.fields})
        self.sandbox = RewardSandbox(source, limits)

    @classmethod
    def from_file(cls, path: str | Path, features: dict[str, Feature], limits=None) -> CodeReward:
        path = Path(path)
        return cls(path.read_text(), features, limits, name=str(path))

    def terms(self, obs: dict[str, np.ndarray], action: np.ndarray) -> dict[str, np.ndarray]:
        """Named terms (N,) of the states in `obs` (flat observation arrays) after `action` (N, A)."""
        return self.sandbox.evaluate(split_obs(self.fields, obs), np.asarray(action, np.float64))

    def close(self) -> None:
        self.sandbox.close()


class CodeRewardWrapper:
    """A vector env whose reward comes from a reward program (see the module docstring)."""

    def __init__(self, env, code: CodeReward, shaping: ShapingConfig | None = None):
        self.env, self.code = env, code
        self.shaping = shaping or ShapingConfig()
        self.shaping.validate()
        self.num_envs = env.num_envs
        space = getattr(env, "single_observation_space", None)
        if space is not None and hasattr(space, "spaces"):
            missing = [k for k in code.keys if k not in space.spaces]
            if missing:
                raise ConfigError(f"{code.name} reads {', '.join(missing)}, which the env does not observe")
        self._act_dim = env.single_action_space.shape[0]
        self._phi = np.zeros(self.num_envs)
        self.steps = 0

    def __getattr__(self, name):  # spaces, render, task, cfg, ... of the wrapped env
        if name in ("env", "code", "steps"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def _potential(self, obs: dict[str, np.ndarray], action: np.ndarray) -> tuple[np.ndarray, dict]:
        terms = self.code.terms({k: obs[k] for k in self.code.keys}, action)
        total = np.sum(list(terms.values()), axis=0) if terms else np.zeros(len(action))
        return self.shaping.scale * total, terms

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        mask = (options or {}).get("reset_mask")
        ids = np.arange(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask, bool))
        if len(ids):
            phi, _ = self._potential({k: np.asarray(obs[k])[ids] for k in self.code.keys},
                                     np.zeros((len(ids), self._act_dim)))
            self._phi[ids] = phi
        return obs, info

    def step(self, actions):
        obs, env_reward, terminated, truncated, info = self.env.step(actions)
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        ended = np.flatnonzero(done)
        reached = reached_obs(obs, info, self.code.keys, ended)
        acts = np.asarray(actions, np.float64).reshape(self.num_envs, -1)
        phi_next, code_terms = self._potential(reached, acts)
        sparse = sparse_reward(self.shaping, info, env_reward, ended, self.num_envs)
        terms = shaped_reward(self.shaping, sparse, self._phi, phi_next, terminated)
        self.steps += 1
        self._phi = phi_next
        if len(ended):  # the next episodes start from their first observation
            first, _ = self._potential({k: np.asarray(obs[k])[ended] for k in self.code.keys},
                                       np.zeros((len(ended), self._act_dim)))
            self._phi[ended] = first
        info = dict(info)
        info["env_reward"] = env_reward
        info["reward_terms"] = {**info.get("reward_terms", {}),
                                **{f"code/{k}": v.astype(np.float32) for k, v in code_terms.items()},
                                "code/sparse": terms["sparse"], "code/shaping": terms["shaping"],
                                "code/total": terms["total"]}
        return obs, terms["total"], terminated, truncated, info

    def close(self, **kwargs) -> None:
        self.code.close()
        self.env.close(**kwargs)
