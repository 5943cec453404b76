"""`robolearn vlm gvl`: generative progress scoring of recorded episodes, as in GVL (Ma et al. 2024,
"Vision Language Models are In-Context Value Learners", arXiv:2411.04549).

    robolearn vlm gvl --dataset data/pick_place --vlm.model qwen2.5vl:7b

For each episode, `frames_per_episode` frames are sampled uniformly (first and last included) and
shown to the VLM in a seeded random order, after the episode's first frame given as the 0% reference:

    image 1: the initial scene (0% by definition);  images 2..K+1: the K frames, shuffled
    answer:  {"progress": [p_1, ..., p_K]}          one completion percentage (0-100) per shuffled frame

Shuffling is GVL's trick: shown in time order, a VLM tends to answer a rising ramp whatever the frames
show (the temporal prior); shuffled, it must judge each frame on its own. The answers are put back
into time order and scored with the Value-Order Correlation, VOC = Spearman rank correlation between
predicted progress and the frames' time order (`robolearn.rewards.metrics.spearman`: average ranks for
ties; a constant answer counts as 0, as in `metrics.voc`). A good expert demonstration scores near 1;
GVL uses low VOC to find poor demonstrations, so the report lists episodes below `min_voc` and the
mean VOC of successful and failed episodes separately (a useful scorer separates them).

Writes under `out/` (default runs/gvl/<dataset name>): config.json, report.json (per episode: the
frames, the order shown, the progress in time order, VOC), vlm_log.jsonl (every prompt and validated
answer) and progress.png (predicted progress against frame index for a few episodes). Answers are
cached by request (`vlm.cache_dir`) and the shuffle is seeded, so a rerun costs no requests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.data.format import atomic_write_json, to_jsonable
from robolearn.errors import ConfigError
from robolearn.rewards.metrics import spearman
from robolearn.rewards.vlm.annotate import (
    map_with_progress,
    prepare_out,
    resolve_camera,
    sample_frames,
    select_episodes,
    write_jsonl,
)
from robolearn.rewards.vlm.client import VLMAnswerError, VLMClient, VLMConfig


@dataclass
class GVLConfig:
    """What `robolearn vlm gvl` scores and where it writes."""

    dataset: str = ""
    """dataset directory (LeRobot v3 layout) with at least one camera"""
    camera: str = ""
    """camera feature shown to the VLM (`front` or `observation.images.front`); empty: the dataset's first"""
    episodes: list[int] | None = None
    """episodes to score; null or empty: all"""
    frames_per_episode: int = 16
    """frames scored per episode, sampled uniformly with the first and last included"""
    seed: int = 0
    """seed of the per-episode frame shuffles"""
    min_voc: float = 0.5
    """episodes whose VOC is below this are listed as low quality (GVL's demonstration filter)"""
    plot_episodes: int = 6
    """episodes drawn in progress.png (successes and failures mixed); 0: no plot"""
    out: str = ""
    """run directory; empty: runs/gvl/<dataset name>"""
    progress: bool = True
    """show a progress bar"""
    vlm: VLMConfig = field(default_factory=VLMConfig)
    """the VLM endpoint and how to talk to it"""

    def validate(self) -> None:
        if not self.dataset:
            raise ConfigError("vlm gvl: name the dataset, e.g. --dataset data/pick_place")
        if self.frames_per_episode < 2:
            raise ConfigError(f"vlm gvl: frames_per_episode={self.frames_per_episode} must be at least 2 "
                              "(VOC ranks frames against time)")
        if not -1.0 <= self.min_voc <= 1.0:
            raise ConfigError(f"vlm gvl: min_voc={self.min_voc} must be in [-1, 1] (a rank correlation)")
        if self.plot_episodes < 0:
            raise ConfigError(f"vlm gvl: plot_episodes={self.plot_episodes} must be >= 0")
        self.vlm.validate()


def gvl_prompt(task: str, k: int) -> str:
    """GVL's question (their appendix prompt, asking for JSON): image 1 the 0% reference, then k shuffled frames."""
    return "\n".join([
        "You are an expert roboticist judging how far a robot has got with a task in camera frames.",
        f"Task: {task or '(no task text given)'}",
        "Image 1 is the initial scene of the episode: there the task completion is 0%.",
        f"Images 2 to {k + 1} are {k} frames of the same episode in random order, not in time order, so judge "
        "each frame on its own.",
        "For each of them, in the order shown, estimate the task completion percentage from 0 to 100, where "
        "100 means the task is fully done.",
        f'Answer as {{"progress": [p_2, ..., p_{k + 1}]}}: {k} numbers, one per frame, in the order shown.'])


def progress_schema(k: int) -> dict[str, Any]:
    return {"type": "object", "required": ["progress"], "properties": {"progress": {
        "type": "array", "minItems": k, "maxItems": k, "items": {"type": "number", "minimum": 0, "maximum": 100}}}}


def check_progress(value: dict[str, Any], k: int) -> None:
    """Raise ValueError (quoted back to the model) unless there are k finite percentages in [0, 100]
    (the schema cannot rule out NaN, which Python's JSON parser accepts)."""
    p = value["progress"]
    if len(p) != k:
        raise ValueError(f"give exactly {k} percentages, one per frame after the first image; got {len(p)}")
    bad = [x for x in p if not (isinstance(x, int | float) and math.isfinite(x) and 0 <= x <= 100)]
    if bad:
        raise ValueError(f"every percentage must be a number from 0 to 100; got {bad[:3]}")


def shuffle_order(k: int, seed: int, ep: int) -> np.ndarray:
    """(k,) the order frames are shown in: shown[i] is sampled frame order[i]; seeded per episode."""
    return np.random.default_rng([seed, ep]).permutation(k)


def value_order_correlation(progress: np.ndarray, frames: np.ndarray) -> float:
    """VOC: Spearman rank correlation of progress (K,) with time (frames (K,), ascending); a constant
    prediction (no order at all) counts as 0."""
    v = spearman(np.asarray(progress, np.float64), np.asarray(frames, np.float64))
    return 0.0 if math.isnan(v) else v


def score_episode(client: VLMClient, reader, camera: str, ep: int, k: int, seed: int) -> dict[str, Any]:
    """One episode: sample, shuffle, ask, un-shuffle, VOC."""
    frames = sample_frames(int(reader.lengths[ep]), k)
    images = reader.video_frames(camera, ep, frames)  # (K, H, W, 3), in time order; frames[0] == 0
    order = shuffle_order(len(frames), seed, ep)
    prompt = gvl_prompt(reader.meta.task(ep), len(frames))
    try:
        answer = client.ask_json(prompt, [images[0], *images[order]], schema=progress_schema(len(frames)),
                                 check=lambda v: check_progress(v, len(frames)))
    except VLMAnswerError as e:
        raise VLMAnswerError(f"episode {ep}: {e}") from None
    progress = np.empty(len(frames))
    progress[order] = answer["progress"]  # the i-th answer is about sampled frame order[i]
    return {"episode": ep, "success": reader.meta.success(ep), "length": int(reader.lengths[ep]),
            "frames": frames.tolist(), "shown_order": frames[order].tolist(), "progress": progress.tolist(),
            "voc": value_order_correlation(progress, frames), "prompt": prompt, "answer": answer}


def summarize(results: list[dict[str, Any]], min_voc: float) -> dict[str, Any]:
    """Mean VOC over all, successful, failed and unlabelled episodes, and the episodes below min_voc."""
    def mean(rows: list[dict[str, Any]]) -> float | None:
        return float(np.mean([r["voc"] for r in rows])) if rows else None

    groups = {"success": [r for r in results if r["success"] is True],
              "failure": [r for r in results if r["success"] is False],
              "unlabelled": [r for r in results if r["success"] is None]}
    return {"mean_voc": mean(results), "mean_voc_success": mean(groups["success"]),
            "mean_voc_failure": mean(groups["failure"]), "mean_voc_unlabelled": mean(groups["unlabelled"]),
            "counts": {k: len(v) for k, v in groups.items()}, "min_voc": min_voc,
            "low_voc_episodes": [r["episode"] for r in results if r["voc"] < min_voc]}


def pick_plotted(results: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n episodes, failures and successes alternating (so both show), in episode order."""
    ok = [r for r in results if r["success"] is not False]
    bad = [r for r in results if r["success"] is False]
    picked = []
    while len(picked) < n and (ok or bad):
        for pool in (ok, bad):
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    return sorted(picked, key=lambda r: r["episode"])


def plot_progress(results: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Predicted progress (%) against frame index, one panel per episode; saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, results):
        colour = {True: "#59a14f", False: "#e15759"}.get(r["success"], "#4e79a7")
        outcome = {True: "success", False: "failure"}.get(r["success"], "unlabelled")
        ax.plot(r["frames"], r["progress"], "o-", color=colour, lw=1.5, ms=4)
        ax.set_ylim(-3, 103)
        ax.set_xlim(-0.02 * r["length"], 1.02 * (r["length"] - 1))
        ax.set_title(f"episode {r['episode']} ({outcome}), VOC {r['voc']:.2f}", fontsize=9)
        ax.set_xlabel("frame")
        ax.set_ylabel("predicted progress (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def run(cfg: GVLConfig) -> dict[str, Any]:
    """Score the episodes; returns the report (also saved as out/report.json)."""
    from robolearn.config import config_to_dict
    from robolearn.data.dataset import DatasetReader
    from robolearn.rewards.vlm.client import connect

    cfg.validate()
    t0 = time.perf_counter()
    reader = DatasetReader(cfg.dataset)
    meta = reader.meta
    camera = resolve_camera(meta, cfg.camera, "vlm gvl")
    episodes = select_episodes(meta, cfg.episodes)
    out = prepare_out(cfg.out, "gvl", meta.root, config_to_dict(cfg))
    client = connect(cfg.vlm)
    results = map_with_progress(client, lambda ep: score_episode(client, reader, camera, ep, cfg.frames_per_episode,
                                                                 cfg.seed),
                                episodes, "vlm gvl", cfg.progress)
    reader.decoder.close()
    write_jsonl(out / "vlm_log.jsonl", [{"episode": r["episode"], "shown_order": r["shown_order"],
                                         "prompt": r["prompt"], "answer": r["answer"]} for r in results])
    plot = None
    if cfg.plot_episodes:
        plot = str(plot_progress(pick_plotted(results, cfg.plot_episodes), out / "progress.png",
                                 f"GVL progress, {cfg.vlm.model} on {meta.root.name}"))
    report = {
        "dataset": str(meta.root.resolve()), "camera": camera, "model": cfg.vlm.model, "base_url": cfg.vlm.base_url,
        "frames_per_episode": cfg.frames_per_episode, "seed": cfg.seed, "episodes": episodes,
        **summarize(results, cfg.min_voc),
        "out": str(out), "plot": plot,
        "requests": client.stats.requests, "cache_hits": client.stats.cache_hits, "reasks": client.stats.reasks,
        "wall_s": time.perf_counter() - t0,
        "per_episode": [{k: r[k] for k in ("episode", "success", "length", "frames", "shown_order", "progress", "voc")}
                        for r in results],
    }
    atomic_write_json(out / "report.json", to_jsonable(report))
    return report


def format_report(r: dict[str, Any]) -> str:
    """A few lines for the terminal (the CLI's `show`)."""
    def part(name: str, key: str) -> str:
        n = r["counts"][name]
        return f", {name} {r[key]:.2f} over {n}" if n else ""

    lines = [f"GVL on {len(r['episodes'])} episodes of {r['dataset']} ({r['camera']}) with {r['model']}: "
             f"mean VOC {r['mean_voc']:.2f}" + part("success", "mean_voc_success") + part("failure", "mean_voc_failure")
             + part("unlabelled", "mean_voc_unlabelled")]
    low = r["low_voc_episodes"]
    lines.append(f"  VOC below {r['min_voc']}: " + (", ".join(map(str, low[:20])) + (" ..." if len(low) > 20 else "")
                                                     if low else "none"))
    lines.append(f"  {r['out']}/report.json" + (f"   {r['plot']}" if r["plot"] else "")
                 + f"   requests {r['requests']}, cache hits {r['cache_hits']}, re-asks {r['reasks']}")
    return "\n".join(lines)


def show(result: dict[str, Any], args) -> None:
    import json

    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_report(result))
