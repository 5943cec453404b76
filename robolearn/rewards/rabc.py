"""Reward-aligned behaviour cloning (RA-BC, as in SARM): weight BC samples by the progress they make.

For the window at frame t, the progress model's delta over the action chunk,

    delta_t = progress(t + D) - progress(t)      (past the episode's end: 1 after a success, else the last value)

becomes a weight with SARM's soft ramp, using the mean mu and std sigma of all deltas of the dataset:

    w_t = 1                                                  if delta_t > kappa
    w_t = clip((delta_t - (mu - 2 sigma)) / (4 sigma + eps), 0, 1)   otherwise

so samples where the demonstrator makes clear progress count fully, and those where it stalls or
regresses (a dropped cube, a hesitation) count less or not at all. The BC loss becomes the weighted
mean over samples (`Policy.training_loss` reads `batch["sample_weight"]`).

    robolearn train bc --dataset data/pp --policy mlp --sample-weighting progress --reward runs/reward/pp
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def rabc_weights(deltas: np.ndarray, kappa: float = 0.01) -> np.ndarray:
    """Per-sample weights in [0, 1] from progress deltas (see the module docstring)."""
    d = np.asarray(deltas, np.float64)
    mu, sigma = float(d.mean()), float(d.std())
    soft = np.clip((d - (mu - 2 * sigma)) / (4 * sigma + EPS), 0.0, 1.0)
    return np.where(d > kappa, 1.0, soft).astype(np.float32)


def progress_deltas(model, reader, delta: int, device: str = "auto", max_memory_gb: float = 8.0,
                    progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(deltas, row offsets): deltas (num_frames,) for every frame of every episode in episode order,
    and the first row of each episode (offsets[ep] + t is frame t of episode ep). The progress of every
    frame comes from the inference engine's offline scoring."""
    from robolearn.inference.engine import InferenceEngine
    from robolearn.rewards.frames import EpisodeFrames

    table = EpisodeFrames(reader, model.config.obs_keys, np.arange(reader.num_episodes), max_memory_gb,
                          progress_bar)
    scores = InferenceEngine(model, device=device).score_episodes(table)
    out = []
    for ep, s in enumerate(scores):
        p = s["progress"].astype(np.float64)
        # past the end of a successful episode the task is done (progress 1), else it stays where it ended:
        # the last frames of a good demonstration are not down-weighted for having no future
        tail = 1.0 if reader.meta.success(ep) else p[-1]
        ahead = np.arange(len(p)) + delta
        future = np.where(ahead < len(p), p[np.minimum(ahead, len(p) - 1)], tail)
        out.append(future - p)
    return (np.concatenate(out) if out else np.zeros(0)), table.starts.copy()
