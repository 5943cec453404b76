"""Stage (subtask) annotations of episodes, as SARM stores them.

An episode's annotation is its ordered subtasks, each a name with a start and an end frame (both
inclusive). In `meta/episodes` they are the columns `sparse_subtask_names`,
`sparse_subtask_start_frames`, `sparse_subtask_end_frames` (and `*_start_times`/`*_end_times` in
seconds), and `meta/temporal_proportions_sparse.json` holds each stage's mean share of an episode:
the layout LeRobot's SARM reads. They come from the scripted expert in sim, from a VLM, or from a
file a person wrote (JSON or CSV, see `load_annotation_file`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robolearn.data.format import DatasetError


@dataclass
class StageAnnotation:
    """Ordered subtasks of one episode: `names[k]` spans frames start_frames[k]..end_frames[k]."""

    names: list[str]
    start_frames: list[int]
    end_frames: list[int]
    source: str = "user"
    """where it came from: expert, vlm, user"""

    def validate(self, length: int, where: str, known: list[str] | None = None) -> None:
        """Raise DatasetError unless the subtasks are ordered, non-overlapping and inside the episode."""
        n = len(self.names)
        if n == 0 or len(self.start_frames) != n or len(self.end_frames) != n:
            raise DatasetError(f"{where}: a stage annotation needs as many start and end frames as names "
                               f"(got {n} names, {len(self.start_frames)} starts, {len(self.end_frames)} ends)")
        prev_end = -1
        for name, s, e in zip(self.names, self.start_frames, self.end_frames):
            if known is not None and name not in known:
                raise DatasetError(f"{where}: stage {name!r} is not one of this dataset's stages "
                                   f"({', '.join(known)})")
            if not (0 <= s <= e < length):
                raise DatasetError(f"{where}: stage {name!r} spans frames {s}..{e}, outside the episode's "
                                   f"0..{length - 1} (or ends before it starts)")
            if s <= prev_end:
                raise DatasetError(f"{where}: stage {name!r} starts at frame {s}, before the previous stage "
                                   f"ends ({prev_end}); stages must be in time order without overlap")
            prev_end = e

    @classmethod
    def from_stage_ids(cls, stage_ids: np.ndarray, stage_names: list[str], source: str = "expert") -> StageAnnotation:
        """Segments of consecutive equal stage ids (T,) -> an annotation (a stage may recur after a
        regression, e.g. re-grasping after a drop)."""
        ids = np.asarray(stage_ids, dtype=np.int64)
        cuts = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts - 1, [len(ids) - 1]])
        return cls([stage_names[int(ids[s])] for s in starts], starts.tolist(), ends.tolist(), source)

    def stage_ids(self, length: int, stage_names: list[str]) -> np.ndarray:
        """(length,) stage index per frame; frames between annotated stages take the previous stage."""
        out = np.zeros(length, np.int64)
        for name, s in zip(self.names, self.start_frames):
            out[s:] = stage_names.index(name)
        return out


def temporal_proportions(annotations: list[tuple[StageAnnotation, int]], stage_names: list[str]) -> dict[str, float]:
    """Mean share of an episode each stage takes (SARM's stage prior), over (annotation, length) pairs."""
    total = dict.fromkeys(stage_names, 0.0)
    for ann, length in annotations:
        for name, s, e in zip(ann.names, ann.start_frames, ann.end_frames):
            total[name] = total.get(name, 0.0) + (e - s + 1) / length
    n = max(len(annotations), 1)
    return {k: v / n for k, v in total.items()}


def load_annotation_file(path: str | Path) -> dict[int, StageAnnotation]:
    """Stage annotations written by a person, keyed by episode index.

    JSON: {"episodes": {"0": [{"name": "reach", "start": 0, "end": 41}, ...], ...}, "source": "vlm"}
          (source optional, default user)
    CSV:  a header `episode_index,name,start_frame,end_frame`, then one row per subtask.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such annotation file")
    out: dict[int, StageAnnotation] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"episode_index", "name", "start_frame", "end_frame"}
            if reader.fieldnames is None or not need <= set(reader.fieldnames):
                raise DatasetError(f"{path}: the CSV header must name {', '.join(sorted(need))}; "
                                   f"got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                try:
                    ep, s, e = int(row["episode_index"]), int(row["start_frame"]), int(row["end_frame"])
                except (TypeError, ValueError):
                    raise DatasetError(f"{path}:{line}: episode_index, start_frame and end_frame must be "
                                       f"integers; got {row}") from None
                ann = out.setdefault(ep, StageAnnotation([], [], [], "user"))
                ann.names.append(row["name"].strip())
                ann.start_frames.append(s)
                ann.end_frames.append(e)
        return out
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    episodes = raw.get("episodes") if isinstance(raw, dict) else None
    if not isinstance(episodes, dict):
        raise DatasetError(f'{path}: expected {{"episodes": {{"<episode index>": [{{"name", "start", "end"}}, '
                           "...]}}")
    source = str(raw.get("source") or "user")  # who made them: user, vlm, expert
    for key, items in episodes.items():
        try:
            ep = int(key)
            out[ep] = StageAnnotation([str(i["name"]) for i in items], [int(i["start"]) for i in items],
                                      [int(i["end"]) for i in items], source)
        except (TypeError, ValueError, KeyError):
            raise DatasetError(f'{path}: episode {key!r}: each subtask must be {{"name": str, "start": int, '
                               f'"end": int}}; got {items!r}') from None
    return out
