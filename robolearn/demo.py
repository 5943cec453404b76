"""`robolearn demo` (`make demo`): the main job, end to end, on the built-in default task.

    collect imperfect demos -> BC base (MLP) -> progress model (SARM-style) -> residual PPO with the
    progress reward -> base vs base+residual on seeded episodes -> runs/demo/report.html

Each stage is the same code its own command runs (`robolearn collect`, `train bc`, `train reward`,
`train residual`, `eval`), with the defaults below; the demo only chains them and writes the report:
the success table with Wilson 95% intervals, learning curves (PNG), one video per policy, the
wall-clock of every stage, and `summary.json` with every figure. Rerunning with the same `out`
starts over unless `resume=true`, which continues the stages that were cut short.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robolearn.data.format import atomic_write_bytes, atomic_write_json
from robolearn.errors import ConfigError
from robolearn.stats import wilson_interval


@dataclass
class DemoConfig:
    """What `robolearn demo` runs (`--quick`: the same pipeline at a smoke-test budget)."""

    task: str = "lift"
    """task: demos are collected, the base trained and the residual fine-tuned on it"""
    demos: int = 50
    """imperfect scripted demonstrations to collect"""
    action_noise_std: float = 0.1
    """Gaussian noise on the expert's actions while collecting (imperfect demos)"""
    failure_fraction: float = 0.3
    """share of the demos in which the expert fails on purpose"""
    failure_modes: list[str] = field(default_factory=lambda: ["drop", "stall"])
    """how those demos fail"""
    bc_steps: int = 2000
    """optimizer steps of the BC base (MLP)"""
    reward_steps: int = 1000
    """optimizer steps of the progress model"""
    residual_steps: int = 300_000
    """env steps of residual PPO"""
    residual_envs: int = 64
    """environments stepped together during residual RL"""
    scale: float = 0.1
    """largest residual correction per action dimension"""
    eval_every: int = 25_000
    """env steps between the learning curve's evaluations"""
    curve_episodes: int = 50
    """seeded episodes per learning-curve evaluation"""
    episodes: int = 100
    """seeded episodes of the final base vs base+residual evaluation"""
    video: bool = True
    """write (and embed in the report) one episode video per policy"""
    quick: bool = False
    """smoke run (~2 minutes): 12 demos, short training, 20 evaluation episodes"""
    seed: int = 0
    """seed of the demos, the training runs and the RL envs (evaluations use seed 1000)"""
    num_threads: int = 2
    """physics threads"""
    resume: bool = False
    """continue the stages of an interrupted demo in `out` instead of starting over"""
    out: str = "runs/demo"
    """output directory"""
    progress: bool = True
    """progress bars"""

    def apply_quick(self) -> None:
        if self.quick:
            self.demos, self.bc_steps, self.reward_steps = min(self.demos, 12), min(self.bc_steps, 300), \
                min(self.reward_steps, 150)
            self.residual_steps = min(self.residual_steps, 16_384)
            self.eval_every = min(self.eval_every, 8_192)
            self.curve_episodes, self.episodes = min(self.curve_episodes, 10), min(self.episodes, 20)

    def validate(self) -> None:
        from robolearn.sim.registry import get_task_class

        get_task_class(self.task)  # an unknown name fails before any work, with suggestions
        for name in ("demos", "bc_steps", "reward_steps", "residual_steps", "residual_envs", "episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo: {name}={getattr(self, name)} must be at least 1")


def _stage(name: str, timings: dict, fn):
    print(f"\n== {name}")
    t0 = time.perf_counter()
    result = fn()
    timings[name] = time.perf_counter() - t0
    print(f"== {name}: {timings[name]:.0f} s")
    return result


def run(cfg: DemoConfig) -> dict:
    """Run the pipeline; return the summary (also written to out/summary.json)."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train_reward
    from robolearn.rl.train import TrainResidualConfig
    from robolearn.rl.train import run as train_residual

    cfg.apply_quick()
    cfg.validate()
    out = Path(cfg.out)
    if out.exists() and not cfg.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    data = out / "data"
    if not (cfg.resume and _complete(data, cfg.demos)):
        _stage("collect imperfect demos", timings, lambda: collect(CollectConfig(
            task=cfg.task, episodes=cfg.demos, out=str(data), resume=cfg.resume and data.exists(), cameras=[],
            num_threads=cfg.num_threads, seed=cfg.seed, action_noise_std=cfg.action_noise_std,
            failure_fraction=cfg.failure_fraction, failure_modes=list(cfg.failure_modes), progress=cfg.progress)))
    _stage("train the BC base", timings, lambda: train_bc(TrainBCConfig(
        dataset=str(data), policy="mlp", out=str(out / "bc"), steps=cfg.bc_steps, eval_episodes=0, seed=cfg.seed,
        device="cpu", progress=cfg.progress)))
    _stage("train the progress model", timings, lambda: train_reward(TrainRewardConfig(
        dataset=str(data), out=str(out / "reward"), steps=cfg.reward_steps, seed=cfg.seed, device="cpu",
        model_options={"privileged": True}, progress=cfg.progress)))
    rl = TrainResidualConfig(base=str(out / "bc"), reward=str(out / "reward"), algo="ppo", out=str(out / "residual"),
                             num_envs=cfg.residual_envs, num_threads=cfg.num_threads, total_steps=cfg.residual_steps,
                             scale=cfg.scale, eval_every=cfg.eval_every, eval_episodes=cfg.curve_episodes,
                             save_every=max(cfg.eval_every, cfg.residual_steps // 4), seed=cfg.seed,
                             progress=cfg.progress)
    _stage("fine-tune the residual (PPO, progress reward)", timings, lambda: train_residual(rl))

    results = {}
    for name, policy in (("base", out / "bc"), ("residual", out / "residual")):
        results[name] = _stage(f"evaluate {name}", timings, lambda policy=policy, name=name: evaluate(EvalConfig(
            policy=str(policy), episodes=cfg.episodes, num_threads=cfg.num_threads, device="cpu",
            video=cfg.video, video_episodes=1, out=str(out / "eval" / name), progress=cfg.progress)))
    wall = time.perf_counter() - t_start
    previous = out / "summary.json"
    if cfg.resume and previous.exists():  # a resumed demo counts the time its earlier invocations spent
        try:
            before = json.loads(previous.read_text())
            for k, v in before.get("timings_s", {}).items():
                timings[k] = timings.get(k, 0.0) + float(v)
            wall += float(before.get("wall_clock_s", 0.0))
        except (OSError, ValueError):
            pass
    summary = _summary(cfg, out, results, timings, wall)
    atomic_write_json(out / "summary.json", summary)
    _plot_curves(out, summary)
    report = write_report(out, summary)
    print("\n" + format_table(summary))
    overlap = "do not overlap" if summary["separated"] else "overlap"
    print(f"\nimprovement {summary['improvement']:+.0%} (intervals {overlap}); total {wall / 60:.1f} min\n"
          f"report: {report}")
    return summary


def _complete(data: Path, episodes: int) -> bool:
    from robolearn.data.dataset import DatasetMeta
    from robolearn.errors import RobolearnError

    try:
        return DatasetMeta.load(data).num_episodes >= episodes
    except RobolearnError:
        return False


def _row(name: str, res: dict) -> dict:
    k, n = int(res["successes"]), int(res["episodes"])
    lo, hi = wilson_interval(k, n)
    return {"policy": name, "episodes": n, "successes": k, "success_rate": k / n, "ci95": [lo, hi],
            "mean_episode_length": res["mean_episode_length"], "stage_reach_rates": res["stage_reach_rates"],
            "videos": [str(v) for v in res.get("videos", [])]}


def learning_curve(run_dir: Path) -> list[dict]:
    """The residual run's periodic evaluations: [{step, success_rate, episodes?}] in step order."""
    path = Path(run_dir) / "eval_log.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def _summary(cfg: DemoConfig, out: Path, results: dict, timings: dict, wall: float) -> dict:
    from dataclasses import asdict

    base, res = _row("base (BC, MLP)", results["base"]), _row("base + residual (PPO)", results["residual"])
    train = json.loads((out / "residual" / "train_summary.json").read_text())
    return {
        "task": cfg.task, "config": asdict(cfg), "base": base, "residual": res,
        "improvement": res["success_rate"] - base["success_rate"],
        "separated": res["ci95"][0] > base["ci95"][1] or base["ci95"][0] > res["ci95"][1],
        "curve": learning_curve(out / "residual"), "curve_episodes": cfg.curve_episodes,
        "residual_train": train, "timings_s": timings, "wall_clock_s": wall,
    }


def format_table(summary: dict) -> str:
    head = "| policy | success | 95% CI (Wilson) | mean length | stages reached |\n|---|---|---|---|---|\n"
    body = ""
    for r in (summary["base"], summary["residual"]):
        stages = ", ".join(f"{k} {v:.0%}" for k, v in r["stage_reach_rates"].items())
        body += (f"| {r['policy']} | {r['success_rate']:.0%} ({r['successes']}/{r['episodes']}) | "
                 f"{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} | {r['mean_episode_length']:.0f} | {stages} |\n")
    return head + body


def _plot_curves(out: Path, summary: dict) -> Path:
    """learning_curves.png: eval success of the residual vs env steps (Wilson band) against the base,
    and the BC / progress-model training losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    curve = summary["curve"]
    n = summary["curve_episodes"]
    base = summary["base"]
    ax.axhspan(base["ci95"][0], base["ci95"][1], color="tab:gray", alpha=0.2)
    ax.axhline(base["success_rate"], color="tab:gray", ls="--", label=f"base {base['success_rate']:.0%}")
    if curve:
        steps = np.array([c["step"] for c in curve])
        rate = np.array([c["success_rate"] for c in curve])
        lo_hi = np.array([wilson_interval(round(c["success_rate"] * c.get("episodes", n)), c.get("episodes", n))
                          for c in curve])
        ax.plot(steps, rate, "o-", color="tab:blue", label=f"base + residual ({n} episodes each)")
        ax.fill_between(steps, lo_hi[:, 0], lo_hi[:, 1], color="tab:blue", alpha=0.2)
    res = summary["residual"]
    ax.errorbar([summary["residual_train"].get("steps", 0)], [res["success_rate"]],
                yerr=[[res["success_rate"] - res["ci95"][0]], [res["ci95"][1] - res["success_rate"]]],
                fmt="s", color="tab:red", label=f"final, {res['episodes']} episodes: {res['success_rate']:.0%}")
    ax.set(xlabel="env steps (residual PPO)", ylabel="success rate", ylim=(0, 1.02),
           title="residual RL with the progress reward")
    ax.legend(loc="lower right", fontsize=8)
    for ax, path, keys, title in ((axes[1], out / "bc" / "train_log.jsonl", ["loss"], "BC base"),
                                  (axes[2], out / "reward" / "train_log.jsonl", ["loss", "val_voc"], "progress model")):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, "o-" if len(s) < 3 else "-", label=k)
        ax.set(xlabel="optimizer step", title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _embed(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def write_report(out: Path, summary: dict) -> Path:
    """out/report.html, self-contained (the plot and videos embedded): openable offline, mailable."""
    e = html.escape
    rows = ""
    for r in (summary["base"], summary["residual"]):
        stages = ", ".join(f"{e(k)} {v:.0%}" for k, v in r["stage_reach_rates"].items())
        rows += (f"<tr><td>{e(r['policy'])}</td><td><b>{r['success_rate']:.0%}</b> ({r['successes']}/{r['episodes']})"
                 f"</td><td>{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%}</td><td>{r['mean_episode_length']:.0f}</td>"
                 f"<td>{stages}</td></tr>")
    videos = ""
    for r in (summary["base"], summary["residual"]):
        for v in r["videos"][:1]:
            videos += (f"<figure><video controls loop muted autoplay width='320' src='{_embed(Path(v), 'video/mp4')}'>"
                       f"</video><figcaption>{e(r['policy'])}: {e(Path(v).name)}</figcaption></figure>")
    timings = "".join(f"<tr><td>{e(k)}</td><td>{v:.0f} s</td></tr>" for k, v in summary["timings_s"].items())
    cfg = summary["config"]
    verdict = (f"{summary['improvement']:+.0%} points; the 95% intervals "
               f"{'do not overlap' if summary['separated'] else 'overlap'}")
    curve = out / "learning_curves.png"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>robolearn demo: {e(summary['task'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{display:inline-block;margin:0 1em 1em 0}}
.small{{color:#666;font-size:90%}}</style></head><body>
<h1>Residual RL on <code>{e(summary['task'])}</code></h1>
<p>{cfg['demos']} imperfect scripted demos (action noise {cfg['action_noise_std']}, {cfg['failure_fraction']:.0%}
failing on purpose) &rarr; BC base (MLP, {cfg['bc_steps']} steps) &rarr; stage-aware progress model
({cfg['reward_steps']} steps) &rarr; residual PPO with the potential-shaped progress reward
({summary['residual_train'].get('steps', 0):,} env steps, {cfg['residual_envs']} envs, scale {cfg['scale']})
&rarr; both policies on the same {summary['base']['episodes']} seeded episodes.</p>
<h2>Success</h2><table><tr><th>policy</th><th>success</th><th>95% CI (Wilson)</th><th>mean length</th>
<th>stages reached</th></tr>{rows}</table><p>Improvement: <b>{verdict}</b>.</p>
<h2>Learning curves</h2><img src="{_embed(curve, 'image/png')}" width="100%">
<h2>Videos</h2>{videos or '<p class="small">no videos (video=false)</p>'}
<h2>Time</h2><table>{timings}<tr><td><b>total</b></td><td><b>{summary['wall_clock_s'] / 60:.1f} min</b></td></tr>
</table><p class="small">Runs: data/, bc/, reward/, residual/ (TensorBoard in residual/tb), eval/ under
{e(str(out))}. Every figure is in summary.json.</p></body></html>"""
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
