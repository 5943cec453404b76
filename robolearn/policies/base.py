"""The one `Policy` interface, its configs and its checkpoints.

A policy maps a history of observations to a chunk of future actions:

    predict_action_chunk(obs) -> (B, horizon, D_a)   obs[key]: (B, n_obs_steps, *shape)
    select_action(obs)        -> (B, D_a)            obs[key]: (B, *shape), one control tick

`select_action` keeps, per environment, the observation history and a queue of the actions still to
execute from the last chunk (`n_action_steps` of each, or temporal ensembling of every chunk, as in
ACT); `reset(env_ids)` clears them for envs that start a new episode.

A checkpoint is a directory: `config.json` (policy type, its config, the features it reads and
writes, `format_version`), `model.safetensors` (weights, including the normalization buffers) and
`stats.json` (the dataset statistics it was normalized with). It loads without the training code
and is refused, with the reason, when its format or its features do not match.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.data.format import Feature, atomic_write_bytes, atomic_write_json, to_jsonable
from robolearn.errors import ConfigError, RobolearnError
from robolearn.policies.normalize import Normalizer

FORMAT_VERSION = 1


class CheckpointError(RobolearnError, ValueError):
    """A checkpoint directory is missing, malformed, of another format, or does not fit."""


class ObservationError(RobolearnError, ValueError):
    """An observation given to a policy is missing a key, has the wrong shape or dtype, or NaN."""


@dataclass
class PolicyConfig:
    """Fields every policy has; a policy's own config adds its architecture."""

    n_obs_steps: int = 2
    """observations of history the policy sees (t - n_obs_steps + 1 .. t)"""
    horizon: int = 16
    """actions predicted per chunk"""
    n_action_steps: int = 8
    """actions executed from each chunk before the next prediction"""
    action_offset: int = 0
    """first predicted action relative to t (Diffusion Policy: 1 - n_obs_steps)"""
    obs_keys: list[str] = field(default_factory=list)
    """observation features the policy reads; empty: every observation.* feature of the dataset"""
    temporal_ensemble: float = 0.0
    """> 0: predict every tick and average overlapping chunks with weights exp(-k * age) (ACT's k); 0: off"""

    def validate(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ConfigError(f"policy: n_obs_steps={self.n_obs_steps} and horizon={self.horizon} must be >= 1")
        first = -self.action_offset
        if not 0 <= first < self.horizon:
            raise ConfigError(f"policy: action_offset={self.action_offset} must be in {1 - self.horizon}..0")
        if not 1 <= self.n_action_steps <= self.horizon - first:
            raise ConfigError(f"policy: n_action_steps={self.n_action_steps} must be 1..{self.horizon - first} "
                              f"(horizon {self.horizon} minus the {first} past step(s) a chunk starts with)")
        if self.temporal_ensemble < 0:
            raise ConfigError("policy: temporal_ensemble must be >= 0")


class Policy(nn.Module, ABC):
    """Observation history -> action chunk. Subclasses define the network, `forward_chunk` on
    normalized inputs, and `compute_loss`; normalization, queues and checkpoints are shared."""

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig, features: dict[str, Feature], stats: dict[str, dict[str, Any]]):
        super().__init__()
        config.validate()
        self.config = config
        if "action" not in features:
            raise ConfigError("the dataset has no 'action' feature to learn")
        obs_keys = list(config.obs_keys) or [k for k in features if k.startswith("observation.")]
        missing = [k for k in obs_keys if k not in features]
        if missing:
            raise ConfigError(f"policy obs_keys {missing} are not features of the dataset "
                              f"({', '.join(features)})")
        config.obs_keys = obs_keys
        self.features = {k: features[k] for k in obs_keys + ["action"]}
        self.image_keys = [k for k in obs_keys if features[k].is_video]
        self.state_keys = [k for k in obs_keys if not features[k].is_video]
        self.action_dim = int(np.prod(features["action"].shape))
        modes = {k: ("identity" if k in self.image_keys else self.norm_mode(k)) for k in obs_keys}
        modes["action"] = "min_max"
        self.stats = {k: {s: np.asarray(v) for s, v in stats[k].items()} for k in self.features if k in stats}
        self.normalizer = Normalizer(stats, modes, {k: self._shape(k) for k in self.features})
        self._runner = None  # the per-env queues of select_action, made at the first call
        self.metadata: dict[str, Any] = {}
        """JSON-able facts saved with the checkpoint: the dataset it learned from and the env config that
        dataset was recorded with (so `robolearn eval` rebuilds the same env)"""

    def norm_mode(self, key: str) -> str:
        return "mean_std"

    def _shape(self, key: str) -> tuple[int, ...]:
        ft = self.features[key]
        if ft.is_video:
            h, w, c = ft.shape
            return (c, h, w)
        return ft.shape

    # ---- what subclasses define --------------------------------------------------------------
    @abstractmethod
    def forward_chunk(self, obs: dict[str, Tensor]) -> Tensor:
        """Normalized obs {key: (B, n_obs_steps, *shape)} -> normalized actions (B, horizon, D_a)."""

    @abstractmethod
    def compute_loss(self, obs: dict[str, Tensor], actions: Tensor, action_is_pad: Tensor,
                     weights: Tensor | None = None) -> tuple[Tensor, dict]:
        """Training loss on normalized obs, normalized actions (B, horizon, D_a) and their pad mask;
        weights (B,): per-sample weights (RA-BC), None for all 1 (`weighted_mean` does the averaging)."""

    # ---- shared ------------------------------------------------------------------------------
    def normalize_obs(self, obs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.normalizer.normalize(k, obs[k]) for k in self.config.obs_keys}

    def predict_action_chunk(self, obs: dict[str, Tensor]) -> Tensor:
        """obs[key]: (B, n_obs_steps, *shape) (images (B, T, 3, H, W) float in [0, 1]) -> actions
        (B, horizon, D_a) in the dataset's units."""
        self.check_obs(obs, history=True)
        chunk = self.forward_chunk(self.normalize_obs(obs))
        return self.normalizer.unnormalize("action", chunk)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict]:
        """Loss on a batch of `WindowDataset` windows (unnormalized, as the dataset stores them), weighted
        per sample by `batch["sample_weight"]` (B,) when present."""
        obs = self.normalize_obs({k: batch[k] for k in self.config.obs_keys})
        actions = self.normalizer.normalize("action", batch["action"])
        return self.compute_loss(obs, actions, batch["action_is_pad"], batch.get("sample_weight"))

    def make_runner(self, num_envs: int, device: torch.device | str | None = None):
        """The per-env state of `select_action` for `num_envs` envs: observation histories and chunk
        queues (`ChunkRunner`). A policy with other per-tick state overrides it; the inference engine
        then uses it as is."""
        from robolearn.inference.queues import ChunkRunner

        return ChunkRunner(self, num_envs, device=device)

    def select_action(self, obs: dict[str, Tensor | np.ndarray]) -> Tensor:
        """One control tick for a batch of envs: obs[key] (B, *shape) -> actions (B, D_a)."""
        b = _batch_size(obs, self.config.obs_keys)
        if self._runner is None or self._runner.num_envs != b:
            self._runner = self.make_runner(b)
        return self._runner.step(obs)

    def reset(self, env_ids: list[int] | np.ndarray | None = None) -> None:
        """Forget the history and queued actions of `env_ids` (all when None)."""
        if self._runner is not None:
            self._runner.reset(env_ids)

    def check_obs(self, obs: dict[str, Tensor | np.ndarray], history: bool) -> None:
        """Raise ObservationError unless every key is present with the right shape, dtype and finite values."""
        t = self.config.n_obs_steps
        for k in self.config.obs_keys:
            if k not in obs:
                raise ObservationError(f"observation has no {k!r}; this policy reads {', '.join(self.config.obs_keys)}"
                                       f" (it has {', '.join(obs) or 'nothing'})")
            x = obs[k]
            ft = self.features[k]
            want = self._shape(k) if history else (ft.shape if not ft.is_video else None)
            got = tuple(x.shape[2:] if history else x.shape[1:])
            if history and (x.ndim < 2 or x.shape[1] != t):
                raise ObservationError(f"observation {k!r} has shape {tuple(x.shape)}; expected (B, {t}, ...) with "
                                       f"{t} steps of history")
            if want is not None and got != want:
                raise ObservationError(f"observation {k!r} has per-step shape {got}; the policy was trained on {want}")
            if ft.is_video and not history:
                h, w, c = ft.shape
                if got not in ((h, w, c), (c, h, w)):
                    raise ObservationError(f"camera {k!r} has shape {got}; expected (H, W, 3) = {(h, w, c)}")
            dt = x.dtype
            if isinstance(x, np.ndarray):
                ok = dt.kind in "fiub"
                finite = bool(np.isfinite(x).all()) if dt.kind == "f" else True
            else:
                ok = not (x.is_complex() or dt == torch.bool) or ft.dtype == "bool"
                finite = bool(torch.isfinite(x).all()) if x.is_floating_point() else True
            if not ok:
                raise ObservationError(f"observation {k!r} has dtype {dt}; expected numbers ({ft.dtype})")
            if not finite:
                raise ObservationError(f"observation {k!r} contains NaN or inf; check the sensor or the env")

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the checkpoint directory (files written atomically; an existing one is replaced)."""
        return write_checkpoint(path, self, "policy")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Policy:
        """Load any policy checkpoint (use `robolearn.policies.load_policy`; this is the same)."""
        from robolearn.policies import load_policy

        return load_policy(path, device)


def weighted_mean(err: Tensor, action_is_pad: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of err (B, horizon, D_a) over the steps inside the episode, each sample counted with its
    weight: sum_i w_i * sum(err_i * mask_i) / sum_i w_i * count_i (all weights 1: the plain masked mean)."""
    mask = (~action_is_pad.bool()).unsqueeze(-1).to(err.dtype)
    per_sample = (err * mask).flatten(1).sum(1)
    count = mask.flatten(1).sum(1) * err.shape[-1]
    if weights is None:
        return per_sample.sum() / count.sum().clamp(min=1)
    w = weights.to(err.dtype).reshape(-1)
    return (w * per_sample).sum() / (w * count).sum().clamp(min=1e-8)


def _batch_size(obs: dict, keys: list[str]) -> int:
    for k in keys:
        if k in obs:
            return int(obs[k].shape[0])
    raise ObservationError(f"observation has none of the policy's keys ({', '.join(keys)})")


def write_checkpoint(path: str | Path, model: nn.Module, kind: str, extra: dict[str, Any] | None = None) -> Path:
    """A checkpoint directory of a policy or reward model (`model` has name, config, features, stats,
    metadata): model.safetensors (its state dict), stats.json, and config.json with format_version,
    kind, type, config, features, the `extra` entries and metadata; each file written atomically."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path / "model.safetensors", save(tensors))
    atomic_write_json(path / "stats.json", to_jsonable(model.stats))
    atomic_write_json(path / "config.json", {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "type": model.name,
        "config": to_jsonable(asdict(model.config)),
        "features": {k: f.to_json() for k, f in model.features.items()},
        **to_jsonable(extra or {}),
        "metadata": to_jsonable(model.metadata),
    })
    return path


def load_weights(model: nn.Module, path: str | Path, what: str) -> None:
    """Load `path`/model.safetensors into `model` strictly, refusing missing, unexpected or misshapen
    weights with the reason (`what`: e.g. "mlp policy", for the message)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / "model.safetensors"))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit a {what} with this config (missing "
                              f"{missing[:4]}, unexpected {unexpected[:4]}); the checkpoint is damaged or was "
                              "written by another version")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: weight {k!r} has shape {tuple(v.shape)}, the config implies "
                                  f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run directory: its `checkpoints/last`."""
    path = Path(path)
    last = path / "checkpoints" / "last"
    if not (path / "config.json").is_file() and (last / "config.json").is_file():
        return last
    return path


def read_checkpoint(path: str | Path, what: str = "policy",
                    how: str = "`robolearn train bc`") -> tuple[dict, dict[str, Feature], dict]:
    """config.json, features and stats of a checkpoint directory (a `what`, trained with `how`), checked."""
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory (a {what} checkpoint is expected here)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is not a {what} checkpoint (no config.json); train one with {how}")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: format_version {version!r}, this robolearn reads {FORMAT_VERSION}; "
                              f"retrain the {what} or load it with the robolearn version that wrote it")
    for key in ("type", "config", "features"):
        if key not in raw:
            raise CheckpointError(f"{cfg_path}: missing {key!r}")
    features = {k: Feature.from_json(k, v, str(cfg_path)) for k, v in raw["features"].items()}
    for name in ("model.safetensors", "stats.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing; the checkpoint is incomplete")
    stats = json.loads((path / "stats.json").read_text())
    return raw, features, stats


def build_config(cls: type[PolicyConfig], raw: dict, where: str) -> PolicyConfig:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        from robolearn.errors import did_you_mean

        raise ConfigError(f"{where}: unknown {cls.__name__} field(s) {unknown}." + did_you_mean(unknown[0], names))
    return cls(**{k: (tuple(v) if isinstance(getattr(cls, k, None), tuple) else v) for k, v in raw.items()})
