"""`robolearn eval-suite`: several policies x tasks x seeds x randomization settings, one report.

    robolearn eval-suite --policies [runs/bc/lift_mlp,runs/bc/lift_diffusion] --settings [nominal,heavy] \\
        --episodes 50 --out runs/eval/suite_lift

Each cell (policy, task, setting, seed) is one `robolearn.eval.sim.run` (the unit: exact episode
count, deterministic for a checkpoint, seed and num_envs), so a cell's numbers are those `robolearn
eval` prints for the same arguments. A setting is a `RandomizationConfig` built from the defaults
(everything off) plus the setting's overrides; it replaces whatever randomization the policy's
dataset was recorded with, so `nominal` ({}) is the unrandomized task.

With `videos=k`, k successes and k failures of each cell are drawn (seeded by the cell) once its
outcomes are known and filmed by re-running the cell with `video_ids` (the rollout is deterministic,
so the re-run repeats the same episodes; a difference is reported as a warning). Filming afterwards
costs one more rollout per cell, where filming every episode to keep 2k would render ~10x more.

With `record=true` every evaluated episode is also written into one LeRobot-layout dataset
(`out/episodes`; one per task under `out/episodes/<task>` when the suite spans several tasks, whose
observations differ): observation.state, observation.environment_state, one camera
(`record_camera` at `record_image_size`), the policy's action, reward, done, success, the stage
annotation of the task's own stage ids (source "sim") and `info` = {policy, seed, setting, task,
episode, ...}, which the judge groups by.

Writes under `out/`:
  metrics.json            config, every cell (its metrics and per-episode rows) and the per-policy
                          aggregates over seeds (atomically)
  results.md              the aggregate and per-cell tables
  success.png             success rate per policy and setting with Wilson 95% intervals
  stages.png              stage reach rates per policy and setting
  report.html             all of it in one self-contained page (plots and videos embedded)
  cells/<policy>/<task>/<setting>/seed_<s>/   each cell's metrics.json (and videos/)
  episodes/               with record=true: the recorded dataset
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from robolearn.errors import ConfigError, RobolearnError, did_you_mean

if TYPE_CHECKING:
    from robolearn.sim.config import RandomizationConfig

PRESETS: dict[str, dict[str, Any]] = {
    # named randomization settings (overrides of RandomizationConfig); the ranges of `heavy` are the
    # README's examples of each knob
    "nominal": {},
    "physics": {"physics": {"friction_scale": [0.7, 1.3], "mass_scale": [0.8, 1.2],
                            "joint_damping_scale": [0.8, 1.25], "actuator_gain_scale": [0.9, 1.1]}},
    "visual": {"visual": {"light_intensity_scale": [0.7, 1.2], "light_position_jitter": 0.1,
                          "object_color_jitter": 0.1, "camera_position_jitter": 0.01,
                          "camera_rotation_jitter": 0.02}},
    "heavy": {"physics": {"friction_scale": [0.5, 1.5], "mass_scale": [0.8, 1.2], "joint_damping_scale": [0.5, 2.0],
                          "actuator_gain_scale": [0.8, 1.2], "action_latency_steps": [0, 2],
                          "observation_noise_std": 0.01},
              "visual": {"light_intensity_scale": [0.6, 1.2], "light_position_jitter": 0.2,
                         "object_color_jitter": 0.2, "camera_position_jitter": 0.02, "camera_rotation_jitter": 0.05}},
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # names that become directory names


@dataclass
class SuiteConfig:
    """What `robolearn eval-suite` evaluates."""

    policies: list[str] = field(default_factory=list)
    """policy checkpoint or run directories (e.g. [runs/bc/lift_mlp, runs/bc/lift_diffusion])"""
    names: list[str] = field(default_factory=list)
    """a name per policy; empty: each policy's run directory name"""
    tasks: list[str] = field(default_factory=list)
    """tasks every policy is evaluated on; empty: each policy's own (the task its dataset was recorded on)"""
    seeds: list[int] = field(default_factory=lambda: [1000, 2000])
    """eval seeds; each is a cell of its own (held out from the collect seeds 0, 1, ...)"""
    settings: list[str] = field(default_factory=lambda: ["nominal"])
    """randomization settings to evaluate under: built-in nominal (off), physics, visual, heavy, or a name
    defined under `randomization`"""
    randomization: dict[str, dict[str, Any]] = field(default_factory=dict)
    """more named settings: name -> RandomizationConfig overrides, e.g. {heavy_mass: {physics: {mass_scale:
    [0.7, 1.3]}}}; evaluated after `settings`"""
    episodes: int = 50
    """episodes per cell (policy, task, setting, seed)"""
    videos: int = 2
    """per cell, film this many sampled successes and as many sampled failures (0: no videos)"""
    video_camera: str = "front"
    """camera of the videos"""
    video_size: tuple[int, int] = (240, 320)
    """(height, width) of the videos, pixels"""
    record: bool = False
    """also write every evaluated episode into a LeRobot-layout dataset under out/episodes"""
    record_camera: str = "front"
    """camera recorded as observation.images.<camera> with record=true"""
    record_image_size: tuple[int, int] = (84, 84)
    """(height, width) of the recorded camera, pixels (even numbers)"""
    fsync: bool = True
    """record=true: flush every committed file of the dataset to disk (survives power loss)"""
    max_episode_steps: int = 0
    """time limit in control steps; 0: each policy's dataset's, else the task's default"""
    num_envs: int = 0
    """environments stepped together per cell; 0: min(episodes, 50)"""
    num_threads: int = 1
    """physics threads"""
    device: str = "auto"
    """policy device: auto (cuda when present), cpu, cuda, cuda:N"""
    out: str = "runs/eval/suite"
    """output directory"""
    progress: bool = True
    """show a progress bar over cells"""

    def validate(self) -> None:
        if not self.policies:
            raise ConfigError("eval suite: name at least one policy, e.g. policies=[runs/bc/lift_mlp]")
        if self.names and len(self.names) != len(self.policies):
            raise ConfigError(f"eval suite: {len(self.names)} names for {len(self.policies)} policies; give one name "
                              "per policy or none (each policy's run directory name)")
        if self.episodes < 1:
            raise ConfigError(f"eval suite: episodes={self.episodes} must be at least 1 (episodes per policy, task, "
                              "seed and setting), e.g. episodes=50")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"eval suite: seeds={self.seeds} must be a non-empty list without repeats, "
                              "e.g. seeds=[1000,2000]")
        for name in ("videos", "max_episode_steps", "num_envs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval suite: {name}={getattr(self, name)} must be >= 0")
        if self.num_threads < 1:
            raise ConfigError(f"eval suite: num_threads={self.num_threads} must be at least 1")
        if len(self.video_size) != 2 or min(self.video_size) < 8:
            raise ConfigError(f"eval suite: video_size={self.video_size} must be (height, width), at least 8 each")
        h, w = self.record_image_size
        if min(h, w) < 8 or h % 2 or w % 2:
            raise ConfigError(f"eval suite: record_image_size={self.record_image_size} must be (height, width), "
                              "even numbers of at least 8 pixels (the dataset stores it as yuv420p video)")
        self.randomization_configs()

    def randomization_configs(self) -> dict[str, RandomizationConfig]:
        """Setting name -> RandomizationConfig, in evaluation order; raises ConfigError naming a bad one."""
        from robolearn.config import config_from_dict
        from robolearn.sim.config import RandomizationConfig
        from robolearn.sim.randomization import validate

        unknown = [s for s in self.settings if s not in PRESETS and s not in self.randomization]
        if unknown:
            raise ConfigError(f"eval suite: unknown setting {unknown[0]!r}; built-in settings: {', '.join(PRESETS)} "
                              "(define your own under randomization.<name>)."
                              + did_you_mean(unknown[0], [*PRESETS, *self.randomization]))
        twice = [s for s in self.settings if self.settings.count(s) > 1]
        if twice:
            raise ConfigError(f"eval suite: setting {twice[0]!r} is listed twice in settings; list it once")
        # settings may name a setting of its own (randomization.<name> replaces a built-in of that name);
        # those only defined under randomization follow
        named = {s: self.randomization.get(s, PRESETS.get(s)) for s in self.settings}
        named |= {k: v for k, v in self.randomization.items() if k not in named}
        if not named:
            raise ConfigError("eval suite: no settings to evaluate under; set settings=[nominal] or define "
                              "randomization.<name>")
        out = {}
        for name, overrides in named.items():
            if not _NAME.match(name):
                raise ConfigError(f"eval suite: setting name {name!r} must be letters, digits, '.', '_' or '-' "
                                  "(it names a directory)")
            if not isinstance(overrides, dict):
                raise ConfigError(f"eval suite: randomization.{name} must be a mapping of RandomizationConfig keys, "
                                  f"e.g. {{physics: {{mass_scale: [0.8, 1.2]}}}}; got {overrides!r}")
            try:
                rc = config_from_dict(RandomizationConfig, overrides)
                validate(rc)
            except ConfigError as e:
                raise ConfigError(f"eval suite: randomization setting {name!r}: {e}") from None
            out[name] = rc
        return out


@dataclass(frozen=True)
class Cell:
    """One evaluation: a policy on a task under a randomization setting with one seed."""

    policy: str
    policy_dir: str
    task: str
    setting: str
    seed: int

    @property
    def path(self) -> Path:
        return Path("cells") / self.policy / self.task.replace("/", "_") / self.setting / f"seed_{self.seed}"


# ---- planning: everything checked before any episode runs ------------------------------------


def run_name(policy_dir: str | Path) -> str:
    """The run directory's name of a checkpoint (`<run>/checkpoints/<name>`) or run directory."""
    p = Path(os.path.abspath(policy_dir))  # not resolve(): checkpoints/last is a link to step_N
    if p.parent.name == "checkpoints":
        return p.parent.parent.name
    return p.name


def plan(cfg: SuiteConfig) -> list[Cell]:
    """The cells of the suite in evaluation order, after checking every policy and task."""
    from robolearn.eval.sim import recorded_env
    from robolearn.policies.base import read_checkpoint
    from robolearn.sim.registry import ROBOSUITE_PREFIX, get_task_class

    cfg.validate()
    names = list(cfg.names) or [run_name(p) for p in cfg.policies]
    for name, p in zip(names, cfg.policies):
        if not Path(p).exists():
            raise ConfigError(f"eval suite: policy {p!r} does not exist; list checkpoint or run directories written "
                              "by `robolearn train bc`, e.g. policies=[runs/bc/lift_mlp]")
        try:
            kind = read_checkpoint(p)[0].get("kind", "policy")
        except RobolearnError as e:
            raise ConfigError(f"eval suite: policy {p!r} is not a policy checkpoint ({e}); list checkpoint or run "
                              "directories written by `robolearn train bc`") from None
        if kind != "policy":
            raise ConfigError(f"eval suite: {p!r} is a {kind.replace('_', ' ')} checkpoint, not a policy; list "
                              "checkpoint or run directories written by `robolearn train bc`")
        if not _NAME.match(name):
            raise ConfigError(f"eval suite: policy name {name!r} must be letters, digits, '.', '_' or '-' (it names "
                              "a directory); set names=[...]")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"eval suite: two policies are named {dup!r} (their run directories share the name); "
                          "give each a name with names=[...]")
    for task in cfg.tasks:
        if not task.startswith(ROBOSUITE_PREFIX):
            get_task_class(task)  # an unknown task fails here, with a did-you-mean
    settings = list(cfg.randomization_configs())
    cells = []
    for name, p in zip(names, cfg.policies):
        tasks = list(cfg.tasks)
        if not tasks:
            env, why = recorded_env(p)
            if env is None:
                raise ConfigError(f"eval suite: the task of policy {name!r} is unknown ({why}); name the tasks, "
                                  "e.g. tasks=[lift]")
            tasks = [env["task"]]
        cells += [Cell(name, str(p), t, s, seed) for t in tasks for s in settings for seed in cfg.seeds]
    robosuite = sorted({c.task for c in cells if c.task.startswith(ROBOSUITE_PREFIX)})
    if robosuite and (cfg.record or cfg.videos):
        raise ConfigError(f"eval suite: {robosuite[0]!r} is a robosuite env, which cannot be filmed or recorded; set "
                          "videos=0 and record=false, or evaluate native tasks")
    return cells


# ---- recording episodes into a dataset ---------------------------------------------------------


class _Recording:
    """The suite's dataset(s): one per task, created at the first env of that task, checked at the others."""

    def __init__(self, cfg: SuiteConfig, out: Path, tasks: list[str], meta: dict):
        self.cfg, self.meta = cfg, meta
        self.roots = {t: out / "episodes" if len(tasks) == 1 else out / "episodes" / t.replace("/", "_")
                      for t in tasks}
        self.writers: dict[str, Any] = {}
        self.renderers: dict[str, Any] = {}
        for root in self.roots.values():
            if root.exists() and any(root.iterdir()):
                raise ConfigError(f"eval suite: {root} already holds recorded episodes; choose another out or "
                                  "delete it (a suite records into a new dataset)")

    def features(self, env) -> dict:
        from robolearn.data.collect import dataset_features
        from robolearn.data.format import Feature

        feats = {k: f for k, f in dataset_features(env).items() if not k.startswith("observation.images.")}
        feats[f"observation.images.{self.cfg.record_camera}"] = Feature("video", (*self.cfg.record_image_size, 3))
        return feats

    def writer(self, env, cell: Cell):
        from robolearn.config import config_to_dict
        from robolearn.data.writer import DatasetWriter
        from robolearn.sim.config import RandomizationConfig

        feats = self.features(env)
        w = self.writers.get(cell.task)
        if w is None:
            hz = env.cfg.control_hz
            if abs(hz - round(hz)) > 1e-9:
                raise ConfigError(f"eval suite: record=true needs a whole control_hz for a LeRobot dataset, not {hz}")
            env_cfg = config_to_dict(env.cfg)  # what the recorded frames are: one camera, nominal
            env_cfg.update(cameras=[self.cfg.record_camera], image_size=list(self.cfg.record_image_size), depth=False,
                           pointcloud={**env_cfg["pointcloud"], "enabled": False},
                           randomization=config_to_dict(RandomizationConfig()))
            w = DatasetWriter.create(self.roots[cell.task], feats, fps=round(hz), robot_type=env.robot.name,
                                     fsync=self.cfg.fsync,
                                     extra_meta={"source": "robolearn eval suite", "env": env_cfg,
                                                 "stages": list(env.task.stages), "suite": self.meta})
            self.writers[cell.task] = w
            return w
        got = {k: (f.dtype, tuple(f.shape)) for k, f in feats.items()}
        want = {k: (f.dtype, tuple(f.shape)) for k, f in w.features.items()}
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise ConfigError(f"eval suite: policy {cell.policy!r} on {cell.task!r} records {diff} unlike the policies "
                              f"before it in {w.root} (another action mode?); evaluate it in a suite of its own or "
                              "set record=false")
        return w

    def renderer(self, env):
        """A renderer of the recorded camera, shared by the cells whose envs build the same scene (making
        one uploads every mesh and texture: ~1 s, more than a small cell's rollout)."""
        from robolearn.sim.render import CameraRenderer

        c = env.cfg
        key = json.dumps([c.task, c.robot, c.task_options], sort_keys=True, default=str)
        if key not in self.renderers:
            self.renderers[key] = CameraRenderer(env.nominal, [self.cfg.record_camera], *self.cfg.record_image_size,
                                                 depth=False)
        return self.renderers[key]

    def close(self) -> None:
        for r in self.renderers.values():
            r.close()
        for w in self.writers.values():
            w.close()


class _CellRecorder:
    """Buffers each counted episode of one cell (a `RolloutRecorder`) and writes it when it ends."""

    def __init__(self, recording: _Recording, cell: Cell):
        self.recording, self.cell = recording, cell
        self.renderer = None

    def begin(self, env, obs: dict[str, np.ndarray]) -> None:
        self.env, self.writer = env, self.recording.writer(env, self.cell)
        cam, size = self.recording.cfg.record_camera, tuple(self.recording.cfg.record_image_size)
        self.image_key = f"observation.images.{cam}"
        if not (self.image_key in obs and obs[self.image_key].shape[1:3] == size):  # else the policy's own frames
            self.renderer = self.recording.renderer(env)
        n = env.num_envs
        self.buffers = [self._empty() for _ in range(n)]
        self.resets = [dict(env.reset_states[i]) for i in range(n)]
        self.ended: dict[int, tuple[dict, Any]] = {}
        self.current = self._observe(obs, np.ones(n, bool))

    def _empty(self) -> dict[str, list]:
        return {**{k: [] for k in self.writer.features}, "_stage": []}

    def _observe(self, obs: dict[str, np.ndarray], live: np.ndarray) -> dict[str, np.ndarray]:
        """The recorded observations of every env now (the camera rendered only for `live` envs)."""
        cur = {k: np.array(obs[k]) for k in ("observation.state", "observation.environment_state")}
        if self.renderer is None:
            cur[self.image_key] = np.array(obs[self.image_key])
        else:
            h, w = self.recording.cfg.record_image_size
            img = np.zeros((self.env.num_envs, h, w, 3), np.uint8)
            for i in np.flatnonzero(live):
                img[i] = self.renderer.render(self.env.models[i], self.env.datas[i], 0)[0]
            cur[self.image_key] = img
        return cur

    def step(self, episode, action, obs, reward, done, info, stage_before) -> None:
        counted = np.flatnonzero(episode >= 0)
        for i in counted:
            b = self.buffers[i]
            for k, v in self.current.items():
                b[k].append(v[i])
            b["action"].append(np.asarray(action[i], np.float32))
            b["next.reward"].append(np.float32(reward[i]))
            b["next.done"].append(bool(done[i]))
            b["next.success"].append(bool(info["success"][i]))
            b["_stage"].append(int(stage_before[i]))
        for i in np.flatnonzero(done):  # the env has reset into its next episode already
            self.ended[int(i)] = (self.resets[i], self.env.final_physics_states.get(int(i)))
            self.resets[i] = dict(self.env.reset_states[i])
        self.current = self._observe(obs, episode >= 0)

    def end(self, i: int, row: dict) -> None:
        from robolearn.data.format import to_jsonable
        from robolearn.data.stages import StageAnnotation
        from robolearn.data.writer import EpisodeRecord

        b, self.buffers[i] = self.buffers[i], self._empty()
        reset, final = self.ended.pop(i)
        c = self.cell
        frames = {k: np.stack(v) for k, v in b.items() if not k.startswith("_")}
        stages = StageAnnotation.from_stage_ids(np.asarray(b["_stage"]), list(self.env.task.stages), "sim")
        info = {"policy": c.policy, "seed": c.seed, "setting": c.setting, "task": c.task, "policy_dir": c.policy_dir,
                "episode": row["episode"], "env_index": i, "steps": row["length"], "reset": reset,
                "final_physics_state": final}
        self.writer.add_episode(frames, EpisodeRecord(self.env.task.description, stages, bool(row["success"]),
                                                      to_jsonable(info)))


# ---- the suite ---------------------------------------------------------------------------------


def pick_videos(rows: list[dict], k: int, seed: int | list[int]) -> list[int]:
    """Episode numbers of k successes and k failures drawn from `rows` (fewer when there are fewer)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for ok in (True, False):
        ids = [r["episode"] for r in rows if r["success"] == ok]
        if ids:
            chosen += rng.choice(ids, min(k, len(ids)), replace=False).tolist()
    return sorted(int(e) for e in chosen)


def _cell_seed(cell: Cell) -> list[int]:
    return [cell.seed, zlib.crc32(f"{cell.policy}/{cell.task}/{cell.setting}".encode())]


def run(cfg: SuiteConfig) -> dict:
    """Evaluate every cell; writes metrics.json, results.md, success.png, stages.png and report.html under
    `cfg.out` and returns the same dict as metrics.json."""
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.data.format import atomic_write_bytes, atomic_write_json, to_jsonable
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate

    t0 = time.perf_counter()
    cells = plan(cfg)
    settings = cfg.randomization_configs()
    out = Path(cfg.out)
    tasks = list(dict.fromkeys(c.task for c in cells))
    policies = {c.policy: c.policy_dir for c in cells}
    meta = {"policies": policies, "seeds": list(cfg.seeds),
            "settings": {k: config_to_dict(v) for k, v in settings.items()}}
    recording = _Recording(cfg, out, tasks, meta) if cfg.record else None
    results, warnings = [], []
    bar = tqdm(cells, desc="eval suite", unit="cell", disable=not cfg.progress)
    try:
        for cell in bar:
            bar.set_postfix_str(f"{cell.policy} {cell.task} {cell.setting} seed {cell.seed}", refresh=True)
            ecfg = EvalConfig(policy=cell.policy_dir, task=cell.task, episodes=cfg.episodes, num_envs=cfg.num_envs,
                              num_threads=cfg.num_threads, seed=cell.seed, max_episode_steps=cfg.max_episode_steps,
                              device=cfg.device, randomization=settings[cell.setting], out=str(out / cell.path),
                              progress=False)
            r = evaluate(ecfg, _CellRecorder(recording, cell) if recording is not None else None)
            films = []
            if cfg.videos:
                films, note = _film(ecfg, r, cell, cfg, out)
                warnings += note
            results.append(_cell_entry(cell, r, films))
            bar.set_postfix_str(f"{cell.policy} {cell.setting} seed {cell.seed}: {r['successes']}/{r['episodes']}")
    finally:
        bar.close()
        if recording is not None:
            recording.close()
    result = {
        "policies": policies,
        "tasks": tasks,
        "seeds": list(cfg.seeds),
        "settings": meta["settings"],
        "episodes_per_cell": cfg.episodes,
        "aggregates": aggregate(results),
        "cells": results,
        "datasets": {t: os.path.relpath(root, out) for t, root in recording.roots.items()} if recording else {},
        "warnings": warnings,
        "files": {"metrics": "metrics.json", "results": "results.md", "success_plot": "success.png",
                  "stages_plot": "stages.png", "report": "report.html"},
        "config": config_to_dict(cfg),
        "out": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    _plot_success(result, out / "success.png")
    _plot_stages(result, out / "stages.png")
    atomic_write_bytes(out / "results.md", format_markdown(result).encode())
    result["wall_s"] = time.perf_counter() - t0
    result = to_jsonable(result)
    _write_report(result, out)
    atomic_write_json(out / "metrics.json", result)
    return result


def _film(ecfg, r: dict, cell: Cell, cfg: SuiteConfig, out: Path) -> tuple[list[dict], list[str]]:
    """Re-run the cell filming sampled successes and failures; (videos, warnings)."""
    from robolearn.eval.sim import run as evaluate

    ids = pick_videos(r["per_episode"], cfg.videos, _cell_seed(cell))
    if not ids:
        return [], []
    film_dir = out / cell.path / "videos"
    again = evaluate(replace(ecfg, video=True, video_ids=ids, camera=cfg.video_camera,
                             video_size=tuple(cfg.video_size), out=str(film_dir)))
    (film_dir / "metrics.json").unlink(missing_ok=True)  # the cell's own metrics.json is one level up
    films, warnings = [], []
    for k in ids:
        first, filmed = r["per_episode"][k], again["per_episode"][k]
        if (first["success"], first["length"]) != (filmed["success"], filmed["length"]):
            warnings.append(f"{cell.path}: episode {k} was {_outcome(first)} when evaluated and {_outcome(filmed)} "
                            "when filmed; the rollout is not deterministic on this device (its video shows the latter)")
        path = os.path.relpath(filmed["video"], out)
        first["video"] = path
        films.append({"episode": k, "success": bool(filmed["success"]), "length": filmed["length"], "path": path})
    return films, warnings


def _outcome(row: dict) -> str:
    return f"{'a success' if row['success'] else 'a failure'} after {row['length']} steps"


CELL_KEYS = ("policy_type", "episodes", "successes", "success_rate", "ci95", "mean_episode_length",
             "mean_steps_to_success", "mean_time_to_success_s", "stage_reach_rates", "num_envs", "max_episode_steps",
             "control_hz", "env_source", "env", "wall_s", "per_episode")


def _cell_entry(cell: Cell, r: dict, films: list[dict]) -> dict:
    return {"policy": cell.policy, "policy_dir": cell.policy_dir, "task": r["task"], "setting": cell.setting,
            "seed": cell.seed, "dir": str(cell.path), **{k: r[k] for k in CELL_KEYS}, "videos": films}


def aggregate(cells: list[dict]) -> list[dict]:
    """Per (policy, task, setting), pooled over seeds: success with Wilson 95% interval, mean length,
    mean time to success, stage reach rates."""
    from robolearn.stats import wilson_interval

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["policy"], c["task"], c["setting"]), []).append(c)
    out = []
    for (policy, task, setting), cs in groups.items():
        rows = [(row, c["control_hz"]) for c in cs for row in c["per_episode"]]
        n, k = len(rows), sum(row["success"] for row, _ in rows)
        steps = [row["steps_to_success"] for row, _ in rows if row["success"]]
        secs = [row["steps_to_success"] / hz for row, hz in rows if row["success"]]
        reached = np.array([row["max_stage"] for row, _ in rows])
        stages = list(cs[0]["stage_reach_rates"])
        out.append({
            "policy": policy, "task": task, "setting": setting, "seeds": [c["seed"] for c in cs],
            "episodes": n, "successes": k, "success_rate": k / n, "ci95": list(wilson_interval(k, n)),
            "mean_episode_length": float(np.mean([row["length"] for row, _ in rows])),
            "mean_steps_to_success": float(np.mean(steps)) if steps else None,
            "mean_time_to_success_s": float(np.mean(secs)) if secs else None,
            "stage_reach_rates": {name: float((reached >= s).mean()) for s, name in enumerate(stages)},
        })
    return out


# ---- tables, plots, report ---------------------------------------------------------------------


def _rows(entries: list[dict], with_seed: bool) -> tuple[list[str], list[list[str]]]:
    header = ["policy", "task", "setting", *(["seed"] if with_seed else []), "episodes", "success", "95% CI",
              "mean length (steps)", "time to success (s)", "stages reached"]
    rows = []
    for e in entries:
        lo, hi = e["ci95"]
        t = e["mean_time_to_success_s"]
        rows.append([e["policy"], e["task"], e["setting"], *([str(e["seed"])] if with_seed else []),
                     str(e["episodes"]), f"{e['success_rate']:.1%} ({e['successes']}/{e['episodes']})",
                     f"{lo:.1%}-{hi:.1%}", f"{e['mean_episode_length']:.1f}", "-" if t is None else f"{t:.2f}",
                     ", ".join(f"{s} {v:.0%}" for s, v in e["stage_reach_rates"].items())])
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def format_markdown(r: dict) -> str:
    """results.md: the setup, the per-policy table (pooled over seeds) and the per-cell table."""
    settings = "; ".join(f"{k}: {describe_randomization(v)}" for k, v in r["settings"].items())
    parts = [
        "# robolearn eval suite", "",
        f"Policies: {', '.join(f'{k} (`{v}`)' for k, v in r['policies'].items())}. Tasks: {', '.join(r['tasks'])}. "
        f"Seeds: {', '.join(map(str, r['seeds']))}. {r['episodes_per_cell']} episodes per cell.", "",
        f"Settings: {settings}.", "",
        "## Per policy (pooled over seeds)", "", _markdown_table(*_rows(r["aggregates"], False)), "",
        "## Per cell", "", _markdown_table(*_rows(r["cells"], True)), "",
    ]
    return "\n".join(parts)


def format_results(r: dict) -> str:
    """The compact table `robolearn eval-suite` prints: one line per policy, task and setting."""
    header, rows = _rows(r["aggregates"], False)
    header, rows = header[:-1], [row[:-1] for row in rows]  # stages are in results.md and the report
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  " + "  ".join(f"{c:<{w}}" for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(header), *(line(row) for row in rows)]
    out += [f"  warning: {w}" for w in r["warnings"]]
    out.append(f"  report: {Path(r['out']) / r['files']['report']}  (metrics.json, results.md beside it)")
    out += [f"  episodes: {Path(r['out']) / d}" for d in r["datasets"].values()]
    return "\n".join(out)


def show(result: dict, args) -> None:
    """What the CLI prints after the suite ran."""
    print(format_results(result))


def describe_randomization(rc: dict) -> str:
    """The fields of a randomization config dict that differ from the defaults ('off' when none)."""
    from robolearn.config import config_to_dict
    from robolearn.sim.config import RandomizationConfig

    default = config_to_dict(RandomizationConfig())
    changed = [f"{part}.{k}={json.dumps(v)}" for part, fields in rc.items() for k, v in fields.items()
               if default[part][k] != v]
    return ", ".join(changed) or "off"


def _groups(r: dict) -> tuple[list[tuple[str, str]], list[str]]:
    groups = list(dict.fromkeys((a["task"], a["setting"]) for a in r["aggregates"]))
    return groups, list(r["policies"])


def _plot_success(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, policies = _groups(r)
    by = {(a["task"], a["setting"], a["policy"]): a for a in r["aggregates"]}
    width = 0.8 / len(policies)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(groups) * (0.5 + 0.35 * len(policies))), 3.6))
    x = np.arange(len(groups))
    for j, p in enumerate(policies):
        aggs = [by.get((t, s, p)) for t, s in groups]
        rate = np.array([a["success_rate"] if a else np.nan for a in aggs])
        lo = np.array([a["success_rate"] - a["ci95"][0] if a else 0 for a in aggs])
        hi = np.array([a["ci95"][1] - a["success_rate"] if a else 0 for a in aggs])
        ax.bar(x - 0.4 + width * (j + 0.5), rate, width, yerr=[lo, hi], capsize=3, label=p)
    multi_task = len({t for t, _ in groups}) > 1
    ax.set_xticks(x, [f"{t}\n{s}" if multi_task else s for t, s in groups])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title("success rate with Wilson 95% interval (pooled over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_stages(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, policies = _groups(r)
    by = {(a["task"], a["setting"], a["policy"]): a for a in r["aggregates"]}
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.0, 3.2 * len(groups)), 3.2), squeeze=False, sharey=True)
    width = 0.8 / len(policies)
    for ax, (task, setting) in zip(axes[0], groups):
        stages = next(list(a["stage_reach_rates"]) for a in r["aggregates"] if a["task"] == task)
        x = np.arange(len(stages))
        for j, p in enumerate(policies):
            a = by.get((task, setting, p))
            if a is not None:
                ax.bar(x - 0.4 + width * (j + 0.5), [a["stage_reach_rates"][s] for s in stages], width, label=p)
        ax.set_xticks(x, stages, fontsize=8)
        ax.set_title(f"{task} / {setting}", fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("stage reached")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _png_width(png: bytes) -> str:
    """A PNG's own width in pixels (IHDR), so the page shows plots at their size rather than stretched."""
    return str(int.from_bytes(png[16:20], "big"))


def _write_report(r: dict, out: Path) -> Path:
    from robolearn.eval import html

    setup = html.table(["", "value"], [
        ["policies", "; ".join(f"{k}: {v}" for k, v in r["policies"].items())],
        ["tasks", ", ".join(r["tasks"])], ["seeds", ", ".join(map(str, r["seeds"]))],
        ["episodes per cell", str(r["episodes_per_cell"])],
        *[[f"setting {k}", describe_randomization(v)] for k, v in r["settings"].items()],
        *[["recorded episodes", f"{d} ({t})"] for t, d in r["datasets"].items()],
    ])
    body = html.section("Setup", setup)
    if r["warnings"]:
        body += html.section("Warnings", "".join(f"<p class='bad'>{html.escape(w)}</p>" for w in r["warnings"]))
    success, stages = (out / "success.png").read_bytes(), (out / "stages.png").read_bytes()
    body += html.section("Success per policy (pooled over seeds)", html.table(*_rows(r["aggregates"], False))
                         + html.figure(html.img(success, width=_png_width(success)),
                                       "success rate, Wilson 95% interval"))
    body += html.section("Stages reached", html.figure(html.img(stages, width=_png_width(stages)),
                                                       "share of episodes that reached each stage"))
    body += html.section("Per cell", html.table(*_rows(r["cells"], True)))
    films = ""
    for c in r["cells"]:
        for v in c["videos"]:
            what = "success" if v["success"] else "failure"
            films += html.video(out / v["path"], f"{c['policy']} / {c['task']} / {c['setting']} / seed {c['seed']}: "
                                f"episode {v['episode']}, {what} ({v['length']} steps)")
    if films:
        body += html.section("Videos (sampled successes and failures)", films)
    body += "<p class='small'>metrics.json holds every cell's per-episode rows.</p>"
    return html.write_page(out / "report.html", "robolearn eval suite", body)
