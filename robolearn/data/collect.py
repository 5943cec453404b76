"""`robolearn collect`: roll a task's scripted expert in the batched env and record a dataset.

Every env of the batch records its own episode; when it ends (success or time limit) the episode is
written at once, with the stage annotation the task's stage predicates gave each frame, and the env
auto-resets into the next episode. Datasets can be imperfect on purpose:
- `action_noise_std` adds Gaussian noise to the expert's normalized action before it is clipped and
  executed (the recorded action is the executed one);
- a `failure_fraction` of the episodes get an injected failure, drawn per episode:
  `drop` opens the gripper for good a few steps after the first grasp, `stall` freezes the arm
  (zero action, gripper held) from a random step on. An episode's success label is what the task
  judged; its info names the failure and the step it began (a failure drawn for an episode that
  ended before it could begin is not recorded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from robolearn.data.format import DatasetError, Feature, to_jsonable
from robolearn.data.stages import StageAnnotation
from robolearn.data.video import VideoOptions
from robolearn.data.writer import DatasetWriter, EpisodeRecord
from robolearn.errors import ConfigError
from robolearn.sim.config import RandomizationConfig

FailureMode = Literal["drop", "stall"]


@dataclass
class CollectConfig:
    """What `robolearn collect` records."""

    task: str = "lift"
    """registered native task with a scripted expert (`robolearn tasks`)"""
    episodes: int = 50
    """episodes to record (counting those already in the dataset when resuming)"""
    out: str = "data/lift"
    """dataset directory"""
    resume: bool = False
    """append to the dataset at `out` (e.g. after a crash) instead of requiring a new directory"""
    num_envs: int = 8
    """environments stepped together"""
    num_threads: int = 2
    """physics threads"""
    seed: int = 0
    """base seed of the envs, the noise and the failure draws"""
    cameras: list[str] = field(default_factory=lambda: ["front"])
    """cameras recorded as observation.images.<camera> (empty: state only)"""
    image_size: tuple[int, int] = (84, 84)
    """(height, width) of the recorded images, pixels (even numbers)"""
    action_noise_std: float = 0.0
    """std of Gaussian noise on the expert's normalized action, before clipping to [-1, 1]"""
    failure_fraction: float = 0.0
    """fraction of episodes with an injected failure (0..1)"""
    failure_modes: list[FailureMode] = field(default_factory=lambda: ["drop"])
    """failures to draw from: drop (release after grasping), stall (the arm freezes)"""
    max_episode_steps: int = 0
    """time limit in control steps; 0 uses the task's default"""
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    """domain randomization of the recording envs (physics and visual; off by default), kept in
    meta/robolearn.json's env config, which `robolearn eval` rebuilds"""
    video: VideoOptions = field(default_factory=VideoOptions)
    fsync: bool = True
    """flush every committed file to disk (survives power loss, not only a killed process)"""
    progress: bool = True
    """show a progress bar"""

    def validate(self) -> None:
        if self.episodes < 1:
            raise ConfigError(f"collect: episodes={self.episodes} must be at least 1")
        if not 0.0 <= self.failure_fraction <= 1.0:
            raise ConfigError(f"collect: failure_fraction={self.failure_fraction} must be between 0 and 1")
        if self.action_noise_std < 0:
            raise ConfigError(f"collect: action_noise_std={self.action_noise_std} must be >= 0")
        bad = [m for m in self.failure_modes if m not in ("drop", "stall")]
        if bad or (self.failure_fraction > 0 and not self.failure_modes):
            raise ConfigError(f"collect: failure_modes={self.failure_modes} must be a non-empty list of drop, stall")


ACTION_NAMES = {"ee_delta": ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]}


def dataset_features(env) -> dict[str, Feature]:
    """The features a recording of `env` holds: LeRobot keys plus reward, done and success."""
    from robolearn.sim.vec_env import STATE_NAMES

    cfg = env.cfg
    feats = {
        "observation.state": Feature("float32", (len(STATE_NAMES),), list(STATE_NAMES)),
        "observation.environment_state": Feature("float32", (len(env.task.environment_state_names),),
                                                 list(env.task.environment_state_names)),
    }
    for cam in cfg.cameras:
        feats[f"observation.images.{cam}"] = Feature("video", (*cfg.image_size, 3))
    names = ACTION_NAMES.get(cfg.action_mode) or [*env.robot.joint_names, "gripper"]
    feats["action"] = Feature("float32", (env.single_action_space.shape[0],), names)
    feats["next.reward"] = Feature("float32", (1,))
    feats["next.done"] = Feature("bool", (1,))
    feats["next.success"] = Feature("bool", (1,))
    return feats


class _Failures:
    """Per-env injected failures: which one (if any) this episode has and when it starts."""

    def __init__(self, n: int, cfg: CollectConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.mode = np.full(n, "", dtype=object)
        self.start = np.full(n, -1, np.int64)  # step the failure began (-1: not yet / none)
        self.delay = np.zeros(n, np.int64)
        self.stall_at = np.zeros(n, np.int64)
        self.held = np.zeros((n, 7))

    def draw(self, i: int, max_steps: int) -> None:
        self.mode[i], self.start[i] = "", -1
        if self.rng.random() < self.cfg.failure_fraction:
            self.mode[i] = self.cfg.failure_modes[self.rng.integers(len(self.cfg.failure_modes))]
            self.delay[i] = self.rng.integers(2, 9)  # drop: steps after the first grasp
            self.stall_at[i] = self.rng.integers(2, max(3, max_steps // 4))

    def apply(self, action: np.ndarray, t: np.ndarray, grasped: np.ndarray, grasp_step: np.ndarray) -> np.ndarray:
        """Overwrite the actions of envs whose failure is under way (ee-delta actions, in place)."""
        drop = (self.mode == "drop") & (grasp_step >= 0) & (t >= grasp_step + self.delay)
        stall = (self.mode == "stall") & (t >= self.stall_at)
        newly = (drop | stall) & (self.start < 0)
        self.start[newly] = t[newly]
        self.held[newly] = action[newly]
        action[drop, -1] = -1.0  # open the gripper and keep it open
        action[stall, :6] = 0.0  # hold the pose, keep the gripper as it was
        action[stall, 6] = self.held[stall, 6]
        return action


def run(cfg: CollectConfig) -> Path:
    """Record `cfg.episodes` expert episodes into `cfg.out`; returns the dataset directory."""
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.sim.registry import make_env
    from robolearn.sim.vec_env import VecEnv

    cfg.validate()
    out = Path(cfg.out)
    env = make_env(cfg.task, num_envs=cfg.num_envs, num_threads=cfg.num_threads, seed=cfg.seed,
                   cameras=list(cfg.cameras), image_size=tuple(cfg.image_size),
                   max_episode_steps=cfg.max_episode_steps, randomization=config_to_dict(cfg.randomization))
    if not isinstance(env, VecEnv):
        raise ConfigError(f"collect: {cfg.task!r} has no scripted expert; collect records native tasks "
                          "(`robolearn tasks` lists them)")
    try:
        feats = dataset_features(env)
        env_dict = config_to_dict(env.cfg)
        if cfg.resume and (out / "meta" / "info.json").exists():
            writer = DatasetWriter.open(out, fsync=cfg.fsync)
            rec_env = writer.extra_meta.get("env", {})
            if rec_env.get("randomization", env_dict["randomization"]) != env_dict["randomization"]:
                raise DatasetError(f"{out}: was recorded with randomization {rec_env['randomization']}; resuming "
                                   f"with {env_dict['randomization']} would mix the two. Use the same "
                                   "randomization or another --out")
            if rec_env.get("task") != cfg.task or set(writer.features) != set(feats):
                raise DatasetError(f"{out}: holds a recording of task {rec_env.get('task')!r} with features "
                                   f"{sorted(writer.features)}; it cannot be resumed with task {cfg.task!r} and "
                                   f"features {sorted(feats)}. Use another --out")
        else:
            writer = DatasetWriter.create(
                out, feats, fps=_fps(env.cfg.control_hz), robot_type=env.robot.name, video=cfg.video,
                fsync=cfg.fsync, extra_meta={"source": "robolearn collect", "env": env_dict,
                                             "stages": list(env.task.stages), "collect": to_jsonable(
                                                 {k: v for k, v in config_to_dict(cfg).items()})})
        with writer:
            _record(env, writer, cfg, tqdm)
    finally:
        env.close()
    return out


def _fps(control_hz: float) -> int:
    if abs(control_hz - round(control_hz)) > 1e-9:
        raise ConfigError(f"collect: control_hz={control_hz} must be a whole number of Hz for a LeRobot dataset")
    return round(control_hz)


def _record(env, writer: DatasetWriter, cfg: CollectConfig, tqdm) -> None:
    n, task = env.num_envs, env.task
    todo = cfg.episodes - len(writer.episodes)
    if todo <= 0:
        return
    done_before = len(writer.episodes)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, done_before]))
    # a resumed run draws new episodes instead of repeating the ones the dataset has
    obs, _ = env.reset(seed=cfg.seed if not done_before else cfg.seed + 7919 * done_before)
    stage = task.evaluate(env.state).stage.copy()
    expert = task.make_expert(n, env.cfg.max_dpos, env.cfg.max_drot)
    failures = _Failures(n, cfg, rng)
    for i in range(n):
        failures.draw(i, env.max_episode_steps)
    reset_info = [dict(env.reset_states[i]) for i in range(n)]
    buffers: list[dict[str, list]] = [_empty(writer) for _ in range(n)]
    t = np.zeros(n, np.int64)
    grasp_step = np.full(n, -1, np.int64)
    # envs still recording: once enough episodes have started, an env that finishes stops recording
    active = np.arange(n) < todo
    started, written, successes, frames_total = int(active.sum()), 0, 0, 0
    bar = tqdm(total=todo, desc=f"collect {cfg.task}", unit="ep", disable=not cfg.progress)
    t0 = time.perf_counter()
    while written < todo:
        a, _ = expert.act(env.state)
        if cfg.action_noise_std:
            a = a + rng.normal(0.0, cfg.action_noise_std, a.shape)
        a = np.clip(a, -1.0, 1.0)
        grasped = env.state.grasped
        grasp_step[(grasp_step < 0) & grasped] = t[(grasp_step < 0) & grasped]
        a = failures.apply(a, t, grasped, grasp_step)
        action = np.asarray(env.expert_action(a), np.float32)  # recorded == executed, bit for bit
        prev_obs, prev_stage = obs, stage
        obs, reward, terminated, truncated, info = env.step(action)
        done = terminated | truncated
        for i in np.flatnonzero(active):
            b = buffers[i]
            for k in writer.features:
                if k.startswith("observation."):
                    b[k].append(prev_obs[k][i])
            b["action"].append(action[i])
            b["next.reward"].append(reward[i])
            b["next.done"].append(done[i])
            b["next.success"].append(info["success"][i])
            b["_stage"].append(prev_stage[i])
        stage = info["stage"].copy()
        t += 1
        frames_total += int(active.sum())
        if done.any():
            stage[done] = task.evaluate(env.state).stage[done]  # the new episodes' first state
            for i in np.flatnonzero(done & active):
                b = buffers[i]
                success = bool(info["success"][i])
                mode = failures.mode[i] if failures.start[i] >= 0 else ""  # drawn and actually begun
                ep_info = {
                    "seed": int(env.cfg.seed), "env_index": int(i), "reset": reset_info[i],
                    "final_physics_state": env.final_physics_states[i], "steps": int(t[i]),
                    "failure": mode or None, "failure_step": int(failures.start[i]) if mode else None,
                    "action_noise_std": cfg.action_noise_std,
                }
                frames = {k: np.stack(v) for k, v in b.items() if not k.startswith("_")}
                stages = StageAnnotation.from_stage_ids(np.asarray(b["_stage"]), list(task.stages), "expert")
                writer.add_episode(frames, EpisodeRecord(task.description, stages, success, to_jsonable(ep_info)))
                written += 1
                successes += success
                bar.update(1)
                fps = frames_total / (time.perf_counter() - t0)
                bar.set_postfix(success=f"{successes}/{written}", fps=f"{fps:.0f}")
                if started < todo:
                    started += 1
                else:
                    active[i] = False
            for i in np.flatnonzero(done):
                buffers[i] = _empty(writer)
                reset_info[i] = dict(env.reset_states[i])
                failures.draw(i, env.max_episode_steps)
            t[done] = 0
            grasp_step[done] = -1
            expert.reset(np.flatnonzero(done))
    bar.close()


def _empty(writer: DatasetWriter) -> dict[str, list]:
    return {**{k: [] for k in writer.features}, "_stage": []}
