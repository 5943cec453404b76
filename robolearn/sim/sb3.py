"""`SB3VecEnv`: our batched gymnasium env behind stable-baselines3's `VecEnv` interface.

Works with anything that has our vector interface (the native `VecEnv`, the robosuite adapter):
`num_envs`, `single_observation_space` (a Dict keyed by LeRobot names), `single_action_space`,
`reset(seed=, options=)`, `step(actions)` with same-step auto-reset (`final_obs` / `final_info` in the
infos), `close()`, and `render()` when cameras are configured.

What changes on the way to SB3:
- observation keys become valid `torch.nn.ModuleDict` names, which SB3's `CombinedExtractor` needs
  (a key may not contain "."): the "observation." prefix is dropped and the remaining dots become
  underscores, e.g. `observation.state -> state`, `observation.images.front -> images_front`;
  `key_map` holds the mapping;
- images stay HWC uint8 in [0, 255]: SB3 detects them and adds `VecTransposeImage` itself;
- `keys` selects a subset of the observation, and `flatten=True` concatenates the selected
  non-image keys into one float32 Box for `MlpPolicy` (`flat_slices` says where each key went);
- infos go from our dict of (N,) arrays to SB3's list of N dicts; a finished env's dict describes its
  last step (our `final_info`) and carries `terminal_observation` (in the renamed / flattened layout),
  `TimeLimit.truncated` (truncated and not terminated) and `is_success` (SB3 logs its mean);
- dones = terminated | truncated.

Shapes: reset() -> obs {name: (N, *shape)} or (N, D) when flattened; step(actions (N, A)) -> obs,
rewards (N,) float32, dones (N,) bool, infos list[dict] of length N.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from torch import nn

from robolearn.errors import ConfigError, RobolearnError, UnknownNameError, did_you_mean

# nn.ModuleDict refuses keys that are already attributes of a Module (instance attributes included)
_MODULE_ATTRIBUTES = frozenset(dir(nn.ModuleDict()))


def sb3_key(key: str) -> str:
    """LeRobot observation key -> a name `nn.ModuleDict` accepts: 'observation.images.front' -> 'images_front'."""
    name = key.removeprefix("observation.")
    name = re.sub(r"\W", "_", name)  # dots, slashes, dashes: anything that is not a Python identifier character
    if not name or name in _MODULE_ATTRIBUTES:  # e.g. 'training' would clash with a Module attribute
        name = "obs_" + name
    return name


def _is_image(space: gym.Space) -> bool:
    """(H, W, C) boxes: RGB images and depth maps."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3


def _columns(info: dict, n: int) -> list[tuple[str, Any, Any]]:
    """A gymnasium vector info (dict of (N,) arrays, masks under '_<key>') as [(key, mask, column)]:
    per-env columns converted once (`tolist` for 1-D arrays: plain Python scalars for loggers and
    JSON; rows for N-D arrays), nested dicts as nested column lists, anything else shared."""
    out = []
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = info.get("_" + key)
        mask = None if mask is None else np.asarray(mask, bool).tolist()
        if isinstance(value, dict):
            out.append((key, mask, ("dict", _columns(value, n))))
        elif isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n:
            out.append((key, mask, ("col", value.tolist() if value.ndim == 1 else list(value))))
        else:
            out.append((key, mask, ("same", value)))
    return out


def _row(columns: list[tuple[str, Any, Any]], i: int) -> dict:
    """Env i's entries of `_columns`' output."""
    out = {}
    for key, mask, (kind, value) in columns:
        if mask is not None and not mask[i]:
            continue
        out[key] = _row(value, i) if kind == "dict" else (value[i] if kind == "col" else value)
    return out


def _split_info(info: dict, i: int, n: int) -> dict:
    """Env i's entries of a gymnasium vector info (dict of (N,) arrays, masks under '_<key>')."""
    return _row(_columns(info, n), i)


class SB3VecEnv(VecEnv):
    """stable-baselines3 view of one of our vector envs.

    env: our vector env (native `VecEnv` or the robosuite adapter); this wrapper owns it and closes it.
    keys: observation keys to keep, as LeRobot names or their SB3 names (default: all; with
        flatten=True, all 1-D keys).
    flatten: concatenate the selected keys (raveled, float32) into one Box for `MlpPolicy`; image keys
        cannot be flattened.

    Seeding: SB3's `seed(s)` reseeds the whole batch at the next reset with base seed `s`; env i then
    draws from `SeedSequence(s).spawn(num_envs)[i]`, as in `EnvConfig.seed`.
    `get_attr` / `env_method` act on the batch env once and return its value for every index asked
    for; `set_attr` sets a batch attribute, so it only accepts all indices.
    """

    def __init__(self, env, keys: Sequence[str] | None = None, flatten: bool = False):
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ConfigError(
                f"SB3VecEnv needs an env with same-step auto-reset (metadata['autoreset_mode'] = "
                f"AutoresetMode.SAME_STEP), got {env.metadata.get('autoreset_mode')!r}"
            )
        self.env = env
        self.flatten = flatten
        src: gym.spaces.Dict = env.single_observation_space
        self.key_map: dict[str, str] = {k: sb3_key(k) for k in src.spaces}
        """LeRobot observation key -> SB3 observation key, for every key the env provides"""
        names = list(self.key_map.values())
        if len(set(names)) != len(names):
            raise ConfigError(f"observation keys {list(src.spaces)} collide once renamed for SB3: {names}")
        self.keys = self._select(src, keys)
        """the LeRobot keys passed to SB3, in order"""

        self.flat_slices: dict[str, slice] = {}
        """SB3 key -> its columns of the flattened observation (flatten=True)"""
        if flatten:
            lows, highs, start = [], [], 0
            for k in self.keys:
                sp = src[k]
                lows.append(np.broadcast_to(sp.low, sp.shape).ravel())
                highs.append(np.broadcast_to(sp.high, sp.shape).ravel())
                self.flat_slices[self.key_map[k]] = slice(start, start + lows[-1].size)
                start += lows[-1].size
            obs_space = gym.spaces.Box(np.concatenate(lows).astype(np.float32),
                                       np.concatenate(highs).astype(np.float32), dtype=np.float32)
        else:
            obs_space = gym.spaces.Dict({self.key_map[k]: src[k] for k in self.keys})
            sb3_to_ours = {v: k for k, v in self.key_map.items()}
            self.keys = [sb3_to_ours[k] for k in obs_space.spaces]  # gymnasium's Dict sorts its keys

        cfg = getattr(env, "cfg", None)
        self._render_mode = "rgb_array" if getattr(cfg, "cameras", None) else None
        self._actions: np.ndarray | None = None
        super().__init__(env.num_envs, obs_space, env.single_action_space)

    def _select(self, src: gym.spaces.Dict, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            if self.flatten:
                return [k for k, sp in src.spaces.items() if len(sp.shape) == 1]
            return list(src.spaces)
        by_name = {**{v: k for k, v in self.key_map.items()}, **{k: k for k in self.key_map}}
        out = []
        for k in keys:
            if k not in by_name:
                raise UnknownNameError(
                    f"observation key {k!r} is not provided by this env; its keys are: {', '.join(src.spaces)} "
                    f"(or their SB3 names: {', '.join(self.key_map.values())})." + did_you_mean(k, list(by_name))
                )
            out.append(by_name[k])
        if len(set(out)) != len(out):
            raise ConfigError(f"observation keys {list(keys)} name the same key twice")
        if self.flatten:
            images = [k for k in out if _is_image(src[k])]
            if images:
                raise ConfigError(
                    f"flatten=True cannot flatten the image keys {images}; select vector keys only "
                    f"(e.g. keys=['observation.state']) or use flatten=False with MultiInputPolicy"
                )
        if not out:
            raise ConfigError("keys selects no observation; pass at least one key, e.g. ['observation.state']")
        return out

    # ---- observation and info conversion -----------------------------------------------------
    def _convert_obs(self, obs: dict[str, np.ndarray]) -> VecEnvObs:
        """Batch obs {LeRobot key: (N, ...)} -> SB3 layout."""
        if self.flatten:
            n = self.num_envs
            return np.concatenate([np.asarray(obs[k], np.float32).reshape(n, -1) for k in self.keys], axis=1)
        return {self.key_map[k]: obs[k] for k in self.keys}

    def _convert_single_obs(self, obs: dict[str, np.ndarray]) -> VecEnvObs:
        """One env's obs {LeRobot key: (...)} -> SB3 layout (used for terminal_observation)."""
        if self.flatten:
            return np.concatenate([np.asarray(obs[k], np.float32).ravel() for k in self.keys])
        return {self.key_map[k]: np.asarray(obs[k]) for k in self.keys}

    def _convert_infos(self, infos: dict, terminated: np.ndarray | None = None,
                       truncated: np.ndarray | None = None) -> list[dict[str, Any]]:
        n = self.num_envs
        out = []
        final_obs, final_info = infos.get("final_obs"), infos.get("final_info")
        columns = _columns(infos, n)
        final_columns = _columns(final_info, n) if final_info is not None else None
        has_final = infos.get("_final_info", np.ones(n, bool))
        for i in range(n):
            done = terminated is not None and bool(terminated[i] or truncated[i])
            if done and final_columns is not None and has_final[i]:
                d = _row(final_columns, i)  # the finished episode's last step, not the reset's
            else:
                d = _row(columns, i)
            if "success" in d:
                d["is_success"] = bool(d["success"])
            if terminated is not None:
                d["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            if done:
                if final_obs is None or final_obs[i] is None:
                    raise RobolearnError(
                        f"env {i} finished but the vector env returned no infos['final_obs'][{i}]; SB3VecEnv needs "
                        "same-step auto-reset that keeps the final observation"
                    )
                d["terminal_observation"] = self._convert_single_obs(final_obs[i])
            out.append(d)
        return out

    # ---- SB3 VecEnv interface ----------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Reset every env (with the seed / options set through `seed()` / `set_options()`, used once)."""
        seed = self._seeds[0]
        options = self._options[0] or None
        if any(o != self._options[0] for o in self._options):
            raise ConfigError(
                "SB3VecEnv resets the whole batch at once; set_options() must give every env the same options"
            )
        obs, infos = self.env.reset(seed=seed, options=options)
        self._reset_seeds()
        self._reset_options()
        self._actions = None
        self.reset_infos = self._convert_infos(infos)
        return self._convert_obs(obs)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Base seed of the batch for the next reset (see the class docstring); returns it once per env."""
        if seed is None:
            seed = int(np.random.randint(0, np.iinfo(np.uint32).max, dtype=np.uint32))
        self._seeds = [seed] * self.num_envs
        return self._seeds

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RobolearnError("step_wait() called without a pending step_async(actions)")
        actions, self._actions = self._actions, None
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        return (
            self._convert_obs(obs),
            np.asarray(rewards, np.float32),
            terminated | truncated,
            self._convert_infos(infos, terminated, truncated),
        )

    def close(self) -> None:
        self.env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """(H, W, 3) uint8 frame of the first configured camera for every env (None without cameras)."""
        if self._render_mode != "rgb_array":
            return [None] * self.num_envs
        return list(self.env.render())

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "render_mode":  # asked by VecEnv.__init__ before self.render_mode exists
            value = self._render_mode
        else:
            value = getattr(self.env, attr_name)
        return [value] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ConfigError(
                f"set_attr({attr_name!r}) on envs {indices}: the {self.num_envs} envs share one batch object, "
                "so attributes can only be set on all of them (indices=None)"
            )
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result] * len(self._indices(indices))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        env, wrapped = self.env, False
        while env is not None and not wrapped:
            wrapped = isinstance(env, wrapper_class)
            env = getattr(env, "env", None)
        return [wrapped] * len(self._indices(indices))
