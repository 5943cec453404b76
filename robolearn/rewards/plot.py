"""`robolearn reward plot`: a reward model's predictions on recorded episodes, as a PNG.

    robolearn reward plot --reward runs/reward/pick_place/checkpoints/last --dataset data/pick_place --episode 3

One panel per episode: predicted progress (and, where the dataset annotates stages, the label the
model would have been trained on) against time, the annotated stages shaded, and below it the
predicted stage probabilities. The figure goes to `out` (default `<run dir>/plots/<dataset>_ep<N>.png`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robolearn.errors import ConfigError

STAGE_COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7"]


@dataclass
class PlotConfig:
    """What `robolearn reward plot` draws."""

    reward: str = ""
    """reward model checkpoint directory"""
    dataset: str = ""
    """dataset directory"""
    episode: int = 0
    """episode to plot"""
    episodes: list[int] = field(default_factory=list)
    """several episodes, one panel each (overrides episode)"""
    out: str = ""
    """PNG path; empty: <run dir>/plots/<dataset name>_ep<N>.png (the run that holds the checkpoint)"""
    device: str = "auto"
    """cuda when present, else cpu"""

    def validate(self) -> None:
        if not self.reward or not self.dataset:
            raise ConfigError("reward plot: name the reward model and the dataset, e.g. --reward "
                              "runs/reward/pick_place/checkpoints/last --dataset data/pick_place --episode 0")


def episode_curves(model, reader, episodes: list[int], device: str = "auto") -> list[dict[str, np.ndarray]]:
    """Predictions (through the inference engine) and, where annotated, labels of whole episodes:
    one dict per episode with progress (T,), stage (T,), stage_probs (T, K), and label_progress /
    label_stage (T,) when the episode has a stage annotation."""
    from robolearn.inference.engine import InferenceEngine
    from robolearn.rewards.frames import EpisodeFrames
    from robolearn.rewards.labels import dataset_episode_labels

    names = reader.meta.stage_names
    table = EpisodeFrames(reader, model.config.obs_keys, episodes)
    scores = InferenceEngine(model, device=device).score_episodes(table)
    priors = model.priors.cpu().numpy() if model.has_stages else None
    mean_frames = np.asarray(model.metadata.get("stage_mean_frames") or np.full(len(names) or 1, 10.0))
    out = []
    for ep, s in zip(episodes, scores):
        d = dict(s)
        ann = reader.meta.stages(int(ep))
        if ann is not None and model.has_stages and list(names) == list(model.stage_names):
            lab = dataset_episode_labels(reader, ep, priors, mean_frames,
                                         bool(getattr(model.config, "failure_aware", True)))
            d["label_progress"], d["label_stage"] = lab.progress, lab.stage
        elif ann is not None and names:
            d["label_stage"] = ann.stage_ids(int(reader.lengths[ep]), names)
        out.append(d)
    return out


def plot_curves(curves: list[dict[str, np.ndarray]], titles: list[str], stage_names: list[str], path: Path,
                fps: float | None = None) -> Path:
    """Draw one panel per episode (see the module docstring) and save the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(5.2 * cols, 4.2 * rows), dpi=100)
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[3, 1] * rows, hspace=0.45, wspace=0.25)
    for i, (c, title) in enumerate(zip(curves, titles)):
        r, col = divmod(i, cols)
        ax = fig.add_subplot(grid[2 * r, col])
        t = np.arange(len(c["progress"])) / (fps or 1.0)
        if "label_stage" in c:
            _shade(ax, t, c["label_stage"], stage_names)
        if "label_progress" in c:
            ax.plot(t, c["label_progress"], color="black", lw=1.2, ls="--", label="label")
        ax.plot(t, c["progress"], color="#d62728", lw=1.8, label="predicted")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("progress")
        ax.set_title(title, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        ax2 = fig.add_subplot(grid[2 * r + 1, col], sharex=ax)
        if "stage_probs" in c:
            probs = c["stage_probs"]
            ax2.stackplot(t, probs.T, colors=[STAGE_COLOURS[k % len(STAGE_COLOURS)] for k in range(probs.shape[1])],
                          labels=stage_names[:probs.shape[1]], alpha=0.85)
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("P(stage)", fontsize=8)
        else:  # a model without stages: the panel shows the per-step progress change instead
            ax2.plot(t, np.diff(c["progress"], prepend=c["progress"][:1]), color="#d62728", lw=1)
            ax2.axhline(0, color="grey", lw=0.5)
            ax2.set_ylabel("Δ progress", fontsize=8)
        ax2.set_xlabel("time (s)" if fps else "frame")
        if i == 0 and stage_names and "stage_probs" in c:
            ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=min(len(stage_names), 5), fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _shade(ax, t: np.ndarray, stage: np.ndarray, names: list[str]) -> None:
    from robolearn.rewards.labels import segments

    dt = t[1] - t[0] if len(t) > 1 else 1.0
    for k, s, e in segments(stage):
        ax.axvspan(t[s], t[e] + dt, color=STAGE_COLOURS[k % len(STAGE_COLOURS)], alpha=0.15, lw=0)
        if e - s >= 3 and k < len(names):
            ax.text((t[s] + t[e]) / 2, 0.02, names[k], ha="center", va="bottom", fontsize=7, rotation=90)


def run(cfg: PlotConfig) -> Path:
    """Plot and return the PNG path."""
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.format import DatasetError
    from robolearn.rewards import check_stages, load_reward_model

    cfg.validate()
    model = load_reward_model(cfg.reward)
    reader = DatasetReader(cfg.dataset)
    episodes = [int(e) for e in (cfg.episodes or [cfg.episode])]
    bad = [e for e in episodes if not 0 <= e < reader.num_episodes]
    if bad:
        raise DatasetError(f"{cfg.dataset}: episodes {bad} do not exist (0..{reader.num_episodes - 1})")
    if reader.meta.stage_names:
        check_stages(model, reader.meta.stage_names, f"dataset {cfg.dataset}")
    curves = episode_curves(model, reader, episodes, cfg.device)
    titles = []
    for e, c in zip(episodes, curves):
        ok = reader.meta.success(e)
        failure = reader.meta.episode_info(e).get("failure")
        tag = "success" if ok else (f"failure ({failure})" if failure else ("failure" if ok is False else ""))
        titles.append(f"episode {e}" + (f" - {tag}" if tag else "") + f" - final progress {c['progress'][-1]:.2f}")
    name = f"{Path(cfg.dataset).resolve().name}_ep{'-'.join(map(str, episodes))}.png"
    ckpt = Path(cfg.reward).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt  # not inside a checkpoint
    out = Path(cfg.out) if cfg.out else run_dir / "plots" / name
    return plot_curves(curves, titles, list(model.stage_names or reader.meta.stage_names), out, reader.meta.fps)
