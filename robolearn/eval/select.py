"""`robolearn select`: rank candidate policies for deployment without running them on the robot.

    robolearn select --policies [runs/bc/nominal,runs/bc/heavy_dr] --real-dataset data/real_lift

Each candidate (e.g. BC policies trained on data recorded under different domain randomizations) gets
two numbers, as in VSDR ("Validate on Sim, Detect on Real", Leibovich et al., ICRA 2022,
arXiv:2111.00765), which found an OOD score of fixed real data alone inaccurate and sensitive to the OOD
method, and its combination with an evaluation in sim a better ranker. The combination below is a
simple form of that idea, not the paper's exact score:

  sim_success   success rate over `sim_episodes` seeded sim episodes (`robolearn eval`'s rollout) under
                `sim_randomization`, by default the randomization the policy's own training data was
                recorded with (its env config in the checkpoint metadata);
  ood           how far the REAL recorded observations lie from the policy's TRAINING observations in the
                policy's own feature space (its normalizer, then its encoder: the input of the MLP's last
                layer, the Diffusion Policy's observation encoding):

                    ood = log( mean_q d(q, R) over real windows q / mean_h d(h, R) over held-out train windows h )

                R: feature vectors of windows from most of the training episodes (the reference); the
                held-out windows come from the other training episodes (`HOLDOUT_FRACTION`), so that
                ood ~ 0 when the real data is distributed like the training data, > 0 when it is
                farther from it than unseen training episodes are, and the ratio makes scores of
                policies with different encoders (widths, scales) comparable. d is the distance to the
                k-th nearest reference vector (deep kNN OOD detection, Sun et al., ICML 2022) or the
                Mahalanobis distance to the reference mean under its shrunk covariance (Lee et al.,
                NeurIPS 2018), `ood_method`.

  score         sim_success * exp(-beta * max(ood, 0)): sim success discounted by how unfamiliar the real
                observations look; being closer than unseen training episodes earns no bonus (that is
                already in-distribution). beta = 0 ranks by sim success alone. Ties are broken by the
                higher sim success, then the lower ood.

Writes under `out/` (default `runs/select/<real dataset name>`): selection.json (every figure, the
ranking, definitions, config), table.md (the ranking table), selection.png (sim success vs ood, one
labelled point per policy), report.html (self-contained: table, plot, definitions) and
sim/<policy>/metrics.json (each policy's `robolearn eval` metrics).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from robolearn.errors import ConfigError, RobolearnError
from robolearn.sim.config import RandomizationConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from robolearn.data.dataset import DatasetReader
    from robolearn.policies.base import Policy

HOLDOUT_FRACTION = 0.2
"""share of the training episodes held out of the kNN reference to calibrate ood = 0"""


class SelectError(RobolearnError, ValueError):
    """A candidate policy or the real dataset cannot be scored (missing metadata, features, episodes)."""


@dataclass
class SelectConfig:
    """What `robolearn select` ranks."""

    policies: list[str] = field(default_factory=list)
    """candidate policy checkpoints or training run directories"""
    real_dataset: str = ""
    """dataset of recorded real-robot episodes (LeRobot layout); only its observations are used"""
    sim_episodes: int = 50
    """seeded sim episodes per policy for its sim success"""
    sim_randomization: RandomizationConfig | None = None
    """randomization the sim success is measured under; unset: each policy's own training randomization"""
    task: str = ""
    """task of the sim episodes; empty: the task each policy's training dataset was recorded on"""
    sim_seed: int = 1000
    """base seed of the sim episodes (as `robolearn eval`)"""
    num_envs: int = 0
    """sim environments stepped together; 0: min(sim_episodes, 50)"""
    max_episode_steps: int = 0
    """sim time limit in control steps; 0: the training dataset's, else the task's"""
    ood_method: Literal["knn", "mahalanobis"] = "knn"
    """distance of a feature vector to the training reference: k-th nearest neighbour or Mahalanobis"""
    k: int = 5
    """neighbour whose distance counts, for ood_method=knn"""
    max_frames: int = 2000
    """most observation windows embedded per set (training reference, held-out training, real)"""
    seed: int = 0
    """seed of the held-out episode split and the frame sampling"""
    beta: float = 1.0
    """weight of ood in score = sim_success * exp(-beta * max(ood, 0)); 0: sim success alone"""
    out: str = ""
    """output directory; empty: runs/select/<real dataset name>"""
    device: str = "auto"
    """policy device: auto (cuda when present), cpu, cuda, cuda:N"""
    progress: bool = True
    """show progress bars"""

    def validate(self) -> None:
        if not self.policies:
            raise ConfigError("select: name at least one candidate policy, e.g. --policies [runs/bc/a,runs/bc/b]")
        if not self.real_dataset:
            raise ConfigError("select: name the recorded real episodes, e.g. --real-dataset data/real_lift")
        if self.sim_episodes < 1:
            raise ConfigError(f"select: sim_episodes={self.sim_episodes} must be at least 1")
        if self.num_envs < 0 or self.max_episode_steps < 0:
            raise ConfigError("select: num_envs and max_episode_steps must be >= 0 (0: the default)")
        if self.k < 1:
            raise ConfigError(f"select: k={self.k} must be at least 1")
        if self.max_frames < self.k + 1:
            raise ConfigError(f"select: max_frames={self.max_frames} must exceed k={self.k}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"select: beta={self.beta} must be a finite number >= 0")
        if self.ood_method not in ("knn", "mahalanobis"):
            raise ConfigError(f"select: ood_method={self.ood_method!r} must be knn or mahalanobis")
        if self.sim_randomization is not None:
            from robolearn.sim.randomization import validate

            validate(self.sim_randomization)


# ---- the policy's feature space -----------------------------------------------------------------
# Where each policy type's observation features are: (module, "input" or "output") of a module that
# forward_chunk runs once per batch. A forward hook catches the tensor there and stops the pass, so a
# Diffusion Policy's denoising loop never runs. A new policy type is one register_feature_layer line.
FeatureLayer = Callable[["Policy"], tuple["nn.Module", Literal["input", "output"]]]
_FEATURE_LAYERS: dict[str, FeatureLayer] = {}


def register_feature_layer(policy_type: str, layer: FeatureLayer) -> None:
    _FEATURE_LAYERS[policy_type] = layer


# MLP: the last hidden layer's activations (after GELU; dropout is off in eval mode)
register_feature_layer("mlp", lambda p: (p.net[-1], "input"))
# Diffusion Policy: the global conditioning, [normalized state, per-camera features] per history step
register_feature_layer("diffusion", lambda p: (p.obs_encoder, "output"))


def feature_layer(policy: Policy) -> tuple[nn.Module, Literal["input", "output"]]:
    """The module whose input or output are `policy`'s features; SelectError for an unregistered type."""
    if policy.name not in _FEATURE_LAYERS:
        raise SelectError(f"policy type {policy.name!r} has no feature layer for the ood score; select ranks "
                          f"{', '.join(sorted(_FEATURE_LAYERS))} policies (register_feature_layer adds a type)")
    return _FEATURE_LAYERS[policy.name](policy)


class _Caught(Exception):
    """Raised by the feature hook to stop the forward pass once the features are caught."""


def policy_features(policy: Policy, obs: dict[str, Tensor]) -> Tensor:
    """obs[key]: (B, n_obs_steps, *shape) unnormalized, as `predict_action_chunk` takes them (cameras
    (B, T, 3, H, W) float in [0, 1]) -> (B, E) float32 features of the policy's own encoder."""
    import torch

    module, where = feature_layer(policy)
    caught: dict[str, Tensor] = {}

    def hook(_module, args, output):
        x = args[0] if where == "input" else output
        caught["x"] = x.detach().flatten(1).float()
        raise _Caught

    policy.check_obs(obs, history=True)
    handle = module.register_forward_hook(hook)
    was_training = policy.training
    policy.eval()
    try:
        with torch.inference_mode():
            policy.forward_chunk(policy.normalize_obs(obs))
    except _Caught:
        pass
    finally:
        handle.remove()
        policy.train(was_training)
    if "x" not in caught:
        raise RobolearnError(f"the {policy.name} policy's feature layer did not run in forward_chunk (a bug)")
    return caught["x"]


def embed_dataset(policy: Policy, reader: DatasetReader, episodes: list[int], max_frames: int,
                  rng: np.random.Generator, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """(N, E) features of up to `max_frames` observation windows (n_obs_steps frames ending at a
    uniformly drawn frame) of `episodes` of the dataset, N = min(max_frames, their frames)."""

    from robolearn.data.windows import WindowDataset

    pc = policy.config
    ds = WindowDataset(reader, pc.n_obs_steps, horizon=1, action_offset=0, obs_keys=pc.obs_keys,
                       episodes=episodes)
    n = min(max_frames, len(ds))
    idx = np.sort(rng.choice(len(ds), n, replace=False))
    out = []
    for lo in range(0, n, batch_size):
        batch = ds[idx[lo:lo + batch_size]]
        obs = {k: batch[k].to(device) for k in pc.obs_keys}
        out.append(policy_features(policy, obs).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# ---- distances ------------------------------------------------------------------------------------


def knn_distance(query: np.ndarray, reference: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """query (Q, E), reference (R, E) -> (Q,) Euclidean distance of each query to its k-th nearest
    reference vector (the nearest when R < k)."""
    import torch

    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float64))
    kk = min(k, len(ref))
    out = []
    for lo in range(0, len(query), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query[lo:lo + chunk], np.float64))
        d = torch.cdist(q, ref)
        out.append(d.topk(kk, dim=1, largest=False).values[:, -1].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def mahalanobis_distance(query: np.ndarray, reference: np.ndarray, shrinkage: float = 0.1) -> np.ndarray:
    """query (Q, E), reference (R, E) -> (Q,) Mahalanobis distance to the reference mean under the
    reference covariance shrunk towards its mean variance (Ledoit-Wolf-style, so that few frames or
    constant features, e.g. a fixed gripper, do not make it singular)."""
    ref = np.asarray(reference, np.float64)
    mu = ref.mean(0)
    cov = np.cov(ref - mu, rowvar=False).reshape(ref.shape[1], ref.shape[1])
    scale = max(float(np.trace(cov)) / len(cov), 1e-12)
    cov = (1 - shrinkage) * cov + shrinkage * scale * np.eye(len(cov))
    diff = np.asarray(query, np.float64) - mu
    return np.sqrt(np.einsum("qe,qe->q", diff @ np.linalg.inv(cov), diff).clip(min=0))


def ood_score(reference: np.ndarray, holdout: np.ndarray, real: np.ndarray, method: str, k: int) -> dict[str, float]:
    """ood = log(mean distance of the real features / mean distance of held-out training features),
    each to the training reference; plus both means."""
    if method == "knn":
        dist = lambda q: knn_distance(q, reference, k)  # noqa: E731
    else:
        dist = lambda q: mahalanobis_distance(q, reference)  # noqa: E731
    d_real, d_hold = float(dist(real).mean()), float(dist(holdout).mean())
    ood = math.log(max(d_real, 1e-12) / max(d_hold, 1e-12))
    return {"ood": ood, "distance_real": d_real, "distance_train_holdout": d_hold}


def combined_score(sim_success: float, ood: float, beta: float) -> float:
    """sim_success * exp(-beta * max(ood, 0))."""
    return float(sim_success * math.exp(-beta * max(ood, 0.0)))


# ---- candidates -----------------------------------------------------------------------------------


def training_dataset(policy_dir: str | Path, metadata: dict[str, Any]) -> Path:
    """The dataset a policy was trained on (its checkpoint's metadata["dataset"]), checked to exist."""
    dataset = metadata.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise SelectError(f"policy {policy_dir} has no training dataset in its checkpoint metadata "
                          "(config.json: metadata.dataset), and the ood score compares the real observations with "
                          "the training ones; select policies trained with `robolearn train bc`, or add "
                          '"metadata": {"dataset": "<its training dataset dir>"} to its config.json')
    path = Path(dataset)
    if not (path / "meta" / "info.json").is_file():
        raise SelectError(f"policy {policy_dir} was trained on {dataset}, which is gone or not a dataset; restore "
                          "it there (the ood score needs the training observations)")
    return path


def check_real_features(policy: Policy, name: str, real: DatasetReader) -> None:
    """Raise SelectError unless the real dataset has every feature the policy reads, in its shape."""
    for k in policy.config.obs_keys:
        want = policy.features[k]
        if k not in real.features:
            raise SelectError(f"the real dataset {real.root} has no {k!r}, which policy {name} reads (it has "
                              f"{', '.join(f for f in real.features if f.startswith('observation.'))}); record the "
                              f"real episodes with {k!r}, or leave policies that read it out of --policies")
        got = real.features[k]
        if tuple(got.shape) != tuple(want.shape):
            raise SelectError(f"the real dataset's {k!r} has shape {tuple(got.shape)}; policy {name} was trained "
                              f"on {tuple(want.shape)}. Record the real episodes at the training shape (camera "
                              "image size, state layout) or leave that policy out")


def policy_names(paths: list[str]) -> list[str]:
    """Short unique names: a run directory's name (for <run>/checkpoints/<x>: <run>, or <run>_<x> when x
    is not `last`), else the checkpoint directory's; repeats get #2, #3."""
    names = []
    for p in paths:
        path = Path(p).resolve()
        if path.parent.name == "checkpoints":
            run, ckpt = path.parent.parent.name, path.name
            names.append(run if ckpt == "last" else f"{run}_{ckpt}")
        else:
            names.append(path.name)
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def split_episodes(n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(reference, held-out) training episodes: HOLDOUT_FRACTION of them (at least 1) held out."""
    order = rng.permutation(n)
    h = max(1, round(HOLDOUT_FRACTION * n))
    return sorted(order[h:].tolist()), sorted(order[:h].tolist())


def sim_success(policy_dir: str | Path, cfg: SelectConfig, randomization: RandomizationConfig | None,
                out: Path) -> dict[str, Any]:
    """`robolearn eval` of one policy over cfg.sim_episodes seeded episodes in its recorded env, with
    `randomization` (None: the recorded one); its metrics.json goes to `out`. Returns eval's metrics
    (success_rate, successes, episodes, ci95, env, env_source, ...)."""
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate

    return evaluate(EvalConfig(policy=str(policy_dir), task=cfg.task, episodes=cfg.sim_episodes,
                               num_envs=cfg.num_envs, seed=cfg.sim_seed, max_episode_steps=cfg.max_episode_steps,
                               device=cfg.device, randomization=randomization, out=str(out), progress=cfg.progress))


# ---- the verb -------------------------------------------------------------------------------------


def run(cfg: SelectConfig) -> dict:
    """Score and rank `cfg.policies`; writes selection.json, table.md, selection.png and report.html
    under the output dir and returns the same dict as selection.json."""
    from robolearn.config import config_to_dict
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.format import atomic_write_bytes, atomic_write_json, to_jsonable
    from robolearn.inference.engine import pick_device
    from robolearn.policies import load_policy
    from robolearn.policies.base import read_checkpoint, resolve_checkpoint

    cfg.validate()
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    names = policy_names(cfg.policies)
    # every input is checked before any long work: checkpoints, their datasets, the real dataset's features
    real = DatasetReader(cfg.real_dataset)
    if real.num_episodes == 0:
        raise SelectError(f"the real dataset {cfg.real_dataset} has no episodes; record some real episodes first")
    candidates = []
    for name, path in zip(names, cfg.policies):
        raw, _, _ = read_checkpoint(path)
        train_ds = training_dataset(path, raw.get("metadata") or {})
        policy = load_policy(path, device)
        feature_layer(policy)
        check_real_features(policy, name, real)
        train = DatasetReader(train_ds)
        if train.num_episodes < 2:
            raise SelectError(f"policy {name}'s training dataset {train_ds} has {train.num_episodes} episode(s); "
                              "the ood score holds some training episodes out of its reference, so it needs at least 2")
        candidates.append((name, path, raw["type"], policy, train))

    out = Path(cfg.out) if cfg.out else Path("runs/select") / Path(cfg.real_dataset).resolve().name
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, path, kind, policy, train in candidates:
        rng = np.random.default_rng(cfg.seed)
        ref_eps, hold_eps = split_episodes(train.num_episodes, rng)
        ref = embed_dataset(policy, train, ref_eps, cfg.max_frames, rng, device)
        hold = embed_dataset(policy, train, hold_eps, cfg.max_frames, rng, device)
        feats = embed_dataset(policy, real, list(range(real.num_episodes)), cfg.max_frames, rng, device)
        ood = ood_score(ref, hold, feats, cfg.ood_method, cfg.k)
        sim = sim_success(path, cfg, cfg.sim_randomization, out / "sim" / name)
        rows.append({
            "name": name, "policy": str(path), "checkpoint": str(resolve_checkpoint(path)), "policy_type": kind,
            "training_dataset": str(train.root), "sim_success": sim["success_rate"], "sim_successes": sim["successes"],
            "sim_episodes": sim["episodes"], "sim_ci95": sim["ci95"], "sim_task": sim["task"],
            "sim_randomization": sim["env"]["randomization"], "sim_metrics": sim["metrics"],
            "sim_randomization_source": ("config sim_randomization" if cfg.sim_randomization is not None
                                         else f"the policy's training randomization ({sim['env_source']})"),
            **ood, "feature_dim": int(ref.shape[1]),
            "frames": {"train_reference": len(ref), "train_holdout": len(hold), "real": len(feats)},
            "score": combined_score(sim["success_rate"], ood["ood"], cfg.beta),
        })
    ranked = sorted(rows, key=lambda r: (-r["score"], -r["sim_success"], r["ood"]))
    for i, r in enumerate(ranked):
        r["rank"] = i + 1

    files = {"json": str(out / "selection.json"), "table": str(out / "table.md"), "plot": str(out / "selection.png"),
             "report": str(out / "report.html")}
    result = to_jsonable({
        "selected": ranked[0]["name"],
        "ranking": [r["name"] for r in ranked],
        "policies": ranked,
        "real_dataset": str(real.root),
        "real_episodes": real.num_episodes,
        "definitions": definitions(cfg),
        "wall_s": time.perf_counter() - t0,
        "config": config_to_dict(cfg),
        "out": str(out),
        "files": files,
    })
    atomic_write_bytes(out / "table.md", (markdown_table(result) + "\n").encode())
    plot_selection(result, out / "selection.png")
    write_report(result, out / "report.html", out / "selection.png")
    atomic_write_json(out / "selection.json", result)
    return result


def definitions(cfg: SelectConfig) -> dict[str, str]:
    dist = (f"distance to the k-th nearest training reference vector, k={cfg.k} (deep kNN, Sun et al. 2022)"
            if cfg.ood_method == "knn" else
            "Mahalanobis distance to the training reference mean, shrunk covariance (Lee et al. 2018)")
    return {
        "sim_success": f"success rate over {cfg.sim_episodes} seeded sim episodes (seed {cfg.sim_seed}) under "
                       + ("the configured sim_randomization" if cfg.sim_randomization is not None
                          else "each policy's own training randomization"),
        "ood": "log(mean distance of real windows / mean distance of held-out training-episode windows) in the "
               f"policy's feature space, distance = {dist}; 0: as familiar as unseen training episodes",
        "score": f"sim_success * exp(-{cfg.beta:g} * max(ood, 0))  (VSDR-style: validate on sim, detect on real)",
        "features": "the policy's normalizer, then its encoder: MLP last hidden layer, Diffusion Policy observation "
                    "encoding; windows of n_obs_steps frames",
    }


COLUMNS = ("rank", "policy", "sim success", "95% CI", "ood", "score")


def _table_rows(result: dict) -> list[list[str]]:
    return [[str(r["rank"]), r["name"], f"{r['sim_success']:.1%} ({r['sim_successes']}/{r['sim_episodes']})",
             f"{r['sim_ci95'][0]:.0%}-{r['sim_ci95'][1]:.0%}", f"{r['ood']:+.3f}", f"{r['score']:.3f}"]
            for r in result["policies"]]


def markdown_table(result: dict) -> str:
    rows = [list(COLUMNS), ["---"] * len(COLUMNS), *_table_rows(result)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def format_result(result: dict) -> str:
    """The ranking as a text table plus where the files are (what `robolearn select` prints)."""
    rows = [list(COLUMNS), *_table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines += [f"  selected: {result['selected']}", f"  report:   {result['files']['report']}"]
    return "\n".join(lines)


def show(result: dict, args: Any) -> None:
    import json

    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_result(result))


def plot_selection(result: dict, path: Path) -> Path:
    """Scatter of sim success (y) against ood (x), one labelled point per policy, coloured by score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robolearn.data.format import atomic_write_bytes

    pols = result["policies"]
    x = [r["ood"] for r in pols]
    y = [r["sim_success"] for r in pols]
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    pts = ax.scatter(x, y, c=[r["score"] for r in pols], cmap="viridis", vmin=0, vmax=1, s=60, edgecolors="k")
    for r in pols:
        ax.annotate(f"{r['rank']}. {r['name']}", (r["ood"], r["sim_success"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
    ax.margins(x=0.3)
    lo, hi = ax.get_xlim()
    grid = np.linspace(lo, hi, 200)
    beta = float(result["config"]["beta"])
    for level in (0.2, 0.4, 0.6, 0.8):  # iso-score curves: sim success = level * exp(beta * max(ood, 0))
        ax.plot(grid, level * np.exp(beta * np.maximum(grid, 0.0)), color="0.8", lw=0.7, zorder=0)
        ax.annotate(f"score {level}", (hi, min(level * math.exp(beta * max(hi, 0.0)), 1.05)), fontsize=7,
                    color="0.5", ha="right", va="bottom")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("ood (log distance ratio; 0 = like unseen training episodes)")
    ax.set_ylabel("sim success")
    ax.set_ylim(-0.05, 1.1)
    ax.set_title("candidates: sim success vs ood of the real observations")
    fig.colorbar(pts, ax=ax, label="score")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def describe_randomization(rand: dict) -> str:
    """The fields of a randomization dict (config_to_dict form) that are not off, e.g.
    "physics.mass_scale=[0.8, 1.2]"; "none" when everything is off."""
    from robolearn.config import config_to_dict

    off = config_to_dict(RandomizationConfig())
    changed = [f"{group}.{k}={v}" for group, fields_ in rand.items() for k, v in fields_.items()
               if off.get(group, {}).get(k) != v]
    return ", ".join(changed) or "none"


def write_report(result: dict, path: Path, plot: Path) -> Path:
    from robolearn.eval import html

    rows = _table_rows(result)
    details = [[r["name"], r["policy_type"], r["training_dataset"], f"{r['distance_real']:.4g}",
                f"{r['distance_train_holdout']:.4g}", r["feature_dim"],
                f"{r['frames']['train_reference']}/{r['frames']['train_holdout']}/{r['frames']['real']}",
                describe_randomization(r["sim_randomization"])] for r in result["policies"]]
    body = (
        f"<p>Real dataset <code>{html.escape(result['real_dataset'])}</code> ({result['real_episodes']} episodes). "
        f"Selected: <b>{html.escape(result['selected'])}</b>.</p>"
        + html.section("Ranking", html.table(COLUMNS, rows))
        + html.section("Sim success vs ood", html.figure(html.img(plot, width="600"), "one point per policy"))
        + html.section("Definitions", html.table(["term", "definition"], list(result["definitions"].items())))
        + html.section("Details", html.table(
            ["policy", "type", "training dataset", "mean distance real", "mean distance held-out train",
             "feature dim", "windows ref/held-out/real", "sim randomization"], details))
    )
    return html.write_page(path, "robolearn select", body)
