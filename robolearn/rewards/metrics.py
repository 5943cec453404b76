"""How good a progress estimate is, on episodes with known truth.

- voc (value-order correlation, as in GVL): Spearman rank correlation of predicted progress with time,
  per successful episode, averaged (1: progress only ever rises along an expert demonstration);
- stage_accuracy: share of frames whose predicted stage is the annotated one;
- progress_mae: mean absolute error of progress against the labels;
- failure_pair_accuracy: over every (failed, successful) pair of episodes, the share where the failed
  one ends with lower predicted progress.
"""

from __future__ import annotations

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank (as scipy.stats.rankdata's default)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; nan when either side is constant or shorter than 2."""
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def voc(progress: list[np.ndarray]) -> float:
    """Mean over episodes of Spearman(progress, time); a constant prediction counts as 0."""
    vals = [spearman(p, np.arange(len(p))) for p in progress if len(p) >= 2]
    vals = [0.0 if np.isnan(v) else v for v in vals]
    return float(np.mean(vals)) if vals else float("nan")


def failure_pair_accuracy(final_failed: np.ndarray, final_success: np.ndarray) -> float:
    """Share of (failed, successful) pairs where the failed episode's final progress is lower (ties: half)."""
    f, s = np.asarray(final_failed)[:, None], np.asarray(final_success)[None, :]
    if f.size == 0 or s.size == 0:
        return float("nan")
    return float(((f < s) + 0.5 * (f == s)).mean())


def progress_metrics(scores: list[dict[str, np.ndarray]], truth: list[dict[str, np.ndarray]],
                     success: np.ndarray) -> dict[str, float]:
    """Figures over episodes: scores[i] from `score_episodes`, truth[i] their labels (stage, progress),
    success[i] their success labels."""
    success = np.asarray(success, bool)
    out: dict[str, float] = {}
    ok = [s["progress"] for s, good in zip(scores, success) if good]
    if ok:
        out["voc"] = voc(ok)
    if scores and "stage" in scores[0]:
        hits = np.concatenate([s["stage"] == t["stage"] for s, t in zip(scores, truth)])
        out["stage_accuracy"] = float(hits.mean()) if hits.size else float("nan")
    if scores:
        err = np.concatenate([np.abs(s["progress"] - t["progress"]) for s, t in zip(scores, truth)])
        out["progress_mae"] = float(err.mean()) if err.size else float("nan")
    finals = np.array([s["progress"][-1] for s in scores]) if scores else np.zeros(0)
    if success.any() and (~success).any():
        out["failure_pair_accuracy"] = failure_pair_accuracy(finals[~success], finals[success])
    return out
