"""Reward-code generation: a VLM writes reward programs, a critic vets them, short RL rounds judge them.

    robolearn vlm reward-code --task lift --base runs/bc/lift --vlm.base-url http://127.0.0.1:8000/v1

The loop of Text2Reward (Xie et al. 2024), Eureka (Ma et al. 2024) and Auto MC-Reward (Li et al. 2024):

1. Designer: the task's text (what it is, what is randomized, when it succeeds), a compact table of the
   observation fields a program may read (names, shapes, units, generated from the task's declared
   features: `robolearn.rewards.code.describe_fields`), optionally a rendered scene image, and the
   feedback of earlier rounds -> K candidate programs `compute_reward(obs, action) -> {term: (N,)}`.
2. Critic: each program passes the allow-list check, then runs in the sandbox on recorded episodes
   (a dataset of the task); it must return finite (N,) terms, and its total must rise along the
   successful episodes (median Spearman correlation with time >= `min_progress_corr`) or it is flagged,
   with the term that fails to rise named. Auto MC-Reward's reward critic, done by measurement.
3. Trajectory analyzer: an accepted program drives a short residual-RL round on the frozen base
   (`robolearn train residual --reward code:PATH`), then the result is summarized as text: success
   rate against the base's, stages reached, where failed episodes stopped, and each term's value over
   training (Eureka's "reward reflection").
4. The best program by evaluated success (ties: deeper stages reached) is kept and, with its feedback
   and the critic's complaints about the others, goes into the next round's prompt.

Everything is kept in the run directory: round_<r>/candidate_<k>/ (prompt.txt, answer.md, reward.py,
critic.json, feedback.txt, result.json, rl/), history.jsonl, summary.json and the chosen program as
reward.py, which `robolearn train residual --reward code:<out>/reward.py` takes. A rerun resumes: a
finished candidate is read back and VLM answers come from the cache.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.format import atomic_write_bytes, atomic_write_json, to_jsonable
from robolearn.errors import ConfigError, RobolearnError
from robolearn.rewards.code import ObsField, describe_fields, obs_fields, split_obs
from robolearn.rewards.metrics import spearman
from robolearn.rewards.shaping import ShapingConfig
from robolearn.rewards.vlm.client import VLMConfig

SYSTEM = ("You are a reward engineer for robot reinforcement learning. You write dense, vectorized reward "
          "functions in Python with numpy that make a robot learn a manipulation task quickly.")


@dataclass
class RewardCodeConfig:
    """What `robolearn vlm reward-code` searches for."""

    task: str = ""
    """task the reward is for; empty: the one the base was trained on"""
    base: str = ""
    """BC base policy (checkpoint or run dir) that the short RL rounds fine-tune"""
    dataset: str = ""
    """recorded episodes of the task the critic runs programs on; empty: the base's training dataset"""
    out: str = ""
    """run directory; empty: runs/reward_code/<task>"""
    candidates: int = 4
    """programs asked for per round (K)"""
    rounds: int = 3
    """rounds of design -> critic -> RL -> feedback (R)"""
    image: bool = True
    """show the VLM a rendered image of the scene"""
    camera: str = "front"
    """camera of that image"""
    critic_episodes: int = 16
    """successful recorded episodes the critic runs each program on"""
    min_progress_corr: float = 0.3
    """a program whose total's median Spearman correlation with time along successful episodes is
    below this is flagged (and not trained on)"""
    rl_steps: int = 20_000
    """env steps of each candidate's residual-RL round"""
    rl_envs: int = 16
    """envs of those rounds"""
    eval_episodes: int = 20
    """seeded episodes each candidate (and the base) is evaluated on"""
    scale: float = 0.1
    """residual scale in the RL rounds"""
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    """how the program's value becomes the reward (potential-based by default)"""
    seed: int = 0
    """seed of the RL rounds and evaluations"""
    progress: bool = True
    """show progress bars"""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """the VLM endpoint (--vlm.base-url, --vlm.model)"""

    def validate(self) -> None:
        if not self.base:
            raise ConfigError("vlm reward-code: name the BC base the RL rounds fine-tune, e.g. --base runs/bc/lift")
        if self.candidates < 1 or self.rounds < 1:
            raise ConfigError(f"vlm reward-code: candidates={self.candidates} and rounds={self.rounds} must be >= 1")
        if self.rl_steps < 1 or self.rl_envs < 1 or self.eval_episodes < 1 or self.critic_episodes < 1:
            raise ConfigError("vlm reward-code: rl_steps, rl_envs, eval_episodes and critic_episodes must be >= 1")
        self.shaping.validate()
        self.vlm.validate()


# ---- designer --------------------------------------------------------------------------------------
def task_text(task_cls, options: dict[str, Any] | None = None) -> str:
    """What the VLM is told about the task: its name, docstring (what, randomized, success), stages and
    the values of its options (the docstring names them: `lift_height`, `x_range`, ...)."""
    import dataclasses

    doc = " ".join((task_cls.__doc__ or "").split())
    stages = " -> ".join(getattr(task_cls, "stages", ()) or ())
    out = f"Task `{task_cls.name}`: {doc}" + (f"\nStages, in order: {stages}." if stages else "")
    opts = getattr(task_cls, "Options", None)
    if opts is not None and dataclasses.is_dataclass(opts):
        values = {f.name: getattr(opts(), f.name) for f in dataclasses.fields(opts)}
        values.update(options or {})
        out += "\nTask options (SI units): " + ", ".join(f"{k} = {v}" for k, v in values.items()) + "."
    return out


def designer_prompt(text: str, fields_table: str, feedback: str, k: int, n: int) -> str:
    out = f"""{text}

A robot arm (7 joints, parallel gripper) is controlled at 20 Hz. Write the reward for learning this task.
Observation fields, batched over N environments (numpy float64 arrays; SI units):
{fields_table}

Write exactly one Python function:

    def compute_reward(obs, action):
        ...
        return {{"<term name>": <(N,) array>, ...}}

Rules: numpy is available as `np` and the math module as `math`; no imports, no file or OS access, no
attributes starting with an underscore, no try/except. Vectorize over N (no Python loop over envs).
Return named terms, each of shape (N,); the reward is their sum, evaluated on the state the action reached.
Keep every term bounded (e.g. in [0, 1] times a weight) so no single term dominates by accident. Reward
the stages in order and make the total rise steadily as the task progresses; the task's own success
signal is added separately.
"""
    if feedback:
        out += f"\nFeedback on earlier programs:\n{feedback}\n"
    out += (f"\nThis is candidate {k + 1} of {n}: take your own approach. Answer with one ```python code block "
            "and, before it, at most three sentences on the idea.")
    return out


def extract_code(answer: str) -> str:
    """The program in an answer: the last ```python block (or ``` block) holding compute_reward, else the
    whole answer when it is bare code."""
    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", answer, re.S)
    for b in reversed(blocks):
        if "def compute_reward" in b:
            return b.strip() + "\n"
    if "def compute_reward" in answer and "```" not in answer:
        return answer.strip() + "\n"
    raise ValueError("the answer has no ```python block defining compute_reward")


# ---- critic ----------------------------------------------------------------------------------------
@dataclass
class Recorded:
    """Recorded successful episodes as the critic feeds them: per episode, fields and actions."""

    episodes: list[tuple[dict[str, np.ndarray], np.ndarray]]
    fields: list[ObsField]
    source: str


def recorded_episodes(dataset: str, n: int) -> Recorded:
    """Up to `n` successful episodes of `dataset` split into the reward program's fields."""
    from robolearn.data.dataset import DatasetMeta, DatasetReader

    meta = DatasetMeta.load(dataset)
    fields = obs_fields(meta.features)
    keys = sorted({f.key for f in fields})
    if not keys or "action" not in meta.features:
        raise ConfigError(f"{dataset}: the critic needs low-dimensional observations and actions; this dataset "
                          f"has {', '.join(meta.features)}")
    reader = DatasetReader(dataset, check_videos=False)
    eps = [e for e in range(meta.num_episodes) if meta.success(e)][:n]
    if not eps:
        raise ConfigError(f"{dataset}: no successful episode for the critic to check rewards on; record some "
                          "(`robolearn collect`) or pass --dataset")
    out = []
    for e in eps:
        data = reader.episode(e, keys + ["action"])
        out.append((split_obs(fields, data), np.asarray(data["action"], np.float64)))
    return Recorded(out, fields, dataset)


def _time_corr(values: np.ndarray) -> float:
    """Spearman correlation of values with time; 0 when they are constant (the critic's "does not rise")."""
    rho = spearman(np.arange(len(values)), values)
    return 0.0 if np.isnan(rho) else rho


def critique(source: str, recorded: Recorded, min_corr: float, limits=None) -> dict[str, Any]:
    """Check, run and measure a program on recorded episodes -> {"accepted", "stage", "message", ...}."""
    from robolearn.rewards.vlm.sandbox import RewardSandbox, SandboxError, UnsafeCodeError, check_code

    try:
        check_code(source)
    except UnsafeCodeError as e:
        return {"accepted": False, "stage": "check", "message": str(e)}
    per_term: dict[str, list[float]] = {}
    corr, stats = [], {}
    try:
        with RewardSandbox(source, limits) as box:
            for obs, action in recorded.episodes:
                terms = box.evaluate(obs, action)
                total = np.sum(list(terms.values()), axis=0)
                corr.append(_time_corr(total))
                for k, v in terms.items():
                    per_term.setdefault(k, []).append(_time_corr(v))
                    s = stats.setdefault(k, [np.inf, -np.inf, 0.0, 0])
                    s[0], s[1] = min(s[0], float(v.min())), max(s[1], float(v.max()))
                    s[2] += float(v.sum())
                    s[3] += len(v)
    except (SandboxError, UnsafeCodeError) as e:
        return {"accepted": False, "stage": "run", "message": str(e)}
    term_stats = {k: {"min": s[0], "max": s[1], "mean": s[2] / max(s[3], 1),
                      "corr_with_time": float(np.median(per_term[k]))} for k, s in stats.items()}
    median = float(np.median(corr))
    result = {"accepted": median >= min_corr, "stage": "progress", "progress_corr": median,
              "episodes": len(recorded.episodes), "terms": term_stats}
    if median < min_corr:
        flat = [k for k, s in term_stats.items() if s["max"] - s["min"] < 1e-9]
        falling = [k for k, s in term_stats.items() if s["corr_with_time"] < 0]
        why = []
        if falling:
            why.append(f"terms {', '.join(falling)} fall as the demonstrations progress")
        if flat:
            why.append(f"terms {', '.join(flat)} are constant on every demonstration")
        result["message"] = (f"flagged: the total reward does not rise along successful demonstrations (median "
                             f"Spearman correlation with time {median:.2f} < {min_corr})"
                             + (f"; {'; '.join(why)}" if why else ""))
    else:
        result["message"] = f"accepted: the total rises along successful demonstrations (correlation {median:.2f})"
    return result


# ---- trajectory analyzer -----------------------------------------------------------------------------
def term_curves(tb_dir: Path, prefix: str = "reward/code/") -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars under `prefix` of a run: term -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in tb_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith(prefix):
                curves.setdefault(tag[len(prefix):], []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in curves.items()}


def analyze(metrics: dict[str, Any], base_rate: float, curves: dict[str, list[tuple[int, float]]]) -> str:
    """The text a designer reads about one program's RL round (Eureka's reward reflection)."""
    n, rate = metrics["episodes"], metrics["success_rate"]
    lines = [f"Success rate after the RL round: {rate:.0%} of {n} episodes (the base policy alone: {base_rate:.0%})."]
    reach = ", ".join(f"{k} {v:.0%}" for k, v in metrics["stage_reach_rates"].items())
    lines.append(f"Stages reached: {reach}.")
    failed = [r for r in metrics["per_episode"] if not r["success"]]
    if failed:
        names, counts = np.unique([r["max_stage_name"] for r in failed], return_counts=True)
        where = ", ".join(f"{c} in {s}" for s, c in sorted(zip(names, counts), key=lambda x: -x[1]))
        lines.append(f"The {len(failed)} failed episodes got no further than: {where}.")
    shown = {k: v for k, v in curves.items() if k not in ("sparse", "shaping", "total")}
    if shown:
        lines.append("Each term's mean per step during training (start -> middle -> end):")
        for k, pts in shown.items():
            vals = [v for _, v in pts]
            mid = vals[len(vals) // 2]
            trend = "barely changes: not learned, or saturated" if abs(vals[-1] - vals[0]) < 0.02 * (
                abs(vals[0]) + 1e-6) + 1e-3 else ("rises" if vals[-1] > vals[0] else "falls")
            lines.append(f"  {k}: {vals[0]:.3f} -> {mid:.3f} -> {vals[-1]:.3f} ({trend})")
    return "\n".join(lines)


# ---- the loop ------------------------------------------------------------------------------------------
def run(cfg: RewardCodeConfig) -> dict[str, Any]:
    """Search for a reward program (see the module docstring); returns summary.json's content."""
    from robolearn.config import config_to_dict
    from robolearn.eval.sim import recorded_env
    from robolearn.policies import load_policy
    from robolearn.policies.base import resolve_checkpoint
    from robolearn.rewards.vlm.client import connect
    from robolearn.sim.registry import get_task_class

    cfg.validate()
    base_dir = resolve_checkpoint(cfg.base)
    base = load_policy(base_dir)
    task = cfg.task or _recorded_task(base_dir)
    task_cls = get_task_class(task)
    env_cfg, _ = recorded_env(base_dir)
    task_options = (env_cfg or {}).get("task_options") if (env_cfg or {}).get("task") == task else None
    dataset = cfg.dataset or (base.metadata or {}).get("dataset") or ""
    if not dataset or not Path(dataset).is_dir():
        raise ConfigError(f"vlm reward-code: the critic's dataset {dataset or '(none)'} is not there; pass --dataset "
                          "DIR (recorded episodes of the task)")
    out = Path(cfg.out or f"runs/reward_code/{task}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_jsonable({**config_to_dict(cfg), "task": task, "dataset": dataset}))
    recorded = recorded_episodes(dataset, cfg.critic_episodes)
    from robolearn.data.dataset import DatasetMeta

    action_ft = DatasetMeta.load(dataset).features.get("action")
    fields_table = describe_fields(recorded.fields, action_ft)
    image = _scene_image(task, cfg.camera) if cfg.image else None
    client = connect(cfg.vlm)
    base_rate = _base_success(cfg, base_dir, task, out)
    print(f"reward-code {task}: base success {base_rate:.0%}; {cfg.rounds} rounds x {cfg.candidates} candidates")

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    feedback = ""
    for r in range(cfg.rounds):
        prompts = [designer_prompt(task_text(task_cls, task_options), fields_table, feedback, k, cfg.candidates)
                   for k in range(cfg.candidates)]
        answers = client.map(lambda p: client.ask(p, [image] if image is not None else [], system=SYSTEM), prompts)
        results = []
        for k, (prompt, answer) in enumerate(zip(prompts, answers)):
            cdir = out / f"round_{r}" / f"candidate_{k}"
            res = _candidate(cfg, cdir, prompt, answer, recorded, base_dir, task, base_rate)
            res.update(round=r, candidate=k)
            results.append(res)
            history.append(res)
            _append(out / "history.jsonl", res)
            print(f"  round {r} candidate {k}: {res['status']}"
                  + (f", success {res['success_rate']:.0%}" if res.get("success_rate") is not None else ""))
        scored = [x for x in history if x.get("success_rate") is not None]
        if scored:
            best = max(scored, key=lambda x: (x["success_rate"], x.get("mean_max_stage", 0.0), -x["round"]))
        feedback = _round_feedback(best, results)
    if best is None:
        raise RobolearnError(f"vlm reward-code: no program passed the critic in {cfg.rounds} rounds of "
                             f"{cfg.candidates}; read {out}/round_*/candidate_*/critic.json for why, or try a "
                             "stronger model")
    best_code = Path(best["dir"]) / "reward.py"
    atomic_write_bytes(out / "reward.py", best_code.read_bytes())
    summary = {"task": task, "base": str(base_dir), "dataset": dataset, "base_success_rate": base_rate,
               "best": {k: best[k] for k in ("round", "candidate", "success_rate", "dir")},
               "reward": str(out / "reward.py"),
               "candidates": [{k: x.get(k) for k in ("round", "candidate", "status", "success_rate",
                                                      "progress_corr")} for x in history],
               "vlm": {"model": cfg.vlm.model, "base_url": cfg.vlm.base_url, **vars(client.stats)}}
    atomic_write_json(out / "summary.json", to_jsonable(summary))
    print(f"best: round {best['round']} candidate {best['candidate']} ({best['success_rate']:.0%}) -> "
          f"{out / 'reward.py'}\n"
          f"train with it: robolearn train residual --base {cfg.base} --reward code:{out / 'reward.py'}")
    return summary


def _candidate(cfg: RewardCodeConfig, cdir: Path, prompt: str, answer: str, recorded: Recorded, base_dir: Path,
               task: str, base_rate: float) -> dict[str, Any]:
    """Critic, RL round and analysis of one answer (read back when it finished before)."""
    done = cdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cdir / "prompt.txt", prompt.encode())
    atomic_write_bytes(cdir / "answer.md", answer.encode())
    res: dict[str, Any] = {"dir": str(cdir), "success_rate": None}
    try:
        code = extract_code(answer)
    except ValueError as e:
        res.update(status="no code", feedback=str(e))
        atomic_write_json(done, res)
        return res
    atomic_write_bytes(cdir / "reward.py", code.encode())
    critic = critique(code, recorded, cfg.min_progress_corr)
    atomic_write_json(cdir / "critic.json", to_jsonable(critic))
    res["progress_corr"] = critic.get("progress_corr")
    if not critic["accepted"]:
        res.update(status=f"rejected ({critic['stage']})", feedback=critic["message"])
        atomic_write_json(done, to_jsonable(res))
        return res
    metrics, curves = _rl_round(cfg, cdir, base_dir, task)
    text = analyze(metrics, base_rate, curves)
    atomic_write_bytes(cdir / "feedback.txt", text.encode())
    stages = [r["max_stage"] for r in metrics["per_episode"]]
    res.update(status="trained", success_rate=metrics["success_rate"], mean_max_stage=float(np.mean(stages)),
               feedback=text, critic=critic["message"])
    atomic_write_json(done, to_jsonable(res))
    return res


def _rl_round(cfg: RewardCodeConfig, cdir: Path, base_dir: Path, task: str):
    from robolearn.rl.train import TrainResidualConfig
    from robolearn.rl.train import run as train

    rl = TrainResidualConfig(base=str(base_dir), reward=f"code:{cdir / 'reward.py'}", algo="ppo", task=task,
                             out=str(cdir / "rl"), num_envs=cfg.rl_envs, total_steps=cfg.rl_steps, scale=cfg.scale,
                             shaping=ShapingConfig(**vars(cfg.shaping)), eval_every=0,
                             eval_episodes=cfg.eval_episodes, save_every=cfg.rl_steps, seed=cfg.seed,
                             progress=cfg.progress)
    rl.ppo.n_steps = max(8, min(rl.ppo.n_steps, cfg.rl_steps // cfg.rl_envs))
    rl.ppo.batch_size = min(rl.ppo.batch_size, rl.ppo.n_steps * cfg.rl_envs)
    run_dir = train(rl)
    metrics = json.loads((run_dir / "eval" / "final" / "metrics.json").read_text())
    return metrics, term_curves(run_dir / "tb")


def _base_success(cfg: RewardCodeConfig, base_dir: Path, task: str, out: Path) -> float:
    path = out / "base_eval" / "metrics.json"
    if path.exists():
        return float(json.loads(path.read_text())["success_rate"])
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as run_eval

    return float(run_eval(EvalConfig(policy=str(base_dir), task=task, episodes=cfg.eval_episodes, seed=cfg.seed,
                                     out=str(out / "base_eval"), progress=False))["success_rate"])


def _round_feedback(best: dict[str, Any] | None, results: list[dict[str, Any]]) -> str:
    parts = []
    if best is not None:
        code = (Path(best["dir"]) / "reward.py").read_text()
        parts.append(f"The best program so far (round {best['round']}, candidate {best['candidate']}):\n"
                     f"```python\n{code}```\n{best['feedback']}\nImprove on it: change the terms that do not "
                     "rise, re-weight the stages where episodes stall.")
    rejected = [x for x in results if x.get("success_rate") is None]
    if rejected:
        parts.append("Programs of the last round that were rejected, and why (avoid these mistakes):\n"
                     + "\n".join(f"- candidate {x['candidate']}: {x['feedback']}" for x in rejected))
    return "\n\n".join(parts)


def _scene_image(task: str, camera: str) -> np.ndarray:
    from robolearn.sim.registry import make_env

    env = make_env(task, num_envs=1, num_threads=1, cameras=[camera], image_size=(224, 224))
    try:
        obs, _ = env.reset(seed=0)
        return np.asarray(obs[f"observation.images.{camera}"][0])
    finally:
        env.close()


def _recorded_task(base_dir: Path) -> str:
    from robolearn.eval.sim import recorded_env

    env_cfg, source = recorded_env(base_dir)
    if not env_cfg:
        raise ConfigError(f"vlm reward-code: name the task (--task NAME): {source}")
    return env_cfg["task"]


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(to_jsonable({**row, "time": time.time()})) + "\n")
