"""`VecEnv`: N MuJoCo environments of one native task, stepped together.

Physics runs in threads over separate `MjData` (mj_step releases the GIL); everything in Python
(control, judging, observations) is batched numpy over all envs, so its cost is paid once per
control step rather than once per env or per substep. Implements gymnasium's vector API with
same-step auto-reset (the final observation of a finished episode is in `infos["final_obs"]`, as
stable-baselines3 expects).

Observations (LeRobot keys, batch-first):
  observation.state             (N, 23) float32  q(7) rad, dq(7) rad/s, tcp pos(3) m, tcp quat(4) wxyz, fingers(2) m
  observation.environment_state (N, D) float32   the task's privileged object state
  observation.images.<camera>   (N, H, W, 3) uint8
  observation.depth.<camera>    (N, H, W, 1) float32 metres         (depth=True)
  observation.pointcloud        (N, P, 6) float32 xyz m + rgb 0..1  (pointcloud.enabled)
Infos: success (N,) bool, stage (N,) int, stage_name (N,) str, reward_terms {name: (N,)},
  elapsed_steps (N,) int; and final_obs / final_info / _final_obs on auto-reset.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from copy import copy, deepcopy
from pathlib import Path

import gymnasium as gym
import mujoco
import numba
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robolearn.errors import ActionError, ConfigError, UnknownNameError, did_you_mean
from robolearn.hardware import load_robot
from robolearn.sim._kernels import gather_state, write_ctrl
from robolearn.sim.config import EnvConfig
from robolearn.sim.controller import ArmController
from robolearn.sim.randomization import DomainRandomizer
from robolearn.sim.render import CameraRenderer, depth_to_points, make_pointcloud
from robolearn.sim.robot import PREFIX, attach_panda, robot_ids
from robolearn.sim.task import BatchState, Task, TaskEval

SIM_ASSETS = Path(__file__).resolve().parents[2] / "sim_assets"
STATE_NAMES = (
    [f"q{i + 1}" for i in range(7)] + [f"dq{i + 1}" for i in range(7)]
    + ["tcp_x", "tcp_y", "tcp_z", "tcp_qw", "tcp_qx", "tcp_qy", "tcp_qz", "finger_left", "finger_right"]
)


def check_action(actions, num_envs: int, dim: int, mode: str) -> np.ndarray:
    """Validate a batch of actions: (N, dim) finite floats (a flat (dim,) is accepted when N == 1)."""
    a = np.asarray(actions, dtype=np.float64)
    if a.shape == (dim,) and num_envs == 1:
        a = a[None]
    if a.shape != (num_envs, dim):
        raise ActionError(
            f"action has shape {np.shape(actions)}, expected ({num_envs}, {dim}) for {num_envs} envs "
            f"in action_mode={mode!r}"
        )
    if not math.isfinite(a.sum()):  # one reduction instead of two: finite iff every entry is, or it overflowed
        bad = np.argwhere(~np.isfinite(a))
        if len(bad) == 0:
            raise ActionError(f"action values up to {np.abs(a).max():.3g} are too large to be commands; "
                              "the simulator state was not changed")
        env, col = bad[0]
        raise ActionError(
            f"action contains NaN or inf (env {env}, component {col}); the simulator state was not changed"
        )
    return a


FINGER_BODIES = (PREFIX + "leftfinger", PREFIX + "rightfinger")


def physics_state(m: mujoco.MjModel, d: mujoco.MjData) -> np.ndarray:
    """The full integration state of one MjData (time, qpos, qvel, act, warm start, ctrl, mocap, ...):
    everything the next mj_step depends on."""
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    out = np.empty(mujoco.mj_stateSize(m, spec))
    mujoco.mj_getState(m, d, out, spec)
    return out


def grasp_sensor_name(side: int, geom: str) -> str:
    return f"grasp_{('left', 'right')[side]}__{geom}"


def episode_ends(success: np.ndarray, elapsed: np.ndarray, max_steps: int,
                 terminate_on_success: bool) -> tuple[np.ndarray, np.ndarray]:
    """(terminated, truncated) of a batch: success ends an episode when asked to; the step limit
    truncates only episodes that did not terminate on the same step."""
    terminated = success.copy() if terminate_on_success else np.zeros(len(success), bool)
    truncated = elapsed >= max_steps
    truncated[terminated] = False
    return terminated, truncated


def add_final_infos(infos: dict, final_obs: dict[str, np.ndarray], done: np.ndarray) -> None:
    """Gymnasium's same-step auto-reset keys: the finished episodes' last observation and info."""
    infos["final_obs"] = np.array([{k: v[i] for k, v in final_obs.items()} if done[i] else None
                                   for i in range(len(done))], dtype=object)
    infos["final_info"] = {k: v for k, v in infos.items() if k != "final_obs"}
    infos["_final_obs"] = done.copy()
    infos["_final_info"] = done.copy()


def build_model(task: Task, robot, physics_hz: float) -> mujoco.MjModel:
    """Tabletop scene + the task's objects + the Panda, compiled.

    For every grasp geom of the task, two MuJoCo contact sensors count contacts between it and each
    finger (pad and mesh: the finger body's subtree). They land in sensordata, which the gather
    kernel reads; parsing d.contact in Python every step cost more than the whole task judgement."""
    spec = mujoco.MjSpec.from_file(str(SIM_ASSETS / "scenes" / "tabletop.xml"))
    spec.option.timestep = 1.0 / physics_hz
    task.build(spec)
    attach_panda(spec, robot)
    for geom in task.grasp_geoms:
        if spec.geom(geom) is None:
            raise ConfigError(f"task {task.name!r} names grasp geom {geom!r}, which its scene lacks")
        for side, finger in enumerate(FINGER_BODIES):
            spec.add_sensor(name=grasp_sensor_name(side, geom), type=mujoco.mjtSensor.mjSENS_CONTACT,
                            objtype=mujoco.mjtObj.mjOBJ_XBODY, objname=finger,  # the finger's subtree
                            reftype=mujoco.mjtObj.mjOBJ_GEOM, refname=geom,
                            intprm=[1, 0, 1])  # data="found" (count), no reduction, num=1
    return spec.compile()


class VecEnv(gym.vector.VectorEnv):
    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(self, cfg: EnvConfig, task: Task):
        cfg.validate()
        self.cfg, self.task = cfg, task
        self.num_envs = n = cfg.num_envs
        self.robot = load_robot(cfg.robot)
        self.nominal = build_model(task, self.robot, cfg.physics_hz)
        task.bind(self.nominal)
        self.ids = robot_ids(self.nominal, self.robot)
        self.substeps = cfg.substeps
        self.max_episode_steps = cfg.max_episode_steps or task.max_episode_steps

        m = self.nominal
        body_id = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)  # noqa: E731
        for name in task.tracked_bodies + task.randomized_bodies:
            if body_id(name) < 0:
                raise ConfigError(f"task {task.name!r} names body {name!r}, which its scene does not have")
        self._tracked = np.array([body_id(b) for b in task.tracked_bodies], dtype=int)
        object_bodies = [body_id(b) for b in task.randomized_bodies]
        table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table")
        visual_geoms = [table] + list(np.flatnonzero(np.isin(m.geom_bodyid, object_bodies)))
        self.randomizer = DomainRandomizer(cfg.randomization, m, self.ids, object_bodies, visual_geoms)
        # one shared model unless randomization changes it per env
        self.models = [copy(m) if self.randomizer.needs_model_copies else m for _ in range(n)]
        self.datas = [mujoco.MjData(mi) for mi in self.models]
        # views into each MjData's buffers stay valid for its lifetime: made once, read every step
        self._views = tuple(numba.typed.List([getattr(d, f) for d in self.datas])
                            for f in ("qpos", "qvel", "xpos", "xquat", "site_xpos", "sensordata"))
        self._ctrl_views = numba.typed.List([d.ctrl for d in self.datas])
        sensor_adr = lambda name: m.sensor_adr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SENSOR, name)]  # noqa: E731
        # (2, G) sensordata addresses of the finger/grasp-geom contact counts (G = 0: no grasp target)
        self._grasp_adr = np.array([[sensor_adr(grasp_sensor_name(side, g)) for g in task.grasp_geoms]
                                    for side in range(2)], dtype=np.int64).reshape(2, len(task.grasp_geoms))

        self.controller = ArmController(self.robot, self.ids, m.nv, cfg.action_mode, cfg.max_dpos,
                                        cfg.max_drot, 1.0 / cfg.control_hz)
        lo, hi = self.controller.action_bounds()
        self.single_action_space = gym.spaces.Box(lo, hi, dtype=np.float32)
        self.action_space = batch_space(self.single_action_space, n)
        self.renderer = None
        if cfg.cameras:
            h, w = cfg.image_size
            self.renderer = CameraRenderer(m, cfg.cameras, h, w, cfg.depth or cfg.pointcloud.enabled)
        self.single_observation_space = self._observation_space()
        self.observation_space = batch_space(self.single_observation_space, n)

        self._pool = ThreadPoolExecutor(cfg.num_threads - 1) if cfg.num_threads > 1 else None
        # ~4 chunks per thread for dynamic load balancing; one chunk when stepping on one thread
        n_chunks = 1 if cfg.num_threads == 1 else min(n, 4 * cfg.num_threads)
        self._chunks = [c for c in np.array_split(np.arange(n), n_chunks) if len(c)]
        self._gather_bodies = np.append(self._tracked, self.ids.ee_body).astype(np.int64)
        self._act_ids = np.concatenate([self.ids.arm_act, self.ids.finger_act]).astype(np.int64)
        self.elapsed = np.zeros(n, np.int64)
        self._stage_names = np.array(task.stages, dtype=object)
        self._latency = np.zeros(n, np.int64)
        self._act_hist = np.zeros((n, self.randomizer.max_latency + 1, self.single_action_space.shape[0]))
        self._rngs: list[np.random.Generator] = []
        self._seed(cfg.seed)
        # what replaying an episode needs: per env, the RNG state its last reset drew from and the
        # physics state that reset produced; and the physics state of episodes that ended this step
        self.reset_states: list[dict | None] = [None] * n
        self.final_physics_states: dict[int, np.ndarray] = {}
        self.state: BatchState | None = None
        self.closed = False

    # ---- spaces ------------------------------------------------------------------------------
    def _observation_space(self) -> gym.spaces.Dict:
        inf = np.inf
        d_env = len(self.task.environment_state_names)
        spaces = {
            "observation.state": gym.spaces.Box(-inf, inf, (len(STATE_NAMES),), np.float32),
            "observation.environment_state": gym.spaces.Box(-inf, inf, (d_env,), np.float32),
        }
        h, w = self.cfg.image_size
        for cam in self.cfg.cameras:
            spaces[f"observation.images.{cam}"] = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
            if self.cfg.depth:
                spaces[f"observation.depth.{cam}"] = gym.spaces.Box(0, inf, (h, w, 1), np.float32)
        if self.cfg.pointcloud.enabled:
            n_pts = self.cfg.pointcloud.num_points
            spaces["observation.pointcloud"] = gym.spaces.Box(-inf, inf, (n_pts, 6), np.float32)
        return gym.spaces.Dict(spaces)

    # ---- seeding and reset -------------------------------------------------------------------
    def _seed(self, seed: int) -> None:
        self._rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(self.num_envs)]

    def _reset_env(self, i: int) -> None:
        m, d, rng = self.models[i], self.datas[i], self._rngs[i]
        rng_state = deepcopy(rng.bit_generator.state)
        if self.randomizer.needs_model_copies:
            self.randomizer.apply(m, rng)
        mujoco.mj_resetData(m, d)
        ids = self.ids
        noise = self.task.options.robot_init_noise
        q0 = np.clip(self.robot.home + rng.normal(0, noise, 7), self.robot.position_lower, self.robot.position_upper)
        half = self.robot.gripper_width_max / 2
        d.qpos[ids.arm_qpos] = q0
        d.qpos[ids.finger_qpos] = (half, -half)
        d.ctrl[ids.arm_act] = q0
        d.ctrl[ids.finger_act] = (half, -half)
        self.task.apply_reset(m, d, self.task.sample_reset(rng))
        mujoco.mj_forward(m, d)
        self.elapsed[i] = 0
        self._latency[i] = self.randomizer.draw_latency(rng) if self.randomizer.max_latency else 0
        self._act_hist[i] = self.controller.hold_action(q0[None])[0]
        self.reset_states[i] = {"rng_state": rng_state, "physics_state": physics_state(m, d)}

    def restore_reset(self, i: int, rng_state: dict) -> dict[str, np.ndarray]:
        """Reset env `i` exactly as a recorded reset did (same randomization, same initial state),
        from the RNG state saved in `reset_states[i]["rng_state"]`; returns the batch observation."""
        self._rngs[i].bit_generator.state = deepcopy(rng_state)
        self._reset_env(i)
        self._gather()
        return self._observe(self.task.evaluate(self.state))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset all envs, or those in `options["reset_mask"]` (gymnasium's partial reset)."""
        if seed is not None:
            self._seed(seed)
        mask = None if options is None else options.get("reset_mask")
        ids = np.arange(self.num_envs) if mask is None else np.flatnonzero(np.asarray(mask, bool))
        for i in ids:
            self._reset_env(int(i))
        self._gather()
        ev = self.task.evaluate(self.state)
        return self._observe(ev), self._infos(ev)

    def reset_envs(self, env_ids) -> dict[str, np.ndarray]:
        """Reset some envs in place and return the batch observation."""
        mask = np.zeros(self.num_envs, bool)
        mask[np.asarray(env_ids)] = True
        return self.reset(options={"reset_mask": mask})[0]

    # ---- stepping ----------------------------------------------------------------------------
    def _physics_worker(self, chunks: itertools.count) -> None:
        while (k := next(chunks)) < len(self._chunks):  # next() on a count is atomic under the GIL
            self._physics(self._chunks[k])

    def _physics(self, envs: np.ndarray) -> None:
        """One control period of every env in `envs`: `substeps` physics steps with the new ctrl.

        Split stepping (step2, then n-1 full steps, then step1) does exactly the work of n mj_step
        calls, bit for bit, but ends with mj_step1 on the new state: kinematics, Jacobian inputs,
        contacts and camera poses describe the current qpos with nothing computed twice. It needs
        mj_step1 to have run on the state before the first step2, which mj_forward at reset does."""
        models, datas, n = self.models, self.datas, self.substeps
        for i in envs:
            m, d = models[i], datas[i]
            mujoco.mj_step2(m, d)  # actuation from the new ctrl, acceleration, integration
            if n > 1:
                mujoco.mj_step(m, d, n - 1)
            mujoco.mj_step1(m, d)

    def step(self, actions):
        a = check_action(actions, self.num_envs, self.single_action_space.shape[0], self.cfg.action_mode)
        if self.randomizer.max_latency:
            self._act_hist = np.roll(self._act_hist, 1, axis=1)
            self._act_hist[:, 0] = a
            a = self._act_hist[np.arange(self.num_envs), self._latency]
        write_ctrl(self._ctrl_views, self._act_ids, self.controller.compute(self.models, self.datas, self.state.q, a))
        # the calling thread and the workers pull chunks from one counter until none are left: a
        # thread that the OS (or the hypervisor) stalls for a while simply takes fewer chunks, where
        # a fixed split would hold the whole step at the barrier
        chunks = itertools.count()
        futures = [self._pool.submit(self._physics_worker, chunks) for _ in range(self.cfg.num_threads - 1)] \
            if self._pool else ()
        self._physics_worker(chunks)
        for f in futures:
            f.result()
        self.elapsed += 1
        self._gather()
        ev = self.task.evaluate(self.state)
        reward = self.task.reward(ev)
        terminated, truncated = episode_ends(ev.success, self.elapsed, self.max_episode_steps,
                                             self.cfg.terminate_on_success)
        done = terminated | truncated
        infos = self._infos(ev)
        self.final_physics_states = {}
        if done.any():
            add_final_infos(infos, self._observe(ev), done)
            for i in np.flatnonzero(done):
                self.final_physics_states[int(i)] = physics_state(self.models[i], self.datas[i])
                self._reset_env(int(i))
            self._gather()
            ev = None  # judged before the reset: the new episodes' state is read from the task
        obs = self._observe(ev)
        return obs, reward.astype(np.float32), terminated, truncated, infos

    # ---- state, observations, infos ----------------------------------------------------------
    def _gather(self) -> None:
        """Copy what the task and observations need out of every MjData into fresh batch arrays."""
        ids, n, nb = self.ids, self.num_envs, len(self._gather_bodies)
        q, dq, fingers = np.empty((n, 7)), np.empty((n, 7)), np.empty((n, 2))
        xpos, xquat, tcp = np.empty((n, nb, 3)), np.empty((n, nb, 4)), np.empty((n, 3))
        self._proprio = np.empty((n, len(STATE_NAMES)), np.float32)
        contact = np.empty((n, 2), bool)
        gather_state(*self._views, ids.arm_qpos, ids.arm_dof, ids.finger_qpos, self._gather_bodies, ids.tcp_site,
                     self._grasp_adr, q, dq, fingers, xpos, xquat, tcp, self._proprio, contact)
        names = self.task.tracked_bodies
        self.state = BatchState(
            q=q, dq=dq, fingers=fingers, tcp_pos=tcp, tcp_quat=xquat[:, -1],
            body_pos={b: xpos[:, k] for k, b in enumerate(names)},
            body_quat={b: xquat[:, k] for k, b in enumerate(names)},
            grasp_contact=contact,
        )

    def _observe(self, ev: TaskEval | None = None) -> dict[str, np.ndarray]:
        """Observations of the current state; `ev`, the judgement of this same state, may carry the
        environment state already (tasks that judge in one compiled kernel)."""
        s = self.state
        env_state = ev.environment_state if ev is not None else None
        if env_state is None:
            env_state = self.task.environment_state(s)
        proprio = self._proprio  # q, dq, tcp pos, tcp quat, fingers: filled by the gather kernel
        if self.randomizer.cfg.physics.observation_noise_std:
            proprio = np.stack([self.randomizer.noise(p, r) for p, r in zip(proprio, self._rngs)])
        obs = {
            "observation.state": proprio.astype(np.float32, copy=False),
            "observation.environment_state": env_state.astype(np.float32, copy=False),
        }
        if self.renderer is not None:
            obs.update(self._render_all())
        return obs

    def _render_all(self) -> dict[str, np.ndarray]:
        r, cfg = self.renderer, self.cfg
        h, w = cfg.image_size
        n = self.num_envs
        out = {}
        pcs = [[] for _ in range(n)] if cfg.pointcloud.enabled else None
        for c, cam in enumerate(cfg.cameras):
            rgb = np.zeros((n, h, w, 3), np.uint8)
            depth = np.zeros((n, h, w, 1), np.float32) if cfg.depth else None
            for i, (m, d) in enumerate(zip(self.models, self.datas)):
                img, dep = r.render(m, d, c)
                rgb[i] = img
                if depth is not None:
                    depth[i, ..., 0] = dep
                if pcs is not None:
                    cid = r.cam_ids[c]
                    pts = depth_to_points(dep, r.intrinsics(m, c), d.cam_xpos[cid], d.cam_xmat[cid])
                    pcs[i].append((pts, img.reshape(-1, 3)))
            out[f"observation.images.{cam}"] = rgb
            if depth is not None:
                out[f"observation.depth.{cam}"] = depth
        if pcs is not None:
            pc = cfg.pointcloud
            out["observation.pointcloud"] = np.stack([
                make_pointcloud(np.concatenate([p for p, _ in views]), np.concatenate([c for _, c in views]),
                                pc.crop_min, pc.crop_max, pc.voxel_size, pc.num_points, self._rngs[i])
                for i, views in enumerate(pcs)
            ])
        return out

    def _infos(self, ev) -> dict:
        # every array here is fresh each step (the task builds new ones), so nothing needs copying
        return {
            "success": ev.success,
            "stage": ev.stage,
            "stage_name": self._stage_names[ev.stage],
            "reward_terms": ev.terms,
            "elapsed_steps": self.elapsed.copy(),
        }

    # ---- helpers for experts and users -------------------------------------------------------
    def expert_action(self, ee_action: np.ndarray) -> np.ndarray:
        """Convert an expert's ee-delta action (N, 7) into this env's action mode."""
        if self.cfg.action_mode == "ee_delta":
            return ee_action
        return self.controller.ee_to_joint(self.models, self.datas, self.state.q, ee_action)

    def render(self, camera: str | None = None) -> np.ndarray:
        """(N, H, W, 3) frames of one camera (default: the first configured one)."""
        if self.renderer is None:
            raise ConfigError("render() needs cameras; create the env with cameras=[front]")
        if camera is not None and camera not in self.cfg.cameras:
            raise UnknownNameError(f"camera {camera!r} is not rendered by this env; its cameras: "
                                   f"{', '.join(self.cfg.cameras)}." + did_you_mean(camera, self.cfg.cameras))
        c = 0 if camera is None else self.cfg.cameras.index(camera)
        return np.stack([self.renderer.render(m, d, c)[0] for m, d in zip(self.models, self.datas)])

    def close(self, **kwargs) -> None:
        if self.closed:
            return
        if self._pool is not None:
            self._pool.shutdown()
        if self.renderer is not None:
            self.renderer.close()
        self.closed = True
