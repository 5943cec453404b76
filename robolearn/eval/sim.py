"""`robolearn eval`: a policy checkpoint over seeded sim episodes, batched through the inference engine.

    robolearn eval --policy runs/bc/lift_mlp/checkpoints/last --episodes 100 --video

The env is the one the policy's dataset was recorded in when the checkpoint's run directory says so
(`train_config.json` naming the dataset, whose `meta/robolearn.json` holds the env config), else the
named task with its defaults; either way with the cameras the policy reads, at its image size,
`terminate_on_success=True`, `num_envs` envs and the eval `seed` (1000 by default: collect seeds
from 0, so evaluation episodes are not the training ones).

Episodes are counted exactly: env i < episodes runs episode i first; each finished episode hands the
next episode number to the env that finished it (in env order within a step) until `episodes` have
started, after which envs that finish stop counting. The rollout is deterministic for a given
checkpoint, seed and num_envs, so two runs give identical metrics (the wall time aside).

Writes under `out/` (default `runs/eval/<checkpoint name>_<task>`):
  metrics.json                          success rate, Wilson 95% interval, lengths, time to success,
                                        stage reach rates, per-episode rows, config (atomically)
  episode_<k>_{success|failure}.mp4     with --video: the first `video_episodes` episodes (or those
                                        in `video_ids`), with stage and success overlaid

`run(cfg, recorder=...)` also hands every counted step to a `RolloutRecorder` (the eval suite records
its episodes into a dataset that way, `robolearn.eval.suite`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robolearn.errors import ConfigError, RobolearnError
from robolearn.sim.config import RandomizationConfig

TRAIN_RECORDS = ("train_config.json", "dataset.json")  # files of a run dir that name its dataset


@dataclass
class EvalConfig:
    """What `robolearn eval` evaluates."""

    policy: str = ""
    """policy checkpoint directory (e.g. runs/bc/lift_mlp/checkpoints/last)"""
    task: str = ""
    """task to evaluate on; empty: the task the policy's dataset was recorded on (from its run dir)"""
    episodes: int = 100
    """episodes to evaluate (exactly this many are counted)"""
    num_envs: int = 0
    """environments stepped together; 0: min(episodes, 50) (never more than episodes)"""
    num_threads: int = 1
    """physics threads"""
    seed: int = 1000
    """base seed of the envs (held out from the collect seeds 0, 1, ...)"""
    max_episode_steps: int = 0
    """time limit in control steps; 0: the dataset's, else the task's default"""
    device: str = "auto"
    """policy device: auto (cuda when present), cpu, cuda, cuda:N"""
    temporal_ensemble: float = -1.0
    """ACT temporal ensembling coefficient; < 0: the policy's own setting, 0: off"""
    prefetch: int = 0
    """> 0: plan each chunk this many ticks ahead on a worker thread, as a control loop with
    `prefetch` does (what it costs in success); needs num_envs=1. 0: off"""
    video: bool = False
    """write mp4s of the first `video_episodes` episodes"""
    video_episodes: int = 4
    """episodes filmed with video=true (one mp4 each)"""
    video_ids: list[int] = field(default_factory=list)
    """episode numbers filmed with video=true (e.g. sampled successes and failures); empty: the first
    `video_episodes`"""
    camera: str = "front"
    """camera of the videos (rendered apart from the policy's cameras)"""
    video_size: tuple[int, int] = (240, 320)
    """(height, width) of the videos, pixels"""
    randomization: RandomizationConfig | None = None
    """domain randomization of the eval envs, replacing the recorded env's; null: the recorded env's
    (off for `robolearn collect` data), e.g. randomization.physics.mass_scale=[0.8,1.2]"""
    out: str = ""
    """output directory; empty: runs/eval/<checkpoint name>_<task>"""
    progress: bool = True
    """show a progress bar over episodes"""

    def validate(self) -> None:
        if not self.policy:
            raise ConfigError("eval: name the policy checkpoint, e.g. --policy runs/bc/lift_mlp/checkpoints/last")
        if self.episodes < 1:
            raise ConfigError(f"eval: episodes={self.episodes} must be at least 1")
        for name in ("num_envs", "max_episode_steps", "video_episodes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval: {name}={getattr(self, name)} must be >= 0")
        if self.num_threads < 1:
            raise ConfigError(f"eval: num_threads={self.num_threads} must be at least 1")
        if self.prefetch < 0:
            raise ConfigError(f"eval: prefetch={self.prefetch} must be >= 0 (0: off)")
        if self.prefetch and self.num_envs != 1:
            raise ConfigError(f"eval: prefetch={self.prefetch} runs the policy as one control loop does: add "
                              f"num_envs=1 (got num_envs={self.num_envs})")
        if len(self.video_size) != 2 or min(self.video_size) < 8:
            raise ConfigError(f"eval: video_size={self.video_size} must be (height, width), at least 8 pixels each")
        bad = [k for k in self.video_ids if not 0 <= k < self.episodes]
        if bad:
            raise ConfigError(f"eval: video_ids {bad} are not episode numbers 0..{self.episodes - 1}")
        if self.randomization is not None:
            from robolearn.sim.randomization import validate

            validate(self.randomization)


# ---- which env -------------------------------------------------------------------------------


def recorded_env(policy_dir: str | Path) -> tuple[dict | None, str]:
    """The env config the policy's training dataset was recorded with, and where it came from.

    First the env config saved in the checkpoint's own config.json ("metadata", written by
    `robolearn train bc`); else `train_config.json` (or `dataset.json`) with a "dataset" key in the checkpoint dir, its
    parent and its run dir (`<run>/checkpoints/<name>`), then reads `<dataset>/meta/robolearn.json`.
    Returns (None, why) when there is none; a record naming a dataset that is gone is a reason too."""
    from robolearn.data.format import read_json
    from robolearn.policies.base import resolve_checkpoint

    ckpt = Path(policy_dir)
    config = resolve_checkpoint(ckpt) / "config.json"  # a run dir means its checkpoints/last
    if config.is_file():  # a checkpoint written by `robolearn train bc` carries its env config
        env = (read_json(config, "").get("metadata") or {}).get("env")
        if isinstance(env, dict) and env.get("task"):
            return env, f"{config} (metadata)"
    why = f"no {' or '.join(TRAIN_RECORDS)} naming a dataset next to {ckpt}"
    for d in (ckpt, ckpt.parent, ckpt.parent.parent):
        for name in TRAIN_RECORDS:
            record = d / name
            if not record.is_file():
                continue
            raw = read_json(record, "")
            dataset = raw.get("dataset") if isinstance(raw, dict) else None
            if not isinstance(dataset, str) or not dataset:
                continue
            root = Path(dataset)
            if not root.is_absolute() and not root.exists():
                root = d / dataset  # relative to the run dir that names it
            meta = root / "meta" / "robolearn.json"
            if not meta.is_file():
                why = (f"{record} names dataset {dataset!r}, which has no meta/robolearn.json (not recorded in sim, "
                       "or gone)")
                continue
            env = read_json(meta, "").get("env")
            if isinstance(env, dict) and env.get("task"):
                return env, str(meta)
            why = f"{meta} has no env config"
    return None, why


def policy_env_overrides(features: dict) -> dict[str, Any]:
    """EnvConfig fields that make the env produce what a policy with these features reads:
    cameras (observation.images.<cam>, shape (H, W, 3) -> image_size), depth, point cloud."""
    image_cams = [k.removeprefix("observation.images.") for k in features if k.startswith("observation.images.")]
    depth_cams = [k.removeprefix("observation.depth.") for k in features if k.startswith("observation.depth.")]
    cams = list(dict.fromkeys(image_cams + depth_cams))
    sizes = {tuple(features[f"observation.images.{c}"].shape[:2]) for c in image_cams}
    sizes |= {tuple(features[f"observation.depth.{c}"].shape[:2]) for c in depth_cams}
    if len(sizes) > 1:
        raise ConfigError(f"the policy reads cameras at several sizes {sorted(sizes)}; the env renders every camera "
                          "at one image_size")
    out: dict[str, Any] = {"cameras": cams, "depth": bool(depth_cams), "pointcloud": {"enabled": False}}
    if sizes:
        out["image_size"] = sizes.pop()
    if "observation.pointcloud" in features:
        out["pointcloud"] = {"enabled": True, "num_points": int(features["observation.pointcloud"].shape[0])}
    return out


def _env_settings(cfg: EvalConfig, features: dict) -> tuple[str, dict[str, Any], str]:
    """(task, make_env overrides, where the env settings came from)."""
    from robolearn.sim.config import EnvConfig

    env, source = recorded_env(cfg.policy)
    note = ""
    if env is not None and cfg.task and cfg.task != env["task"]:
        env, note = None, f" (the policy's dataset was recorded on {env['task']!r})"
    if env is None and not cfg.task:
        raise ConfigError(f"eval: name the task (--task NAME): {source}, so the task the policy was trained on "
                          "is unknown")
    task = cfg.task or env["task"]
    known = set(EnvConfig.__dataclass_fields__)
    base = {k: v for k, v in (env or {}).items() if k in known and k != "task"}
    need = policy_env_overrides(features)
    if need["pointcloud"]["enabled"]:
        need["pointcloud"] = {**base.get("pointcloud", {}), **need["pointcloud"]}
    if cfg.randomization is not None:
        from robolearn.config import config_to_dict

        need["randomization"] = config_to_dict(cfg.randomization)
    overrides = {
        **base, **need,
        "num_envs": min(cfg.num_envs or 50, cfg.episodes), "num_threads": cfg.num_threads, "seed": cfg.seed,
        "terminate_on_success": True,
        "max_episode_steps": cfg.max_episode_steps or base.get("max_episode_steps", 0),
    }
    if env is not None:
        return task, overrides, f"recorded env of the policy's dataset ({source})"
    return task, overrides, f"defaults of task {task!r}{note}"


def _check_fit(policy, env) -> None:
    """Refuse an env whose observations or actions do not fit the policy, naming the key."""
    space = env.single_observation_space.spaces
    for k in policy.config.obs_keys:
        if k not in space:
            raise ConfigError(f"the policy reads {k!r}, which this env does not produce ({', '.join(space)})")
        ft = policy.features[k]
        if tuple(space[k].shape) != tuple(ft.shape):
            raise ConfigError(f"the policy reads {k!r} of shape {tuple(ft.shape)}; this env gives "
                              f"{tuple(space[k].shape)} (was it trained on another task or robot?)")
    d = env.single_action_space.shape[0]
    if policy.action_dim != d:
        raise ConfigError(f"the policy outputs {policy.action_dim}-dim actions; this env takes {d} "
                          f"(action_mode={env.cfg.action_mode!r})")


def default_out(policy_dir: str | Path, task: str) -> Path:
    ckpt = Path(policy_dir)
    name = ckpt.name if ckpt.parent.name != "checkpoints" else f"{ckpt.parent.parent.name}_{ckpt.name}"
    return Path("runs/eval") / f"{name}_{task.replace('/', '_')}"


# ---- videos ----------------------------------------------------------------------------------


class _Films:
    """Frames of the episodes being filmed, rendered by a separate CameraRenderer at video size (the
    policy's cameras keep theirs); one mp4 per episode, written as it ends."""

    def __init__(self, env, cfg: EvalConfig, out: Path, task: str, stages: list[str]):
        from robolearn.sim.render import CameraRenderer

        self.env, self.out, self.task, self.stages = env, out, task, stages
        self.filmed = set(cfg.video_ids) if cfg.video_ids else set(range(cfg.video_episodes))
        self.renderer = CameraRenderer(env.nominal, [cfg.camera], *cfg.video_size, depth=False)
        self.frames: dict[int, list[np.ndarray]] = {}  # env -> frames of its filmed episode
        self.episode: dict[int, int] = {}
        self._scratch: dict[int, Any] = {}  # id(model) -> MjData to pose a finished episode's last state

    def start(self, i: int, episode: int, stage: int) -> None:
        if episode in self.filmed:
            self.frames[i], self.episode[i] = [], episode
            self.add(i, stage, False)

    def add(self, i: int, stage: int, success: bool, physics_state: np.ndarray | None = None) -> None:
        """Film env i now, or posed at `physics_state` (an episode that ended this step: the env has
        already reset into the next one)."""
        if i not in self.frames:
            return
        import mujoco

        m, d = self.env.models[i], self.env.datas[i]
        if physics_state is not None:
            d = self._scratch.setdefault(id(m), mujoco.MjData(m))
            mujoco.mj_setState(m, d, physics_state, mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(m, d)
        from robolearn.video import overlay_text

        img = self.renderer.render(m, d, 0)[0]
        lines = [f"{self.task} episode {self.episode[i]}", f"stage: {self.stages[stage]}", "SUCCESS" if success else ""]
        self.frames[i].append(overlay_text(img, lines, success))

    def finish(self, i: int, success: bool) -> Path | None:
        from robolearn.video import write_mp4

        frames = self.frames.pop(i, None)
        if frames is None:
            return None
        k = self.episode.pop(i)
        name = f"episode_{k}_{'success' if success else 'failure'}.mp4"
        return write_mp4(self.out / name, frames, fps=self.env.cfg.control_hz)

    def close(self) -> None:
        self.renderer.close()


# ---- the rollout -----------------------------------------------------------------------------


class RolloutRecorder(Protocol):
    """What `_rollout` hands a recorder (N envs; `episode[i]`: the episode number env i runs, -1 when it
    no longer counts). Frame t of an episode is the observation an action was taken on, the action,
    and what the step returned (as `robolearn collect` records)."""

    def begin(self, env, obs: dict[str, np.ndarray]) -> None:
        """After the first reset: obs[key] (N, *shape) are the first episodes' first observations."""

    def step(self, episode: np.ndarray, action: np.ndarray, obs: dict[str, np.ndarray], reward: np.ndarray,
             done: np.ndarray, info: dict, stage_before: np.ndarray) -> None:
        """After every step: action (N, D_a) taken in states of stage `stage_before` (N,); obs, the next
        observations (of the next episode where done, the env having auto-reset); reward, done (N,)."""

    def end(self, i: int, row: dict) -> None:
        """Env i's counted episode ended this step; row: its per-episode metrics row."""


def _stage_names(env) -> list[str]:
    task = getattr(env, "task", None)
    return list(getattr(task, "stages", None) or ["task"])  # robosuite envs have one stage


def _new_stages(env, info: dict) -> np.ndarray:
    """Stage of every env's current state (after auto-resets, `info["stage"]` judged the old episode)."""
    task = getattr(env, "task", None)
    if task is not None and getattr(env, "state", None) is not None:
        return np.asarray(task.evaluate(env.state).stage).copy()
    return np.zeros(env.num_envs, np.int64)


def _rollout(env, engine, cfg: EvalConfig, task: str, out: Path,
             recorder: RolloutRecorder | None = None) -> tuple[list[dict], list[str]]:
    """Run until `cfg.episodes` episodes have finished; per-episode rows (by episode number) and videos."""
    from tqdm import tqdm

    n, todo = env.num_envs, cfg.episodes
    stages = _stage_names(env)
    obs, info = env.reset(seed=cfg.seed)
    engine.reset()
    episode = np.where(np.arange(n) < todo, np.arange(n), -1)  # episode number each env runs (-1: not counted)
    next_episode = int((episode >= 0).sum())
    t = np.zeros(n, np.int64)
    first_success = np.full(n, -1, np.int64)
    stage = np.asarray(info["stage"]).copy()  # stage of each env's current state
    max_stage = stage.copy()
    rows: list[dict | None] = [None] * todo
    videos: list[str] = []
    films = _Films(env, cfg, out, task, stages) if cfg.video and (cfg.video_episodes or cfg.video_ids) else None
    if films is not None:
        for i in range(n):
            films.start(i, int(episode[i]), int(stage[i]))
    if recorder is not None:
        recorder.begin(env, obs)
    finished = successes = 0
    bar = tqdm(total=todo, desc=f"eval {task}", unit="ep", disable=not cfg.progress)
    try:
        while finished < todo:
            action, stage_before = engine.act(obs), stage
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated | truncated
            t += 1
            success, stage = np.asarray(info["success"]), np.asarray(info["stage"]).copy()
            if recorder is not None:
                recorder.step(episode, action, obs, reward, done, info, stage_before)
            newly = success & (first_success < 0)
            first_success[newly] = t[newly]
            max_stage = np.maximum(max_stage, stage)
            if films is not None:
                for i in list(films.frames):
                    final = env.final_physics_states.get(i) if done[i] else None
                    films.add(i, int(stage[i]), bool(first_success[i] >= 0), final)
            if not done.any():
                continue
            ids = np.flatnonzero(done)
            for i in ids:  # env order: which env gets the next episode number is deterministic
                k = int(episode[i])
                if k < 0:
                    continue
                ok = bool(first_success[i] >= 0)
                rows[k] = {
                    "episode": k, "env": int(i), "success": ok, "length": int(t[i]),
                    "steps_to_success": int(first_success[i]) if ok else None,
                    "max_stage": int(max_stage[i]), "max_stage_name": stages[int(max_stage[i])],
                }
                if films is not None and (path := films.finish(int(i), ok)) is not None:
                    rows[k]["video"] = str(path)
                    videos.append(str(path))
                if recorder is not None:
                    recorder.end(int(i), rows[k])
                finished += 1
                successes += ok
                bar.set_postfix(success=f"{successes}/{finished}", refresh=False)
                bar.update(1)
                if next_episode < todo:
                    episode[i], next_episode = next_episode, next_episode + 1
                else:
                    episode[i] = -1
            # the obs of envs in `ids` is already their next episode's first one (same-step auto-reset)
            engine.reset(ids)
            t[ids], first_success[ids] = 0, -1
            stage_now = _new_stages(env, info)
            max_stage[ids] = stage[ids] = stage_now[ids]
            if films is not None:
                for i in ids:
                    films.start(int(i), int(episode[i]), int(stage_now[i]))
    finally:
        bar.close()
        if films is not None:
            films.close()
    return [r for r in rows if r is not None], videos


# ---- the verb --------------------------------------------------------------------------------


def run(cfg: EvalConfig, recorder: RolloutRecorder | None = None) -> dict:
    """Evaluate `cfg.policy` over `cfg.episodes` seeded episodes; writes metrics.json (and videos) under
    the output dir and returns the same dict as metrics.json. `recorder` also receives every counted
    step (native tasks only)."""
    import torch

    from robolearn.config import config_to_dict
    from robolearn.data.format import atomic_write_json, to_jsonable
    from robolearn.inference.engine import InferenceEngine
    from robolearn.policies import load_policy
    from robolearn.policies.base import read_checkpoint
    from robolearn.sim.registry import ROBOSUITE_PREFIX, get_task_class, make_env
    from robolearn.sim.vec_env import VecEnv
    from robolearn.stats import wilson_interval

    cfg.validate()
    raw, features, _ = read_checkpoint(cfg.policy)  # a missing or broken checkpoint fails before any work
    task, overrides, env_source = _env_settings(cfg, features)
    if not task.startswith(ROBOSUITE_PREFIX):
        get_task_class(task)  # an unknown task fails here, with a did-you-mean
    out = Path(cfg.out) if cfg.out else default_out(cfg.policy, task)
    policy = load_policy(cfg.policy)
    env = make_env(task, **overrides)
    try:
        if (cfg.video or recorder is not None) and not isinstance(env, VecEnv):
            what = "video=true" if cfg.video else "recording episodes"
            raise ConfigError(f"eval: {what} needs a native task; {task!r} is a robosuite env")
        _check_fit(policy, env)
        engine = InferenceEngine(policy, env.num_envs, device=cfg.device, prefetch=cfg.prefetch,
                                 temporal_ensemble=None if cfg.temporal_ensemble < 0 else cfg.temporal_ensemble)
        torch.manual_seed(cfg.seed)  # policies that sample (diffusion) draw the same noise every run
        t0 = time.perf_counter()
        rows, videos = _rollout(env, engine, cfg, task, out, recorder)
        wall = time.perf_counter() - t0
        engine.close()
        env_cfg, stages = config_to_dict(env.cfg), _stage_names(env)
        max_steps, hz = int(env.max_episode_steps), float(env.cfg.control_hz)
    finally:
        env.close()

    n = len(rows)
    if n != cfg.episodes:  # the loop above counts exactly; this would be a bug, not bad input
        raise RobolearnError(f"eval counted {n} episodes instead of {cfg.episodes}")
    k = sum(r["success"] for r in rows)
    lo, hi = wilson_interval(k, n)
    to_success = [r["steps_to_success"] for r in rows if r["success"]]
    reached = np.array([r["max_stage"] for r in rows])
    metrics_path = out / "metrics.json"
    result = {
        "task": task,
        "policy": str(cfg.policy),
        "policy_type": raw["type"],
        "episodes": n,
        "successes": k,
        "success_rate": k / n,
        "ci95": [lo, hi],
        "mean_episode_length": float(np.mean([r["length"] for r in rows])),
        "mean_steps_to_success": float(np.mean(to_success)) if to_success else None,
        "mean_time_to_success_s": float(np.mean(to_success)) / hz if to_success else None,
        "stage_reach_rates": {name: float((reached >= s).mean()) for s, name in enumerate(stages)},
        "seed": cfg.seed,
        "num_envs": env_cfg["num_envs"],
        "max_episode_steps": max_steps,
        "control_hz": hz,
        "wall_s": wall,
        "env_source": env_source,
        "env": env_cfg,
        "config": config_to_dict(cfg),
        "out": str(out),
        "metrics": str(metrics_path),
        "videos": videos,
        "per_episode": rows,
    }
    result = to_jsonable(result)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(metrics_path, result)
    return result


def format_result(r: dict) -> str:
    """A short table of an eval result (what `robolearn eval` prints)."""
    lo, hi = r["ci95"]
    t = r["mean_time_to_success_s"]
    reach = ", ".join(f"{name} {rate:.0%}" for name, rate in r["stage_reach_rates"].items())
    rows = [
        ("task", r["task"]),
        ("policy", f"{r['policy']} ({r['policy_type']})"),
        ("episodes", f"{r['episodes']} (seed {r['seed']}, {r['num_envs']} envs, limit {r['max_episode_steps']} steps)"),
        ("success rate", f"{r['success_rate']:.1%} ({r['successes']}/{r['episodes']}), 95% CI {lo:.1%}-{hi:.1%}"),
        ("mean length", f"{r['mean_episode_length']:.1f} steps"),
        ("time to success", "-" if t is None else f"{t:.2f} s ({r['mean_steps_to_success']:.1f} steps)"),
        ("stages reached", reach),
        ("metrics", r["metrics"]),
    ]
    rows += [("video", v) for v in r["videos"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
