"""Progress labels from stage annotations, as SARM derives them.

With stages 0..K-1 and stage priors p_k (each stage's mean share of a successful episode, so that
progress means the same thing in a short and a long episode), the progress of frame t in stage k is

    progress_t = P_k + tau_t * p_k,    P_k = p_0 + ... + p_{k-1}  (the finished stages)

where tau_t in [0, 1] is how far through the stage the frame is. A stage segment that is completed
(the next segment is a later stage, or the episode ends in success) gets tau linear in time from 0 at
its first frame to 1 at its last.

Failure-aware labels (`failure_aware=True`) change what unfinished segments mean. In an episode
labelled as a failure, a segment that is not completed (the episode regressed to an earlier stage,
e.g. the cube was dropped, or never finished it) cannot be labelled by time: its tau grows with the
stage's mean duration in successful episodes, capped at `UNFINISHED_TAU_CAP` < 1, and from the frame
the failure began (`failure_step` of the episode info) nothing grows within a stage any more: the
segment under way is frozen and later segments get tau = 0, so progress after a failure only counts
the stages the state has reached again (the stage predicates). The model thus sees progress that goes
down (stage regressions) and that stands still while the robot hovers, so a policy cannot farm reward
by waiting.
Without it, every segment is interpolated as if completed (SARM's plain labels).

The frame-index baseline's label is normalized time t / (T - 1), stages ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robolearn.data.format import DatasetError
from robolearn.data.stages import StageAnnotation

UNFINISHED_TAU_CAP = 0.9
"""tau of an unfinished segment is at most this: it never looks like a completed stage"""


@dataclass
class EpisodeLabels:
    """Per-frame labels of one episode, each (T,)."""

    stage: np.ndarray
    """int64 stage index"""
    tau: np.ndarray
    """float32 progress within the stage, 0..1"""
    progress: np.ndarray
    """float32 overall progress, 0..1"""
    time: np.ndarray
    """float32 normalized time t / (T - 1) (the frame-index baseline's label)"""


def segments(stage_ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(stage, first frame, last frame) of each run of equal stage ids."""
    ids = np.asarray(stage_ids)
    cuts = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], cuts]).astype(int)
    ends = np.concatenate([cuts - 1, [len(ids) - 1]]).astype(int)
    return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def stage_statistics(annotations: list[tuple[StageAnnotation, int, bool | None]],
                     stage_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(priors (K,), mean frames (K,)) of each stage over (annotation, length, success) triples.

    Priors are the mean share of an episode each stage takes, over successful episodes (all of them
    when none is labelled a success), normalized to sum to 1; mean frames is the mean length of a
    completed segment of the stage (what unfinished segments are measured against)."""
    k = len(stage_names)
    use = [a for a in annotations if a[2]] or list(annotations)
    if not use:
        raise DatasetError("no annotated episodes to derive stage priors from")
    share, frames, count = np.zeros(k), np.zeros(k), np.zeros(k)
    for ann, length, _ in use:
        ids = ann.stage_ids(length, stage_names)
        segs = segments(ids)
        for j, (s_id, s, e) in enumerate(segs):
            share[s_id] += (e - s + 1) / length
            completed = j + 1 < len(segs) and segs[j + 1][0] > s_id or j + 1 == len(segs)
            if completed:
                frames[s_id] += e - s + 1
                count[s_id] += 1
    share /= len(use)
    if share.sum() <= 0:
        raise DatasetError("the stage annotations cover no frames")
    # a stage no successful episode went through keeps a small share instead of 0 (progress would not
    # move through it)
    share = np.maximum(share, 1e-3)
    mean_frames = np.where(count > 0, frames / np.maximum(count, 1), np.nan)
    mean_frames = np.where(np.isnan(mean_frames), np.nanmean(mean_frames) if count.any() else 10.0, mean_frames)
    return (share / share.sum()).astype(np.float32), np.maximum(mean_frames, 1.0).astype(np.float32)


def episode_labels(ann: StageAnnotation, length: int, stage_names: list[str], priors: np.ndarray,
                   mean_frames: np.ndarray, success: bool | None = None, failure_step: int | None = None,
                   failure_aware: bool = True) -> EpisodeLabels:
    """Labels of every frame of one annotated episode (see the module docstring)."""
    ids = ann.stage_ids(length, stage_names)
    priors = np.asarray(priors, np.float64)
    cum = np.concatenate([[0.0], np.cumsum(priors)[:-1]])
    tau = np.zeros(length)
    segs = segments(ids)
    failed = failure_aware and success is False
    for j, (k, s, e) in enumerate(segs):
        t = np.arange(s, e + 1) - s
        last = j + 1 == len(segs)
        completed = (not last and segs[j + 1][0] > k) or (last and success is not False)
        if completed or not failed:
            tau[s:e + 1] = t / max(e - s, 1)
        else:
            tau[s:e + 1] = np.minimum(t / mean_frames[k], 1.0) * UNFINISHED_TAU_CAP
    if failed and failure_step is not None and 0 <= failure_step < length:
        f = int(failure_step)
        seg_end = next(e for _, s, e in segs if s <= f <= e)
        tau[f:seg_end + 1] = tau[f]  # the segment under way stops where the failure began
        tau[seg_end + 1:] = 0.0  # what follows a failure makes no progress within its stages
    progress = cum[ids] + tau * priors[ids]
    time = np.arange(length) / max(length - 1, 1)
    return EpisodeLabels(ids, tau.astype(np.float32), np.clip(progress, 0, 1).astype(np.float32),
                         time.astype(np.float32))


def dataset_episode_labels(reader, ep: int, priors: np.ndarray, mean_frames: np.ndarray,
                           failure_aware: bool = True) -> EpisodeLabels:
    """`episode_labels` of episode `ep` of a dataset (`DatasetReader`): its stage annotation, length,
    success label and recorded failure step."""
    ep = int(ep)
    meta = reader.meta
    return episode_labels(meta.stages(ep), int(reader.lengths[ep]), meta.stage_names, priors, mean_frames,
                          success=meta.success(ep), failure_step=meta.episode_info(ep).get("failure_step"),
                          failure_aware=failure_aware)
