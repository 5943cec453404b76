"""`robolearn judge`: dense judging of recorded episodes with a progress model (as in PRM-as-a-Judge).

    robolearn judge --dataset data/pick_place_eval --reward runs/reward/pick_place --out runs/judge/pick_place

A success label says whether an episode worked; a progress model says how: how far it got, how fast,
whether it went backwards or stood still, and where a failure happened. Every episode is scored
offline by the reward model (`robolearn.inference.reward.score_episodes`) and judged on three axes.

Outcome: the success label where the dataset has one (`success_source: label`), else whether the
final progress is above `success_threshold` (`success_source: progress`).

Process, on the progress curve smoothed by a centred moving average of `smooth_s` seconds (q_t, with
running max m_t = max_{s<=t} q_s and drawdown dd_t = m_t - q_t):
  max_progress       m_T, the furthest the episode got
  final_progress     q_T, where it ended
  time_to_max_s      time of the diagnosis frame d (below): when the episode last made real progress
  progress_per_s     (q_d - q_0) / t_d: progress gained per second on the way to its best
  regressions        times progress fell at least `regression_delta` below its running max (a fall
                     starts at dd >= delta and ends when dd < delta / 2, so noise at the threshold is
                     not counted twice)
  regression_depth   max dd: the deepest fall from the best so far
  stalled_s          seconds inside stalls: runs of at least `stall_s` in which q stays within a band
                     `stall_eps` wide while below `success_threshold` (a finished task waiting is not stalling)
  consistency        share of frames not inside a regression (1: progress never went back)
  voc                Spearman of raw progress vs time (GVL's value-order correlation); for a successful
                     episode the textbook path consistency, reported for every episode
  process_score      in [0, 1], what policies are ranked by:
                         achievement = (max_progress + final_progress) / 2
                         process_score = achievement * (0.5 + 0.25 * consistency + 0.25 * (1 - stalled_fraction))
                     reaching far and staying there is most of it; going back and standing still each
                     cost up to a quarter of it.

Diagnosis (failures): the diagnosis frame d is the first frame after which the episode never again
exceeds its running max by more than `eps` (d = min{t : max_{s>t} q_s <= m_t + eps}; q_d = m_d, the
frame of its final best). The judge reports d, its time, the stage the episode failed in: the model's
stage at the peak of q (argmax of the stage probabilities averaged over the smoothing window around
argmax_t q_t, the furthest point, at or just after d: a drop shortly after a stage began still counts in
that stage, where d, which needs `eps` of new progress, would name the one before), whether the episode
then `stalled` (ended within `regression_delta` of its best) or `regressed` (fell further), and a
thumbnail of frame d.

Checks where ground truth exists (sim datasets: success labels, true stage annotations):
  stall_stage_agreement   share of failed episodes whose diagnosed stage is the true failure stage: the
                          highest stage the annotation reached (a cube dropped during transport falls
                          back to grasp in the annotation, yet transport is where it failed)
  policy_rank_agreement   Spearman between per-policy mean process score and true success rate
  outcome_agreement       share of labelled episodes where final progress > success_threshold matches the label

Writes under `out/` (default `runs/judge/<dataset name>`):
  judge.json           config, every episode's row, per-policy summary, checks (atomically)
  episodes.csv         one line per judged episode
  curves/episode_N.png progress (raw, smoothed, running max), the model's stages shaded, the annotated and
                       predicted stages as bands underneath, the diagnosis frame marked
  videos/episode_N.mp4 the first `video_episodes` failed episodes, with progress and stage overlaid
  report.html          one self-contained page: summary tables, checks, each episode's curve, diagnosis
                       thumbnail and video (embedded for the filmed failures, else a link into the dataset)
Policies are the values of the episodes' `info[group_by]` (`info["policy"]` by convention); a dataset
without them is one group, `all`.
"""

from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolearn.errors import ConfigError, RobolearnError

CHUNK_EPISODES = 64  # episodes decoded and scored at a time (bounds memory on big datasets)
SINGLE_GROUP = "all"  # the group of a dataset whose episodes do not name their policy
CSV_COLUMNS = ("episode", "policy", "length", "duration_s", "success", "success_source", "success_label",
               "predicted_success", "process_score", "max_progress", "final_progress", "time_to_max_s",
               "progress_per_s", "regressions", "regression_depth", "stalled_s", "stalled_fraction", "consistency",
               "voc", "diagnosis_frame", "diagnosis_time_s", "diagnosis_stage", "diagnosis_kind",
               "true_failure_stage", "recorded_failure")


class JudgeError(RobolearnError):
    """The dataset and the reward model cannot be judged together (the message says why and the fix)."""


@dataclass
class JudgeConfig:
    """What `robolearn judge` judges and how."""

    dataset: str = ""
    """dataset directory of the recorded episodes"""
    reward: str = ""
    """progress model checkpoint or its run directory (`robolearn train reward`)"""
    out: str = ""
    """output directory; empty: runs/judge/<dataset name>"""
    episodes: list[int] = field(default_factory=list)
    """episodes to judge; empty: all"""
    success_threshold: float = 0.9
    """final progress above which an episode without a success label counts as a success"""
    smooth_s: float = 0.15
    """centred moving-average window applied to progress before the process figures, s (0: none)"""
    eps: float = 0.02
    """progress within this of the running max is no new progress (the diagnosis frame)"""
    stall_s: float = 1.0
    """a stall lasts at least this long, s"""
    stall_eps: float = 0.02
    """... while progress stays within a band this wide"""
    regression_delta: float = 0.1
    """a regression: progress falls at least this far below its running max"""
    group_by: str = "policy"
    """episode info key naming the policy that produced the episode (summary per value)"""
    camera: str = ""
    """camera for thumbnails and videos; empty: the first camera the model reads (else the dataset's first)"""
    video_episodes: int = 4
    """failed episodes whose video (with progress overlaid) is embedded in report.html"""
    report: bool = True
    """write curves, videos and report.html; false: judge.json and episodes.csv only (benchmarks)"""
    device: str = "auto"
    """reward model device: auto (cuda when present), cpu, cuda"""
    progress: bool = True
    """show progress bars"""

    def validate(self) -> None:
        if not self.dataset or not self.reward:
            raise ConfigError("judge: name the dataset and the progress model, e.g. --dataset data/pick_place_eval "
                              "--reward runs/reward/pick_place")
        for name in ("success_threshold", "eps", "stall_eps", "regression_delta"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ConfigError(f"judge: {name}={v} must be in (0, 1] (progress runs from 0 to 1)")
        for name in ("smooth_s", "stall_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"judge: {name}={getattr(self, name)} must be >= 0 seconds")
        if self.video_episodes < 0:
            raise ConfigError(f"judge: video_episodes={self.video_episodes} must be >= 0")


# ---- one progress curve ---------------------------------------------------------------------------


def smooth(progress: np.ndarray, frames: int) -> np.ndarray:
    """Centred moving average over `frames` frames (made odd), edges padded with the end values."""
    p = np.asarray(progress, np.float64)
    k = max(1, int(frames)) | 1
    if k == 1 or len(p) < 2:
        return p.copy()
    h = k // 2
    padded = np.concatenate([np.full(h, p[0]), p, np.full(h, p[-1])])
    c = np.concatenate([[0.0], np.cumsum(padded)])
    return (c[k:] - c[:-k]) / k


def diagnosis_frame(q: np.ndarray, eps: float) -> int:
    """First frame after which progress never again exceeds its running max by more than `eps`."""
    q = np.asarray(q, np.float64)
    run_max = np.maximum.accumulate(q)
    after = np.concatenate([np.maximum.accumulate(q[::-1])[::-1][1:], [-np.inf]])  # max over s > t
    return int(np.flatnonzero(after <= run_max + eps)[0])


def regression_runs(q: np.ndarray, delta: float) -> list[tuple[int, int]]:
    """(first, last) frames of each fall of at least `delta` below the running max (ends below delta / 2)."""
    dd = np.maximum.accumulate(q) - q
    runs, start = [], None
    for t, d in enumerate(dd):
        if start is None and d >= delta:
            start = t
        elif start is not None and d < delta / 2:
            runs.append((start, t - 1))
            start = None
    if start is not None:
        runs.append((start, len(q) - 1))
    return runs


def stall_runs(q: np.ndarray, eps: float, min_frames: int, below: float) -> list[tuple[int, int]]:
    """(first, last) frames of each run of at least `min_frames` frames within a band `eps` wide, below `below`."""
    runs, i, n = [], 0, len(q)
    while i < n:
        lo = hi = q[i]
        j = i
        while j + 1 < n and max(hi, q[j + 1]) - min(lo, q[j + 1]) < eps:
            j += 1
            lo, hi = min(lo, q[j]), max(hi, q[j])
        if j - i + 1 >= max(min_frames, 2) and hi < below:
            runs.append((i, j))
        i = j + 1
    return runs


def process_figures(progress: np.ndarray, fps: float, cfg: JudgeConfig) -> dict[str, Any]:
    """The process figures of one episode's progress (T,) (see the module docstring); also `curve` (the
    smoothed progress) and the runs found, for plots."""
    from robolearn.rewards.metrics import spearman

    raw = np.asarray(progress, np.float64)
    n = len(raw)
    q = smooth(raw, round(cfg.smooth_s * fps))
    run_max = np.maximum.accumulate(q)
    d = diagnosis_frame(q, cfg.eps)
    regs = regression_runs(q, cfg.regression_delta)
    stalls = stall_runs(q, cfg.stall_eps, round(cfg.stall_s * fps), cfg.success_threshold)
    in_reg = sum(e - s + 1 for s, e in regs)
    stalled = sum(e - s + 1 for s, e in stalls)
    consistency = 1.0 - in_reg / n
    stalled_fraction = stalled / n
    achievement = 0.5 * (run_max[-1] + q[-1])
    voc = spearman(raw, np.arange(n)) if n >= 2 else float("nan")
    return {
        "max_progress": float(run_max[-1]),
        "final_progress": float(q[-1]),
        "time_to_max_s": d / fps,
        "progress_per_s": float((q[d] - q[0]) / max(d / fps, 1.0 / fps)),
        "regressions": len(regs),
        "regression_depth": float((run_max - q).max()),
        "stalled_s": stalled / fps,
        "stalled_fraction": stalled_fraction,
        "consistency": consistency,
        "voc": None if math.isnan(voc) else voc,
        "process_score": float(np.clip(achievement * (0.5 + 0.25 * consistency + 0.25 * (1.0 - stalled_fraction)),
                                       0.0, 1.0)),
        "diagnosis_frame": d,
        "curve": q,
        "regression_runs": regs,
        "stall_runs": stalls,
    }


def stage_at(scores: dict[str, np.ndarray], frame: int, half_window: int) -> int | None:
    """The model's stage at `frame`: argmax of the stage probabilities averaged over frame +- half_window
    (the progress smoothing window), or the stage output; None for a model without stages."""
    if "stage_probs" in scores:
        probs = scores["stage_probs"]
        return int(probs[max(0, frame - half_window):frame + half_window + 1].mean(0).argmax())
    if "stage" in scores:
        return int(scores["stage"][frame])
    return None


# ---- ground truth ---------------------------------------------------------------------------------


def _meta(dataset):
    """The metadata (success labels, stage annotations) of a DatasetReader, a DatasetMeta (or anything with
    `success(ep)`, `stages(ep)` and `stage_names`) or a dataset directory."""
    from robolearn.data.dataset import DatasetMeta

    if hasattr(dataset, "meta"):
        return dataset.meta
    if all(hasattr(dataset, a) for a in ("success", "stages", "stage_names")):
        return dataset
    return DatasetMeta.load(dataset)


def true_failure_stage(meta, ep: int) -> str | None:
    """The highest stage episode `ep`'s annotation reached (None when it has no annotation)."""
    ann = meta.stages(int(ep))
    names = meta.stage_names
    if ann is None or not names:
        return None
    return names[int(max(names.index(n) for n in ann.names))]


def stall_stage_agreement(rows: list[dict[str, Any]], dataset) -> dict[str, Any]:
    """Share of the truly failed episodes (success label False, stage annotated) among `rows` whose
    diagnosed stage (`diagnosis_stage`) is their true failure stage (`true_failure_stage`).

    dataset: the dataset the rows judge (DatasetMeta, DatasetReader or directory). Returns
    {agreement (None without such episodes), failed_episodes, matches, episodes: [{episode, true_stage,
    judged_stage, agree}]}."""
    meta = _meta(dataset)
    details = []
    for r in rows:
        ep = int(r["episode"])
        if meta.success(ep) is not False:
            continue
        truth = true_failure_stage(meta, ep)
        if truth is None:
            continue
        judged = r.get("diagnosis_stage")
        details.append({"episode": ep, "true_stage": truth, "judged_stage": judged, "agree": judged == truth})
    matches = sum(d["agree"] for d in details)
    return {"agreement": matches / len(details) if details else None, "failed_episodes": len(details),
            "matches": matches, "episodes": details}


def policy_rank_agreement(summary: dict[str, Any]) -> dict[str, Any]:
    """Spearman between per-policy mean process score and per-policy true success rate.

    summary: a judge summary ({"policies": {name: {...}}}) or the {name: {...}} mapping itself, each with
    `mean_process_score` and `true_success_rate` (policies without either are left out). Returns
    {spearman (None with fewer than two policies or a constant side), policies: [names used]}."""
    from robolearn.rewards.metrics import spearman

    groups = summary.get("policies", summary)
    used = [name for name, g in groups.items()
            if g.get("mean_process_score") is not None and g.get("true_success_rate") is not None]
    rho = spearman(np.array([groups[n]["mean_process_score"] for n in used]),
                   np.array([groups[n]["true_success_rate"] for n in used]))
    return {"spearman": None if math.isnan(rho) else rho, "policies": used}


def outcome_agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Share of labelled episodes where final progress > threshold says what the label says."""
    lab = [r for r in rows if r["success_label"] is not None]
    hits = sum(r["predicted_success"] == r["success_label"] for r in lab)
    return {"agreement": hits / len(lab) if lab else None, "labelled_episodes": len(lab)}


# ---- summaries ------------------------------------------------------------------------------------


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def group_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures of a group of judged episodes (one policy's, or all)."""
    labelled = [r["success_label"] for r in rows if r["success_label"] is not None]
    ok = [r for r in rows if r["success"]]
    failed = [r for r in rows if not r["success"]]
    return {
        "episodes": len(rows),
        "successes": len(ok),
        "success_rate": len(ok) / len(rows) if rows else None,
        "labelled": len(labelled),
        "true_success_rate": sum(labelled) / len(labelled) if labelled else None,
        "mean_process_score": _mean(r["process_score"] for r in rows),
        "mean_max_progress": _mean(r["max_progress"] for r in rows),
        "mean_final_progress": _mean(r["final_progress"] for r in rows),
        "mean_progress_per_s": _mean(r["progress_per_s"] for r in rows),
        "mean_regressions": _mean(r["regressions"] for r in rows),
        "mean_stalled_s": _mean(r["stalled_s"] for r in rows),
        "mean_consistency_successes": _mean(r["consistency"] for r in ok),
        "failure_stages": dict(Counter(r["diagnosis_stage"] or "unknown" for r in failed).most_common()),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{policies: {name: group_summary}, overall: group_summary}, policies in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["policy"], []).append(r)
    return {"policies": {name: group_summary(g) for name, g in groups.items()}, "overall": group_summary(rows)}


# ---- checks of the inputs -------------------------------------------------------------------------


def model_fps(model) -> float | None:
    """The frame rate the reward model was trained at, from its metadata: `fps`, else the recorded env's
    control_hz, else the training dataset's info.json where it still exists; None when unknown."""
    from robolearn.data.format import INFO_PATH, read_json

    meta = model.metadata or {}
    if meta.get("fps"):
        return float(meta["fps"])
    env = meta.get("env")
    if isinstance(env, dict) and env.get("control_hz"):
        return float(env["control_hz"])
    ds = meta.get("dataset")
    if isinstance(ds, str) and (Path(ds) / INFO_PATH).is_file():
        fps = read_json(Path(ds) / INFO_PATH, "").get("fps")
        return float(fps) if isinstance(fps, int | float) else None
    return None


def check_inputs(model, reader, cfg: JudgeConfig) -> None:
    """Raise JudgeError unless the model estimates progress and the dataset has what it reads, at its rate."""
    from robolearn.rewards import check_stages

    if not model.has_progress:
        raise JudgeError(f"reward model {cfg.reward} ({model.name}) does not estimate progress; the judge needs a "
                         "progress model: train one with `robolearn train reward --dataset DIR`")
    missing = [k for k in model.config.obs_keys if k not in reader.features]
    if missing:
        raise JudgeError(f"{cfg.dataset} lacks {', '.join(missing)}, which the reward model {cfg.reward} reads "
                         f"({', '.join(model.config.obs_keys)}); the dataset has {', '.join(reader.features)}. "
                         "Judge episodes recorded with those cameras and sensors (e.g. `robolearn collect "
                         f"cameras=[...]`), or train a reward model on this dataset's features "
                         f"(`robolearn train reward --dataset {cfg.dataset}`)")
    for k in model.config.obs_keys:
        want, have = tuple(model.features[k].shape), tuple(reader.features[k].shape)
        if want != have:
            raise JudgeError(f"{cfg.dataset}: feature {k!r} has shape {list(have)}, but the reward model was trained "
                             f"on {list(want)}; record at the model's size (e.g. image_size=[{want[0]},{want[1]}] for "
                             "a camera) or train a reward model on this dataset")
    fps = model_fps(model)
    if fps is not None and abs(fps - reader.fps) > 1e-6:
        raise JudgeError(f"{cfg.dataset} is recorded at {reader.fps} fps, but the reward model was trained at "
                         f"{fps:g} fps; its windows ({model.config.n_frames} frames {model.config.frame_stride} steps "
                         "apart) would span another stretch of time. Judge episodes recorded at the model's rate, or "
                         "train a reward model at this one")
    if reader.meta.stage_names and model.has_stages:
        check_stages(model, reader.meta.stage_names, f"dataset {cfg.dataset}")


def pick_episodes(reader, cfg: JudgeConfig) -> tuple[list[int], list[dict[str, Any]]]:
    """(episodes to judge, skipped: [{episode, reason}]) after checking the requested indices."""
    from robolearn.data.format import DatasetError

    n = reader.num_episodes
    if n == 0:
        raise DatasetError(f"{cfg.dataset}: the dataset holds no episodes to judge")
    wanted = list(dict.fromkeys(int(e) for e in cfg.episodes)) if cfg.episodes else list(range(n))
    bad = [e for e in wanted if not 0 <= e < n]
    if bad:
        raise DatasetError(f"{cfg.dataset}: episodes {bad} do not exist (the dataset has episodes 0..{n - 1}); "
                           "fix episodes=[...]")
    skipped = [{"episode": e, "reason": "zero-length episode (no frames)"} for e in wanted if reader.lengths[e] == 0]
    for s in skipped:
        warnings.warn(f"judge: {cfg.dataset} episode {s['episode']} has no frames; skipped", stacklevel=2)
    keep = [e for e in wanted if reader.lengths[e] > 0]
    if not keep:
        raise DatasetError(f"{cfg.dataset}: every episode asked for ({wanted[:10]}{' ...' if len(wanted) > 10 else ''})"
                           " has zero length; there are no frames to judge")
    return keep, skipped


# ---- the judge ------------------------------------------------------------------------------------


def judge_episode(ep: int, scores: dict[str, np.ndarray], reader, stage_names: list[str],
                  cfg: JudgeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row, curve) of one episode: the row as in judge.json, the curve (arrays) for its plot."""
    meta, fps = reader.meta, float(reader.fps)
    info = meta.episode_info(ep)
    fig = process_figures(scores["progress"], fps, cfg)
    label = meta.success(ep)
    predicted = bool(fig["final_progress"] > cfg.success_threshold)
    success = predicted if label is None else bool(label)
    group = info.get(cfg.group_by)
    row: dict[str, Any] = {
        "episode": int(ep),
        "policy": SINGLE_GROUP if group is None else str(group),
        "length": int(reader.lengths[ep]),
        "duration_s": int(reader.lengths[ep]) / fps,
        "success": success,
        "success_source": "progress" if label is None else "label",
        "success_label": label,
        "predicted_success": predicted,
        **{k: v for k, v in fig.items() if k not in ("curve", "regression_runs", "stall_runs", "diagnosis_frame")},
        "diagnosis_frame": None, "diagnosis_time_s": None, "diagnosis_progress": None, "diagnosis_stage": None,
        "diagnosis_stage_index": None, "diagnosis_kind": None,
        "true_failure_stage": None if success else true_failure_stage(meta, ep),
        "recorded_failure": info.get("failure"),
        "curve": None, "video": None,  # report files, relative to out (set when the report is written)
    }
    d = fig["diagnosis_frame"]
    if not success:
        q = fig["curve"]
        k = stage_at(scores, int(np.argmax(q)), round(cfg.smooth_s * fps) // 2)
        row.update(diagnosis_frame=d, diagnosis_time_s=d / fps, diagnosis_progress=float(q[d]),
                   diagnosis_stage_index=k, diagnosis_stage=stage_names[k] if k is not None and k < len(stage_names)
                   else None,
                   diagnosis_kind="regressed" if q.max() - q[-1] >= cfg.regression_delta else "stalled")
    row = {k: _tidy(v) for k, v in row.items()}
    curve = {"progress": np.asarray(scores["progress"]), "smoothed": fig["curve"],
             "regression_runs": fig["regression_runs"], "stall_runs": fig["stall_runs"]}
    if "stage" in scores:
        curve["stage"] = np.asarray(scores["stage"])
    ann = meta.stages(ep)
    if ann is not None and meta.stage_names:
        curve["label_stage"] = ann.stage_ids(int(reader.lengths[ep]), meta.stage_names)
    return row, curve


def _tidy(v: Any) -> Any:
    """JSON-stable scalars: numpy -> Python, floats rounded to 6 decimals, NaN -> None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return None if math.isnan(v) else round(v, 6)
    return v


def run(cfg: JudgeConfig) -> dict[str, Any]:
    """Judge the episodes, write the report (see the module docstring) and return judge.json's content."""
    from tqdm import tqdm

    from robolearn.config import config_to_dict
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.format import atomic_write_json, to_jsonable
    from robolearn.inference.engine import pick_device
    from robolearn.inference.reward import score_episodes
    from robolearn.rewards import load_reward_model
    from robolearn.rewards.frames import EpisodeFrames

    cfg.validate()
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    model = load_reward_model(cfg.reward, device)
    reader = DatasetReader(cfg.dataset)
    check_inputs(model, reader, cfg)
    episodes, skipped = pick_episodes(reader, cfg)
    camera = _camera(model, reader, cfg)
    stage_names = list(model.stage_names or reader.meta.stage_names)
    out = Path(cfg.out or f"runs/judge/{Path(cfg.dataset).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)

    rows, curves = [], {}
    bar = tqdm(total=len(episodes), desc="judge", unit="ep", disable=not cfg.progress)
    for lo in range(0, len(episodes), CHUNK_EPISODES):
        chunk = episodes[lo:lo + CHUNK_EPISODES]
        table = EpisodeFrames(reader, model.config.obs_keys, chunk)
        for ep, scores in zip(chunk, score_episodes(model, table, device)):
            row, curve = judge_episode(ep, scores, reader, stage_names, cfg)
            rows.append(row)
            if cfg.report:
                curves[ep] = curve
            bar.update(1)
    bar.close()

    summary = summarize(rows)
    checks = {"stall_stage_agreement": stall_stage_agreement(rows, reader.meta),
              "policy_rank_agreement": policy_rank_agreement(summary),
              "outcome_agreement": outcome_agreement(rows)}
    files = {"json": str(out / "judge.json"), "csv": str(out / "episodes.csv")}
    write_csv(out / "episodes.csv", rows)
    result = {"dataset": str(reader.root.resolve()), "reward": str(Path(cfg.reward).resolve()), "out": str(out),
              "camera": camera, "stage_names": stage_names, "fps": reader.fps, "episodes": len(rows),
              "skipped": skipped, "summary": summary, "checks": checks, "rows": rows, "files": files,
              "config": config_to_dict(cfg)}
    if cfg.report:
        files["report"] = str(write_report(out, result, curves, reader, cfg))
    result["wall_s"] = time.perf_counter() - t0
    atomic_write_json(out / "judge.json", to_jsonable(result), fsync=False)
    return result


def _camera(model, reader, cfg: JudgeConfig) -> str | None:
    if cfg.camera:
        key = cfg.camera if cfg.camera.startswith("observation.images.") else f"observation.images.{cfg.camera}"
        if key not in reader.video_keys:
            raise JudgeError(f"judge: camera {cfg.camera!r} is not in {cfg.dataset}; it has "
                             f"{', '.join(reader.video_keys) or 'no cameras'}")
        return key
    mine = [k for k in model.image_keys if k in reader.video_keys]
    return (mine or reader.video_keys or [None])[0]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """episodes.csv: one line per judged episode, the columns of CSV_COLUMNS (empty for None)."""
    from robolearn.data.format import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r[c] for c in CSV_COLUMNS])
    atomic_write_bytes(path, buf.getvalue().encode(), fsync=False)
    return path


# ---- the report -----------------------------------------------------------------------------------


def plot_episode(curve: dict[str, Any], row: dict[str, Any], stage_names: list[str], fps: float, path: Path) -> Path:
    """One episode's panel: progress (raw, smoothed, running max) over the model's stages shaded, stalls
    hatched, the diagnosis frame marked; below it the predicted and annotated stages as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robolearn.rewards.plot import _shade

    bands = [("model", curve["stage"])] if "stage" in curve else []
    if "label_stage" in curve:
        bands.append(("annotated", curve["label_stage"]))
    fig = plt.figure(figsize=(6.4, 3.2 + 0.35 * len(bands)), dpi=80)
    grid = fig.add_gridspec(1 + len(bands), 1, height_ratios=[6] + [0.7] * len(bands), hspace=0.12)
    ax = fig.add_subplot(grid[0])
    t = np.arange(len(curve["progress"])) / fps
    dt = 1.0 / fps
    if "stage" in curve:
        _shade(ax, t, curve["stage"], stage_names)
    for s, e in curve["stall_runs"]:
        ax.axvspan(t[s], t[e] + dt, ymin=0.0, ymax=1.0, facecolor="none", edgecolor="grey", hatch="//", lw=0)
    q = curve["smoothed"]
    ax.plot(t, curve["progress"], color="#999999", lw=0.8, label="progress")
    ax.plot(t, q, color="#d62728", lw=1.8, label="smoothed")
    ax.plot(t, np.maximum.accumulate(q), color="black", lw=0.9, ls=":", label="running max")
    if row["diagnosis_frame"] is not None:
        d = row["diagnosis_frame"]
        ax.axvline(t[d], color="black", lw=1.0, ls="--")
        ax.plot([t[d]], [q[d]], marker="v", color="black", ms=8)
        ax.annotate(f"{row['diagnosis_kind']} in {row['diagnosis_stage']}", (t[d], q[d]), xytext=(4, 6),
                    textcoords="offset points", fontsize=8)
    ax.set_ylim(-0.02, 1.05)
    ax.set_ylabel("progress")
    outcome = "success" if row["success"] else "failure"
    ax.set_title(f"episode {row['episode']} ({row['policy']}): {outcome} [{row['success_source']}], "
                 f"process {row['process_score']:.2f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax.tick_params(labelbottom=not bands)
    for i, (name, stage) in enumerate(bands):
        b = fig.add_subplot(grid[1 + i], sharex=ax)
        _bands(b, t, stage, stage_names)
        b.set_yticks([])
        b.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        if row["diagnosis_frame"] is not None:
            b.axvline(t[row["diagnosis_frame"]], color="black", lw=1.0, ls="--")
        b.tick_params(labelbottom=i == len(bands) - 1, labelsize=7)
    fig.axes[-1].set_xlabel("time (s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _bands(ax, t: np.ndarray, stage: np.ndarray, names: list[str]) -> None:
    """Stages as solid coloured spans, named where there is room."""
    from robolearn.rewards.labels import segments
    from robolearn.rewards.plot import STAGE_COLOURS

    dt = t[1] - t[0] if len(t) > 1 else 1.0
    span = (t[-1] + dt - t[0]) if len(t) else 1.0
    for k, s, e in segments(stage):
        ax.axvspan(t[s], t[e] + dt, color=STAGE_COLOURS[k % len(STAGE_COLOURS)], alpha=0.6, lw=0)
        if (t[e] + dt - t[s]) / span > 0.1 and k < len(names):
            ax.text((t[s] + t[e] + dt) / 2, 0.5, names[k], ha="center", va="center", fontsize=6)
    ax.set_ylim(0, 1)


def _upscale(frames: np.ndarray, min_side: int = 160) -> np.ndarray:
    """(..., H, W, 3) frames scaled up by a whole factor (nearest) until the short side is >= min_side."""
    import cv2

    h, w = frames.shape[-3:-1]
    f = max(1, -(-min_side // min(h, w)))
    if f == 1:
        return frames
    flat = frames.reshape(-1, h, w, 3)
    up = np.stack([cv2.resize(x, (w * f, h * f), interpolation=cv2.INTER_NEAREST) for x in flat])
    return up.reshape(*frames.shape[:-3], h * f, w * f, 3)


def _episode_video(reader, camera: str, ep: int, row: dict, curve: dict, stage_names: list[str],
                   path: Path) -> Path:
    """An mp4 of the episode's camera stream with time, progress and the model's stage written on it."""
    from robolearn.video import overlay_text, write_mp4

    n = int(reader.lengths[ep])
    frames = _upscale(reader.video_frames(camera, ep, np.arange(n)), 192)
    d = row["diagnosis_frame"]
    out = []
    for i, f in enumerate(frames):
        k = int(curve["stage"][i]) if "stage" in curve else None
        lines = [f"t={i / reader.fps:.2f}s p={curve['progress'][i]:.2f}"]
        if k is not None and k < len(stage_names):
            lines.append(stage_names[k])
        if d is not None and i >= d:
            lines.append("after diagnosis")
        out.append(overlay_text(f.copy(), lines, ok=False))
    return write_mp4(path, np.stack(out), reader.fps)


def _video_link(reader, camera: str, ep: int) -> str:
    """A link into the dataset's own video of the episode (a media fragment selects its span, since a
    LeRobot v3 file may hold several episodes); it works where the dataset is."""
    from robolearn.eval.html import escape

    row = reader.meta.episode_rows[ep]
    path = reader.meta.video_path(row, camera).resolve()
    t0 = float(row[f"videos/{camera}/from_timestamp"])
    t1 = t0 + int(reader.lengths[ep]) / reader.fps
    return f'<a href="{escape(path.as_uri())}#t={t0:.3f},{t1:.3f}">dataset video</a>'


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def summary_table(summary: dict[str, Any]) -> str:
    """The per-policy table (and an `overall` row when there are several policies) as HTML."""
    from robolearn.eval.html import table

    header = ["policy", "episodes", "success rate", "true success rate", "mean process score", "mean max progress",
              "mean final progress", "progress / s", "regressions", "stalled (s)", "consistency (successes)",
              "failure stages"]
    groups = dict(summary["policies"])
    if len(groups) > 1:
        groups["overall"] = summary["overall"]
    body = []
    for name, g in groups.items():
        stages = ", ".join(f"{k} {v}" for k, v in g["failure_stages"].items()) or "-"
        body.append([name, g["episodes"], _fmt(g["success_rate"]), _fmt(g["true_success_rate"]),
                     _fmt(g["mean_process_score"], 3), _fmt(g["mean_max_progress"]), _fmt(g["mean_final_progress"]),
                     _fmt(g["mean_progress_per_s"], 3), _fmt(g["mean_regressions"]), _fmt(g["mean_stalled_s"]),
                     _fmt(g["mean_consistency_successes"]), stages])
    return table(header, body)


def write_report(out: Path, result: dict[str, Any], curves: dict[int, dict], reader, cfg: JudgeConfig) -> Path:
    """Curves, failure videos and the self-contained report.html; returns the page's path."""
    from tqdm import tqdm

    from robolearn.eval.html import Raw, escape, figure, img, section, table, video, write_page

    rows, names, camera = result["rows"], result["stage_names"], result["camera"]
    fps = float(reader.fps)
    filmed = [r["episode"] for r in rows if not r["success"]][:cfg.video_episodes] if camera else []
    thumbs, videos, pngs = {}, {}, {}
    for r in tqdm(rows, desc="judge report", unit="ep", disable=not cfg.progress):
        ep = r["episode"]
        r["curve"] = f"curves/episode_{ep:06d}.png"
        pngs[ep] = plot_episode(curves[ep], r, names, fps, out / r["curve"])
        if camera and r["diagnosis_frame"] is not None:
            thumbs[ep] = _upscale(reader.video_frames(camera, ep, np.array([r["diagnosis_frame"]]))[0])
        if ep in filmed:
            r["video"] = f"videos/episode_{ep:06d}.mp4"
            videos[ep] = _episode_video(reader, camera, ep, r, curves[ep], names, out / r["video"])

    checks = result["checks"]
    ss, pr, oc = checks["stall_stage_agreement"], checks["policy_rank_agreement"], checks["outcome_agreement"]
    check_rows = [
        ["stall-stage agreement", _fmt(ss["agreement"]), f"{ss['matches']} of {ss['failed_episodes']} failed "
         "episodes diagnosed in the highest stage their annotation reached"],
        ["policy-rank agreement", _fmt(pr["spearman"]), f"Spearman of mean process score vs true success rate over "
         f"{len(pr['policies'])} policies"],
        ["outcome agreement", _fmt(oc["agreement"]), f"final progress > {cfg.success_threshold} vs the success label "
         f"over {oc['labelled_episodes']} labelled episodes"],
    ]
    head = (f"<p class='small'>dataset {escape(result['dataset'])}<br>progress model {escape(result['reward'])}<br>"
            f"{result['episodes']} episodes judged at {reader.fps} fps"
            + (f", {len(result['skipped'])} skipped (zero length)" if result["skipped"] else "")
            + f"; camera {escape(str(camera))}. process score = (max + final progress) / 2 x (0.5 + 0.25 consistency "
            "+ 0.25 (1 - stalled fraction)); the diagnosis frame is the first after which progress never again "
            f"exceeds its running max by more than {cfg.eps}.</p>")
    ep_rows = []
    for r in rows:
        ok = "ok" if r["success"] else "bad"
        diag = (f"{r['diagnosis_kind']} in {r['diagnosis_stage']} at {r['diagnosis_time_s']:.2f}s "
                f"(frame {r['diagnosis_frame']})" if r["diagnosis_frame"] is not None else "-")
        ep_rows.append([r["episode"], r["policy"],
                        Raw(f"<span class='{ok}'>{'success' if r['success'] else 'failure'}</span> "
                            f"<span class='small'>({r['success_source']})</span>"),
                        _fmt(r["process_score"], 3), _fmt(r["max_progress"]), _fmt(r["final_progress"]),
                        r["regressions"], _fmt(r["stalled_s"]), diag, _fmt(r["true_failure_stage"]),
                        Raw(img(thumbs[r["episode"]], width="64")) if r["episode"] in thumbs else "-"])
    episodes_table = table(["episode", "policy", "outcome", "process", "max", "final", "regressions", "stalled (s)",
                            "diagnosis", "true failure stage", "frame"], ep_rows)

    def card(r: dict) -> str:
        ep = r["episode"]
        parts = [figure(img(pngs[ep], width="520"), f"episode {ep}")]
        if ep in thumbs:
            parts.append(figure(img(thumbs[ep], width="160"),
                                f"diagnosis frame {r['diagnosis_frame']} ({r['diagnosis_stage']})"))
        if ep in videos:
            parts.append(video(videos[ep], f"episode {ep}", width=240))
        elif camera:
            parts.append(figure(_video_link(reader, camera, ep), "video"))
        return "<div>" + "".join(parts) + "</div>"

    failed = [r for r in rows if not r["success"]]
    ok_rows = [r for r in rows if r["success"]]
    body = head + section("Policies", summary_table(result["summary"]))
    body += section("Checks against ground truth", table(["check", "value", "what"], check_rows))
    body += section("Episodes", episodes_table)
    body += section(f"Failed episodes ({len(failed)})", "".join(card(r) for r in failed) or "<p>none</p>")
    body += section(f"Successful episodes ({len(ok_rows)})", "".join(card(r) for r in ok_rows) or "<p>none</p>")
    return write_page(out / "report.html", f"robolearn judge: {Path(result['dataset']).name}", body)


# ---- the CLI's printout ---------------------------------------------------------------------------


def format_result(r: dict[str, Any]) -> str:
    """A few lines for the terminal: per-policy figures, the checks, where the report is."""
    lines = [f"judged {r['episodes']} episodes of {r['dataset']}" + (f" ({len(r['skipped'])} skipped)"
                                                                      if r["skipped"] else "")]
    w = max(len(n) for n in r["summary"]["policies"])
    lines.append(f"  {'policy':<{w}}  episodes  success  process  max prog  final prog  stalled s")
    for name, g in r["summary"]["policies"].items():
        lines.append(f"  {name:<{w}}  {g['episodes']:>8}  {_fmt(g['success_rate']):>7}  "
                     f"{_fmt(g['mean_process_score'], 3):>7}  {_fmt(g['mean_max_progress']):>8}  "
                     f"{_fmt(g['mean_final_progress']):>10}  {_fmt(g['mean_stalled_s']):>9}")
    c = r["checks"]
    lines.append(f"  stall-stage agreement {_fmt(c['stall_stage_agreement']['agreement'])} "
                 f"({c['stall_stage_agreement']['failed_episodes']} failed episodes), policy-rank agreement "
                 f"{_fmt(c['policy_rank_agreement']['spearman'])}, outcome agreement "
                 f"{_fmt(c['outcome_agreement']['agreement'])}")
    lines.append(f"  {r['files'].get('report', r['files']['json'])}")
    return "\n".join(lines)


def show(result: dict[str, Any], args) -> None:
    import json

    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_result(result))
