"""`robolearn info DIR`: what a dataset holds (features, episodes, tasks, stages, success), and
`robolearn annotate`: set the stage annotations of a dataset's episodes from a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robolearn.data.dataset import DatasetMeta, DatasetReader
from robolearn.data.format import DatasetError


@dataclass
class InfoConfig:
    """What `robolearn info` reports."""

    dataset: str = ""
    """dataset directory (LeRobot v3 layout)"""
    verify: bool = False
    """also read every frame table and count every video's frames (slower; catches damaged files)"""


def run(cfg: InfoConfig) -> dict:
    """A summary of the dataset (printed by the CLI)."""
    if not cfg.dataset:
        raise DatasetError("info: name a dataset directory, e.g. `robolearn info data/lift`")
    meta = DatasetMeta.load(cfg.dataset)
    if cfg.verify:
        verify(cfg.dataset)
    lengths = np.array([int(r["length"]) for r in meta.episode_rows]) if meta.episode_rows else np.zeros(0)
    labels = [meta.success(e) for e in range(meta.num_episodes)]
    known = [s for s in labels if s is not None]
    annotated = [meta.stages(e) for e in range(meta.num_episodes)]
    sources = sorted({a.source for a in annotated if a is not None})
    features = {k: {"dtype": f.dtype, "shape": list(f.shape), "names": _short_names(f.names)}
                for k, f in meta.features.items()}
    return {
        "dataset": str(meta.root),
        "codebase_version": meta.info["codebase_version"],
        "robot_type": meta.info.get("robot_type"),
        "fps": meta.fps,
        "episodes": meta.num_episodes,
        "frames": meta.num_frames,
        "episode_length": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
        if len(lengths) else None,
        "tasks": meta.tasks,
        "features": features,
        "stages": meta.stage_names,
        "annotated_episodes": sum(a is not None for a in annotated),
        "annotation_sources": sources,
        "success": {"labelled": len(known), "successes": int(sum(known))} if known else None,
        "source": meta.robolearn.get("source"),
        "verified": cfg.verify,
    }


def verify(root: str | Path) -> None:
    """Full check: frame tables agree with the metadata and every video has every frame it should."""
    from robolearn.data.video import probe_frames

    reader = DatasetReader(root)
    per_file: dict[Path, float] = {}
    for key in reader.video_keys:
        for ep in range(reader.num_episodes):
            p = reader._video_file[key][ep]
            per_file[p] = max(per_file.get(p, 0.0), reader._video_t0[key][ep] + reader.lengths[ep] / reader.fps)
    for p, end in per_file.items():
        n = probe_frames(p)
        need = round(end * reader.fps)
        if n < need:
            raise DatasetError(f"{p}: {n} video frames, but its episodes need {need}; the file is truncated or the "
                               "frame counts disagree. Re-record or re-convert those episodes")


def _short_names(names) -> str | None:
    if not names:
        return None
    names = [str(n) for n in names]
    return ", ".join(names) if len(names) <= 6 else ", ".join(names[:5]) + f", ... ({len(names)})"


def format_info(s: dict) -> str:
    lines = [f"{s['dataset']}  (LeRobot {s['codebase_version']}, {s['fps']} fps, robot {s['robot_type']})"]
    el = s["episode_length"]
    lines.append(f"  episodes   {s['episodes']}   frames {s['frames']}" +
                 (f"   length min/mean/max {el['min']}/{el['mean']:.1f}/{el['max']}" if el else ""))
    for i, t in enumerate(s["tasks"]):
        lines.append(f"  task {i}     {t}")
    if s["success"]:
        sc = s["success"]
        lines.append(f"  success    {sc['successes']}/{sc['labelled']} labelled episodes")
    if s["stages"]:
        src = f" (from {', '.join(s['annotation_sources'])})" if s["annotation_sources"] else ""
        lines.append(f"  stages     {' > '.join(s['stages'])}; {s['annotated_episodes']}/{s['episodes']} "
                     f"episodes annotated{src}")
    lines.append("  features")
    width = max(len(k) for k in s["features"]) if s["features"] else 0
    for k, f in s["features"].items():
        names = f"  [{f['names']}]" if f["names"] and f["dtype"] != "video" else ""
        lines.append(f"    {k:<{width}}  {f['dtype']:<8} {str(tuple(f['shape'])):<14}{names}")
    if s["verified"]:
        lines.append("  verified   every frame table and video agrees with the metadata")
    return "\n".join(lines)


def show(result: dict, args) -> None:
    import json

    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_info(result))


@dataclass
class AnnotateConfig:
    """What `robolearn annotate` writes."""

    dataset: str = ""
    """dataset directory"""
    file: str = ""
    """stage annotations: JSON {"episodes": {"0": [{"name", "start", "end"}, ...]}} or CSV
    episode_index,name,start_frame,end_frame"""


def annotate(cfg: AnnotateConfig) -> dict:
    """Write the file's stage annotations into the dataset's episode metadata (atomically)."""
    from robolearn.data.stages import load_annotation_file
    from robolearn.data.writer import DatasetWriter

    anns = load_annotation_file(cfg.file)
    with DatasetWriter.open(cfg.dataset) as w:
        w.set_stages(anns)
    return {"dataset": cfg.dataset, "annotated": sorted(anns)}
