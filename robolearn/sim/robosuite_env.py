"""`RobosuiteVecEnv`: any robosuite environment behind the same batched interface as the native `VecEnv`.

`make_env("robosuite/<EnvName>")` builds N robosuite envs (robosuite's own Panda model and its default
composite controller: OSC_POSE arm + GRIP gripper) and steps them one after another: robosuite's
controllers run in Python, so threads would only contend for the GIL.

Actions (N, 7) in [-1, 1], the same ee_delta meaning as native tasks: dpos (3) scaled by max_dpos m,
drot (3) scaled by max_drot rad (robosuite's OSC output range, in the robot base frame), gripper
(-1 open, +1 closed).

Observations (LeRobot keys, batch-first; the same layout as `VecEnv`):
  observation.state             (N, 23) float32  q(7) rad, dq(7) rad/s, eef pos(3) m, eef quat(4) wxyz, fingers(2) m
  observation.environment_state (N, D) float32   robosuite's "object-state" vector, quaternions made wxyz
                                                  (D and `environment_state_names` depend on the env)
  observation.images.<camera>   (N, H, W, 3) uint8, top row first     (cameras; "wrist" = robot0_eye_in_hand)
  observation.depth.<camera>    (N, H, W, 1) float32 metres           (depth=True)
Infos: success (N,) bool (robosuite's `_check_success()`), stage (N,) int (always 0), stage_name (N,) str
  ("task"), reward_terms {"reward": (N,)} (robosuite's shaped reward), elapsed_steps (N,) int; and
  final_obs / final_info / _final_obs on same-step auto-reset.

`task_options` are passed to `robosuite.make` as extra keyword arguments (e.g. {"hard_reset": True},
{"use_object_obs": True}); arguments that come from EnvConfig fields must be set through those fields.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robolearn.errors import ConfigError, UnknownNameError, did_you_mean
from robolearn.sim.config import EnvConfig, PointCloudConfig, RandomizationConfig
from robolearn.sim.registry import ROBOSUITE_PREFIX
from robolearn.sim.vec_env import add_final_infos, check_action, episode_ends

ACTION_DIM = 7
STAGES = ("task",)
CAMERA_ALIASES = {"wrist": "robot0_eye_in_hand"}
"""our camera name -> robosuite camera name; other names are passed through (agentview, frontview, ...)"""

# robosuite.make arguments derived from EnvConfig fields; task_options may not override them
_DERIVED = {
    "robots": "robot", "controller_configs": "max_dpos / max_drot", "control_freq": "control_hz",
    "horizon": "max_episode_steps", "ignore_done": "max_episode_steps", "seed": "seed",
    "has_renderer": "cameras", "has_offscreen_renderer": "cameras", "use_camera_obs": "cameras",
    "camera_names": "cameras", "camera_heights": "image_size", "camera_widths": "image_size",
    "camera_depths": "depth",
}
# robosuite.make arguments that task_options may override. A soft reset keeps the compiled model and
# the offscreen render context; robosuite's default hard reset rebuilds both at every episode.
_DEFAULTS = {"reward_shaping": True, "hard_reset": False}
_DEFAULT_HORIZON = 500

# Lines robosuite logs on every import and env construction that say nothing actionable here.
_NOISE = (
    "No private macro file found", "It is recommended to use a private macro file", "To setup, run:",
    "Could not import robosuite_models", "Could not load the mink-based whole-body IK",
)


def _is_noise(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING or str(record.msg).startswith(_NOISE)


@contextmanager
def _quiet_robosuite():
    """Drop robosuite's import-time advice and INFO lines; its other warnings and errors still print."""
    logger = logging.getLogger("robosuite_logs")  # robosuite.utils.log_utils.DefaultLogger's name
    keep = lambda record: not _is_noise(record)  # noqa: E731
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


@cache
def _robosuite():
    with _quiet_robosuite():
        import robosuite
        import robosuite.macros  # noqa: F401
    return robosuite


def _check_config(cfg: EnvConfig) -> None:
    """Reject EnvConfig options that a robosuite env cannot honour, before anything is built."""
    if cfg.action_mode != "ee_delta":
        raise ConfigError(
            f"env config: action_mode={cfg.action_mode!r} is not supported for {cfg.task}; robosuite envs use "
            "robosuite's OSC_POSE controller, so set action_mode=ee_delta"
        )
    if cfg.robot != "panda":
        raise ConfigError(f"env config: robot={cfg.robot!r} is not supported for {cfg.task}; robosuite envs use "
                          "robosuite's own Panda model, so set robot=panda")
    changed = _changed_fields(asdict(cfg.randomization), asdict(RandomizationConfig()), "randomization")
    if changed:
        raise ConfigError(f"env config: domain randomization is not supported for robosuite envs ({cfg.task}); "
                          f"reset {', '.join(changed)} to the default")
    if cfg.pointcloud.enabled != PointCloudConfig().enabled:
        raise ConfigError(f"env config: point clouds are not supported for robosuite envs ({cfg.task}); "
                          "set pointcloud.enabled=false")
    clash = sorted(set(cfg.task_options) & set(_DERIVED))
    if clash:
        raise ConfigError(f"env config: task_options {clash} are set from EnvConfig for robosuite envs; set "
                          + ", ".join(f"{k} via {_DERIVED[k]}" for k in clash) + " instead")


def _changed_fields(value: dict, default: dict, prefix: str) -> list[str]:
    out = []
    for k, d in default.items():
        v = value[k]
        if isinstance(d, dict):
            out += _changed_fields(v, d, f"{prefix}.{k}")
        elif (list(v) if isinstance(v, (list, tuple)) else v) != (list(d) if isinstance(d, (list, tuple)) else d):
            out.append(f"{prefix}.{k}")
    return out


def real_depth(sim, depth: np.ndarray) -> np.ndarray:
    """MuJoCo's normalized depth buffer (0..1) -> distance along the optical axis, m.

    The formula of robosuite.utils.camera_utils.get_real_depth_map (from dm_control), inlined because
    that module imports h5py, which robosuite does not declare and robolearn does not install.
    """
    extent = sim.model.stat.extent
    near, far = sim.model.vis.map.znear * extent, sim.model.vis.map.zfar * extent
    return near / (1.0 - depth * (1.0 - near / far))


def _object_parts(env, raw: dict[str, np.ndarray]):
    """(name, vector) of each object observable, in the order of robosuite's "object-state" concatenation.

    Robosuite quaternions are xyzw; every 4-vector observable named *quat is reordered to wxyz. The
    *Single envs (PickPlaceSingle, NutAssemblySingle) switch observables per episode, so this is read
    from each observation rather than fixed at construction.
    """
    for name, observable in env._observables.items():
        if observable.modality != "object" or name not in raw:
            continue
        v = np.atleast_1d(raw[name])
        if name.endswith("quat") and v.shape == (4,):
            v = v[[3, 0, 1, 2]]
        yield name, v


def _part_names(name: str, v: np.ndarray) -> list[str]:
    if name.endswith("quat") and v.shape == (4,):
        return [f"{name}_{c}" for c in "wxyz"]
    if v.shape == (3,):
        return [f"{name}_{c}" for c in "xyz"]
    return [name] if v.size == 1 else [f"{name}_{j}" for j in range(v.size)]


def _env_seeds(seed: int, n: int) -> list[int]:
    """The robosuite seed of each env: env i draws from SeedSequence(seed).spawn(n)[i]."""
    return [int(ss.generate_state(1)[0]) for ss in np.random.SeedSequence(seed).spawn(n)]


class RobosuiteVecEnv(gym.vector.VectorEnv):
    """N robosuite envs of one task with `VecEnv`'s observation keys, infos and same-step auto-reset.

    What is randomized and when it succeeds are robosuite's (object placement at every reset; the
    env's `_check_success()`); seeding is per env from SeedSequence(cfg.seed).spawn(num_envs).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(self, cfg: EnvConfig):
        cfg.validate()
        _check_config(cfg)
        rs = _robosuite()
        name = cfg.task.removeprefix(ROBOSUITE_PREFIX)
        if name not in rs.ALL_ENVIRONMENTS:
            known = [ROBOSUITE_PREFIX + n for n in rs.ALL_ENVIRONMENTS]
            raise UnknownNameError(
                f"unknown robosuite env {cfg.task!r}; robosuite {rs.__version__} has: {', '.join(known)}."
                + did_you_mean(cfg.task, known)
            )
        supported_hz = 1.0 / rs.macros.SIMULATION_TIMESTEP
        if abs(cfg.physics_hz - supported_hz) > 1e-6:
            raise ConfigError(
                f"env config: physics_hz={cfg.physics_hz} is not supported for {cfg.task}; robosuite simulates at "
                f"{supported_hz:g} Hz (robosuite.macros.SIMULATION_TIMESTEP={rs.macros.SIMULATION_TIMESTEP}), so set "
                f"physics_hz={supported_hz:g}"
            )
        self.cfg = cfg
        self.env_name = name
        self.num_envs = n = cfg.num_envs
        self.max_episode_steps = cfg.max_episode_steps or _DEFAULT_HORIZON
        self._rs_cameras = [CAMERA_ALIASES.get(c, c) for c in cfg.cameras]
        # robosuite renders in OpenGL's bottom-up row order unless its IMAGE_CONVENTION macro says opencv
        self._flip = rs.macros.IMAGE_CONVENTION == "opengl"

        self._model_seed = _env_seeds(cfg.seed, n)  # the seed each env's current model was built from
        self.envs = []
        try:
            for seed in self._model_seed:
                self.envs.append(self._make(seed))
        except BaseException:
            self.close()
            raise
        # rewind to the state reset(seed=cfg.seed) leaves, so that both give the same episodes
        self._seed(cfg.seed)

        lo, _ = self.envs[0].action_spec
        if np.shape(lo) != (ACTION_DIM,):
            self.close()
            raise ConfigError(f"{cfg.task} has a {np.shape(lo)[0]}-dim action with robots='Panda'; "
                              f"robolearn expects the {ACTION_DIM}-dim single-arm ee_delta action")
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.action_space = batch_space(self.single_action_space, n)
        spec = self.envs[0].observation_spec()
        parts = _object_parts(self.envs[0], spec)
        self.environment_state_names = [c for name, v in parts for c in _part_names(name, v)]
        """column names of observation.environment_state (those of env 0 at construction)"""
        self._env_dim = len(self.environment_state_names)
        self.single_observation_space = self._observation_space()
        self.observation_space = batch_space(self.single_observation_space, n)

        self._obs = {k: np.zeros((n, *sp.shape), sp.dtype) for k, sp in self.single_observation_space.items()}
        self._success = np.zeros(n, bool)
        self.elapsed = np.zeros(n, np.int64)
        self._unreset = np.ones(n, bool)  # envs not reset since construction (step() refuses to run)
        self.closed = False

    # ---- construction ------------------------------------------------------------------------
    def _make(self, seed: int):
        rs, cfg = _robosuite(), self.cfg
        h, w = cfg.image_size
        with _quiet_robosuite():
            controller = rs.load_composite_controller_config(robot="Panda")
        arm = controller["body_parts"]["right"]  # the loader flattens the JSON's "arms" level
        scale = [cfg.max_dpos] * 3 + [cfg.max_drot] * 3
        arm["output_max"], arm["output_min"] = scale, [-s for s in scale]
        kwargs: dict[str, Any] = {
            **_DEFAULTS,
            **cfg.task_options,
            "robots": "Panda",
            "controller_configs": controller,
            "control_freq": cfg.control_hz,
            "horizon": self.max_episode_steps,
            "ignore_done": True,  # truncation is ours, so that it matches VecEnv's
            "seed": seed,
            "has_renderer": False,
            "has_offscreen_renderer": bool(cfg.cameras),
            "use_camera_obs": bool(cfg.cameras),
        }
        if cfg.cameras:
            kwargs.update(camera_names=self._rs_cameras, camera_heights=h, camera_widths=w, camera_depths=cfg.depth)
        try:
            with _quiet_robosuite():
                return rs.make(self.env_name, **kwargs)
        except TypeError as e:
            if "unexpected keyword argument" not in str(e):
                raise
            raise ConfigError(f"env config: task_options {sorted(cfg.task_options)} for {cfg.task}: robosuite says "
                              f"{e}") from e
        except (ValueError, AssertionError) as e:
            self._raise_unknown_camera(kwargs)
            raise ConfigError(f"robosuite could not build {cfg.task} with robots='Panda': {e}") from e

    def _raise_unknown_camera(self, kwargs: dict) -> None:
        """After a failed make: if a camera does not exist, say which ones do (builds one camera-less env)."""
        if not self.cfg.cameras:
            return
        rs = _robosuite()
        plain = {**kwargs, "has_offscreen_renderer": False, "use_camera_obs": False}
        try:
            with _quiet_robosuite():
                env = rs.make(self.env_name, **plain)
        except Exception:  # the failure was not about cameras; the caller reports the original error
            return
        model = env.sim.model
        have = [model.camera_id2name(i) for i in range(model.ncam)]
        env.close()
        ours = {v: k for k, v in CAMERA_ALIASES.items()}
        choices = [ours.get(c, c) for c in have]
        for cam, rs_cam in zip(self.cfg.cameras, self._rs_cameras, strict=True):
            if rs_cam not in have:
                raise UnknownNameError(f"unknown camera {cam!r} for {self.cfg.task}; it has: {', '.join(choices)}."
                                       + did_you_mean(cam, choices))

    def _observation_space(self) -> gym.spaces.Dict:
        inf = np.inf
        spaces = {
            "observation.state": gym.spaces.Box(-inf, inf, (23,), np.float32),
            "observation.environment_state": gym.spaces.Box(-inf, inf, (self._env_dim,), np.float32),
        }
        h, w = self.cfg.image_size
        for cam in self.cfg.cameras:
            spaces[f"observation.images.{cam}"] = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
            if self.cfg.depth:
                spaces[f"observation.depth.{cam}"] = gym.spaces.Box(0, inf, (h, w, 1), np.float32)
        return gym.spaces.Dict(spaces)

    # ---- seeding and reset -------------------------------------------------------------------
    # Seeding. A robosuite env draws from env.rng twice: when it builds its model (object sizes, e.g.
    # Lift's cube) and at every reset (placements, robot init noise). reset(seed=s) therefore rebuilds
    # the model from s unless it was already built from s, then rewinds the generator, which leaves
    # every env exactly as a fresh env built with cfg.seed=s leaves it.
    def _seed(self, seed: int) -> None:
        for env, s in zip(self.envs, _env_seeds(seed, self.num_envs), strict=True):
            # robosuite's placement samplers and robot hold references to env.rng: re-seed it in place
            env.rng.bit_generator.state = np.random.default_rng(s).bit_generator.state

    def _rebuild(self, i: int, seed: int) -> None:
        """Rebuild env i's model from `seed` (robosuite's hard reset), if it was built from another one."""
        env = self.envs[i]
        if self._model_seed[i] == seed or env.hard_reset:  # a hard-resetting env rebuilds at every reset
            return
        env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        env.hard_reset = True
        try:
            with _quiet_robosuite():
                env.reset()
        finally:
            env.hard_reset = False
        self._model_seed[i] = seed

    def _reset_env(self, i: int) -> None:
        self._write(i, self.envs[i].reset())
        self._success[i] = bool(self.envs[i]._check_success())
        self.elapsed[i] = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset all envs, or those in `options["reset_mask"]` (gymnasium's partial reset)."""
        mask = None if options is None else options.get("reset_mask")
        ids = np.arange(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask, bool))
        if seed is not None:
            seeds = _env_seeds(seed, self.num_envs)
            for i in ids:
                self._rebuild(int(i), seeds[i])
            self._seed(seed)
        for i in ids:
            self._reset_env(int(i))
        self._unreset[ids] = False
        return self._observe(), self._infos()

    def reset_envs(self, env_ids) -> dict[str, np.ndarray]:
        """Reset some envs in place and return the batch observation."""
        mask = np.zeros(self.num_envs, bool)
        mask[np.asarray(env_ids)] = True
        return self.reset(options={"reset_mask": mask})[0]

    # ---- stepping ----------------------------------------------------------------------------
    def step(self, actions):
        """actions (N, 7) -> obs {key: (N, ...)}, reward (N,) float32, terminated (N,), truncated (N,), infos."""
        a = check_action(actions, self.num_envs, ACTION_DIM, self.cfg.action_mode)
        if self._unreset.any():
            raise RuntimeError("RobosuiteVecEnv.step() was called before reset(); call reset() first")
        reward = np.zeros(self.num_envs, np.float32)
        for i, env in enumerate(self.envs):
            raw, reward[i], _, _ = env.step(a[i])
            self._write(i, raw)
            self._success[i] = bool(env._check_success())
        self.elapsed += 1
        terminated, truncated = episode_ends(self._success, self.elapsed, self.max_episode_steps,
                                             self.cfg.terminate_on_success)
        done = terminated | truncated
        infos = self._infos(reward)
        if done.any():
            add_final_infos(infos, self._observe(), done)
            for i in np.flatnonzero(done):
                self._reset_env(int(i))
        return self._observe(), reward, terminated, truncated, infos

    # ---- observations and infos --------------------------------------------------------------
    def _write(self, i: int, raw: dict[str, np.ndarray]) -> None:
        """Copy one robosuite observation dict into row i of the batch arrays."""
        o = self._obs
        qx, qy, qz, qw = raw["robot0_eef_quat"]  # robosuite quaternions are xyzw
        o["observation.state"][i] = np.concatenate([
            raw["robot0_joint_pos"], raw["robot0_joint_vel"], raw["robot0_eef_pos"], (qw, qx, qy, qz),
            raw["robot0_gripper_qpos"],
        ])
        if self._env_dim:
            o["observation.environment_state"][i] = np.concatenate([v for _, v in _object_parts(self.envs[i], raw)])
        if not self.cfg.cameras:
            return
        sim = self.envs[i].sim
        for cam, rs_cam in zip(self.cfg.cameras, self._rs_cameras, strict=True):
            img = raw[f"{rs_cam}_image"]
            o[f"observation.images.{cam}"][i] = img[::-1] if self._flip else img
            if self.cfg.depth:
                depth = real_depth(sim, raw[f"{rs_cam}_depth"])
                o[f"observation.depth.{cam}"][i] = depth[::-1] if self._flip else depth

    def _observe(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._obs.items()}

    def _infos(self, reward: np.ndarray | None = None) -> dict:
        n = self.num_envs
        return {
            "success": self._success.copy(),
            "stage": np.zeros(n, np.int64),
            "stage_name": np.array([STAGES[0]] * n, dtype=object),
            "reward_terms": {"reward": np.zeros(n, np.float32) if reward is None else reward.copy()},
            "elapsed_steps": self.elapsed.copy(),
        }

    # ---- helpers for users -------------------------------------------------------------------
    def render(self, camera: str | None = None) -> np.ndarray:
        """(N, H, W, 3) latest frames of one camera (default: the first configured one)."""
        if not self.cfg.cameras:
            raise ConfigError(f"render() needs cameras; create the env with cameras=[agentview] for {self.cfg.task}")
        cam = self.cfg.cameras[0] if camera is None else camera
        if cam not in self.cfg.cameras:
            raise UnknownNameError(f"camera {cam!r} is not rendered by this env; it has {self.cfg.cameras}."
                                   + did_you_mean(cam, self.cfg.cameras))
        return self._obs[f"observation.images.{cam}"].copy()

    def close(self, **kwargs) -> None:
        if getattr(self, "closed", False):
            return
        for env in getattr(self, "envs", []):
            env.close()
        self.closed = True
