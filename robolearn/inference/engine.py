"""The batched inference engine: one forward pass for a whole batch of environments.

    engine = InferenceEngine(policy, num_envs=64)            # device: cuda when present, else cpu
    actions = engine.act(obs)                                 # obs[key]: (64, *shape) numpy -> (64, D_a) numpy
    engine.reset(done_env_ids)                                # new episodes start their history afresh

A reward model (`robolearn.rewards.RewardModel`) runs through the same engine:

    engine = InferenceEngine(reward_model, num_envs=64)
    out = engine.score(obs)             # {"reward", "progress", "stage"}: (64,) numpy, one frame per env
    engine.reset(done_env_ids)          # their embedding histories start afresh
    engine.score_episodes(table)        # offline: every frame of an EpisodeFrames table

Everything that steps many envs (evaluation, residual RL, collection with a policy) calls `act`; one
env is a batch of 1. The engine moves the policy to the device, runs it under `torch.inference_mode`,
keeps per-env observation histories and action-chunk queues (`ChunkRunner`, optionally with ACT's
temporal ensembling), and can run the chunk predictor at a fixed batch shape through `torch.compile`,
a frozen TorchScript trace (`trace=True`) or, on CUDA, a captured CUDA graph (inputs copied into
static buffers, one graph replay per prediction: no per-kernel launch cost).

`trace=True` is the one for a CPU control loop: at batch 1 a diffusion chunk is ~40 ops per
denoising step per residual block, each costing more Python and dispatch time than arithmetic. The
trace records the whole chunk prediction once (normalization, the 10 DDIM steps unrolled,
unnormalization), `torch.jit.freeze` folds the weights in, and a prediction is then one call into
the TorchScript interpreter: same ops, same noise draws, the same numbers as eager (tests check bit
equality), about 2x less time for a small U-Net at batch 1 on a CPU, ~3 s of tracing at start-up.
The weights are the policy's at construction: a later change to them is not seen. TorchScript is
deprecated in PyTorch 2.x, and we use it knowingly: torch.compile of the same predictor (freezing on)
measured 248 s to compile (58 s from its cache), a different noise stream than eager, and no faster
chunk here; torch.export runs its graph op by op from Python, no faster than eager.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from robolearn.errors import ConfigError
from robolearn.inference.queues import ChunkRunner, history_predictor
from robolearn.policies.base import Policy


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when a GPU is visible, else cpu; anything else as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but no CUDA device is visible; use device=cpu or auto")
    return dev


class InferenceEngine:
    """Runs a `Policy` for `num_envs` environments at once."""

    def __init__(self, policy, num_envs: int = 1, device: str = "auto", compile: bool = False,
                 cuda_graphs: bool = False, temporal_ensemble: float | None = None, trace: bool = False,
                 prefetch: int = 0):
        if num_envs < 1:
            raise ConfigError(f"num_envs={num_envs} must be at least 1")
        self.device = pick_device(device)
        self.num_envs = num_envs
        from robolearn.rewards.base import RewardModel

        if isinstance(policy, RewardModel):
            if compile or cuda_graphs or trace or prefetch or temporal_ensemble is not None:
                raise ConfigError("compile, cuda_graphs, trace, prefetch and temporal_ensemble apply to policies; a "
                                  "reward model runs eagerly (it encodes one new frame per env and tick)")
            from robolearn.inference.reward import RewardRunner

            self.policy, self.reward_model = None, policy.to(self.device).eval()
            self.reward_runner = RewardRunner(self.reward_model, num_envs, self.device)
            return
        self.reward_model = None
        if type(policy).make_runner is not Policy.make_runner:  # per-tick state of its own (a residual policy)
            if compile or cuda_graphs or trace or prefetch or temporal_ensemble is not None:
                raise ConfigError(f"compile, cuda_graphs, trace, prefetch and temporal_ensemble do not apply to a "
                                  f"{policy.name} policy (its base keeps its own queues)")
            self.policy = policy.to(self.device).eval()
            self.compile = self.cuda_graphs = self.trace = False
            self.runner = policy.make_runner(num_envs, self.device)
            return
        if trace and (compile or cuda_graphs):
            raise ConfigError("trace=true replaces compile and cuda_graphs (three ways to run the same predictor "
                              "faster): pick one")
        if cuda_graphs and self.device.type != "cuda":
            raise ConfigError("cuda_graphs=true needs a CUDA device (device=cuda or auto on a GPU machine)")
        self.policy = policy.to(self.device).eval()
        if temporal_ensemble is not None:
            if not temporal_ensemble >= 0:
                raise ConfigError(f"temporal_ensemble={temporal_ensemble} must be >= 0 (0: off; ACT uses 0.01)")
            self.policy.config.temporal_ensemble = float(temporal_ensemble)
        self.compile, self.cuda_graphs, self.trace = compile, cuda_graphs, trace
        # the runner's histories hold only observations it checked: its predictor skips check_obs, whose
        # host sync would also break graph capture and torch.compile's graph
        self._forward = history_predictor(self.policy)
        predict: Callable[[dict[str, Tensor]], Tensor] = self._eager_history
        if compile:
            self._compiled = torch.compile(self._forward, dynamic=False)
            predict = self._compiled_predict
        if cuda_graphs:
            self._graph = None
            predict = self._graphed
        if trace:
            self._traced = trace_predictor(self.policy, self._forward, num_envs, self.device)
            predict = self._traced_predict
        fixed = compile or cuda_graphs or trace or bool(self.policy.config.temporal_ensemble)
        try:
            self.runner = ChunkRunner(self.policy, num_envs, predict, fixed_shape=fixed, device=self.device,
                                      prefetch=prefetch)
        except ValueError as e:  # prefetch out of range for this policy or batch
            raise ConfigError(str(e)) from None

    # ---- predictors --------------------------------------------------------------------------
    def _eager(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self.policy.predict_action_chunk(obs)

    def _eager_history(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self._forward(obs)

    def _compiled_predict(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self._compiled(obs)

    def _traced_predict(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self._traced(obs)

    def _graphed(self, obs: dict[str, Tensor]) -> Tensor:
        if self._graph is None:
            self._capture(obs)
        for k, v in obs.items():
            self._static_in[k].copy_(v)
        self._graph.replay()
        return self._static_out.clone()

    def _capture(self, obs: dict[str, Tensor]) -> None:
        self._static_in = {k: v.clone() for k, v in obs.items()}
        fn = self._compiled_predict if self.compile else self._eager_history
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up (and compilation) outside the capture
                fn(self._static_in)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = fn(self._static_in)

    # ---- the API -----------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray | Tensor]) -> np.ndarray:
        """obs[key]: (num_envs, *shape) (cameras (N, H, W, 3) uint8) -> actions (num_envs, D_a) float32."""
        if self.policy is None:
            raise ConfigError("this engine runs a reward model: call score(obs), not act(obs)")
        action = self.runner._step(obs)  # on a CPU device already a fresh float32 array: nothing to convert
        if isinstance(action, np.ndarray):
            return action
        return action.detach().cpu().numpy().astype(np.float32, copy=False)

    def close(self) -> None:
        """Stop the prefetch worker, if any (also stopped when the engine is garbage-collected)."""
        if self.policy is not None:
            getattr(self.runner, "close", lambda: None)()

    def reset(self, env_ids=None) -> None:
        """Start new episodes for `env_ids` (all when None): their history and queues are cleared."""
        (self.reward_runner if self.policy is None else self.runner).reset(env_ids)

    def score(self, obs: dict[str, np.ndarray | Tensor], env_ids=None) -> dict[str, np.ndarray]:
        """Reward model, one tick: obs[key] (n, *shape) for all envs (or `env_ids`) -> {"reward",
        "progress", "stage"}: (n,) numpy (progress and stage where the model has them)."""
        if self.reward_model is None:
            raise ConfigError("this engine runs a policy: call act(obs), not score(obs)")
        return self.reward_runner.step(obs, env_ids)

    def score_episodes(self, table, batch_size: int = 512) -> list[dict[str, np.ndarray]]:
        """Reward model, offline: every frame of an `EpisodeFrames` table -> one dict of (T,) arrays per episode."""
        from robolearn.inference.reward import score_episodes

        if self.reward_model is None:
            raise ConfigError("this engine runs a policy; score_episodes needs a reward model")
        return score_episodes(self.reward_model, table, self.device, batch_size)

    def predict_chunk(self, obs: dict[str, np.ndarray | Tensor]) -> np.ndarray:
        """A whole chunk for a batch with history: obs[key] (B, n_obs_steps, *shape) -> (B, horizon, D_a)."""
        t = {k: torch.as_tensor(v, device=self.device) for k, v in obs.items()}
        for k in self.policy.image_keys:
            if t[k].dtype == torch.uint8:
                t[k] = t[k].permute(0, 1, 4, 2, 3).float() / 255.0
        return self._eager({k: v.float() for k, v in t.items()}).cpu().numpy()


class _Predictor(torch.nn.Module):
    """A chunk predictor as a module (what torch.jit.trace and freeze take): the policy's weights
    become the module's, and frozen into the graph."""

    def __init__(self, policy: Policy, forward: Callable[[dict[str, Tensor]], Tensor]):
        super().__init__()
        self.policy = policy
        self._fn = forward

    def forward(self, obs: dict[str, Tensor]) -> Tensor:
        return self._fn(obs)


def example_histories(policy: Policy, batch: int, device: torch.device) -> dict[str, Tensor]:
    """Histories shaped as a ChunkRunner hands them to its predictor: {key: (batch, n_obs_steps,
    *shape)} float32, cameras (batch, n_obs_steps, 3, H, W) in [0, 1]; mid-range values."""
    return {k: torch.full((batch, policy.config.n_obs_steps, *policy._shape(k)), 0.5, device=device)
            for k in policy.config.obs_keys}


def trace_predictor(policy: Policy, forward: Callable[[dict[str, Tensor]], Tensor], batch: int,
                    device: torch.device, warmup: int = 3) -> torch.jit.ScriptModule:
    """`forward` (histories of `batch` envs -> chunks) traced at that batch shape and frozen, then run
    `warmup` times (TorchScript's profiling executor optimizes the graph on its first calls), all of
    it under a forked RNG: tracing draws noise like any prediction, and the caller's seeded stream
    must not move. Python branches on shapes (batch 1 or not, tensor sizes) are recorded as taken,
    which is why the result only serves this batch shape, on this device."""
    import warnings

    example = example_histories(policy, batch, device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape branches above, by design
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)  # see the module doc
        module = _Predictor(policy, forward).eval()
        traced = torch.jit.freeze(torch.jit.trace(module, (example,), check_trace=False, strict=False))
        with torch.inference_mode():
            for _ in range(warmup):
                traced(example)
    return traced
