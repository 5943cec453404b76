"""Per-environment observation histories and action-chunk queues for a batch of envs.

Each env keeps its last `n_obs_steps` observations (a new episode starts with its first observation
repeated) and the actions left from its last chunk. Without temporal ensembling, an env whose queue
is empty gets a new chunk and executes its first `n_action_steps` actions (after the
`-action_offset` past steps a chunk may start with); envs are independent, so episodes that reset at
different times never wait for each other. With temporal ensembling (ACT), every tick predicts a new
chunk for every env and the action executed at t averages every chunk that covers t, the chunk
predicted j ticks ago weighted exp(k * j) (older chunks weigh more, as in ACT's exp(-k * i) with
i = 0 the oldest), normalized.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


class ChunkRunner:
    """select_action for `num_envs` envs of one policy.

    predict: normalized-free chunk predictor, obs {key: (b, n_obs_steps, *shape)} -> (b, horizon, D_a);
    defaults to the policy's own `predict_action_chunk` under `torch.inference_mode`.
    fixed_shape: always predict for the whole batch (shapes never change: CUDA graphs, torch.compile),
    keeping only the chunks of envs that needed one."""

    def __init__(self, policy, num_envs: int, predict: Callable[[dict[str, Tensor]], Tensor] | None = None,
                 fixed_shape: bool = False, device: torch.device | str | None = None):
        self.policy, self.num_envs = policy, num_envs
        cfg = policy.config
        self.n_obs, self.first, self.n_act = cfg.n_obs_steps, -cfg.action_offset, cfg.n_action_steps
        self.usable = cfg.horizon - self.first  # chunk actions at t, t+1, ...
        self.k = cfg.temporal_ensemble
        self.fixed_shape = fixed_shape
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.keys = list(cfg.obs_keys)
        self.image_keys = set(policy.image_keys)
        self._predict = predict or self._default_predict
        d = policy.action_dim
        self.history: dict[str, Tensor] = {}
        self.fresh = torch.ones(num_envs, dtype=torch.bool)
        self.queue = torch.zeros(num_envs, self.n_act, d, device=self.device)
        self.left = torch.zeros(num_envs, dtype=torch.long)  # actions still queued
        if self.k:
            self.acc = torch.zeros(num_envs, self.usable, d, device=self.device)
            self.wsum = torch.zeros(num_envs, self.usable, device=self.device)
            self.weights = torch.exp(self.k * torch.arange(self.usable, dtype=torch.float32, device=self.device))

    def _default_predict(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self.policy.predict_action_chunk(obs)

    def reset(self, env_ids=None) -> None:
        ids = slice(None) if env_ids is None else torch.as_tensor(np.asarray(env_ids), dtype=torch.long)
        self.fresh[ids] = True
        self.left[ids] = 0
        if self.k:
            self.acc[ids] = 0
            self.wsum[ids] = 0

    def _to_tensor(self, key: str, x) -> Tensor:
        t = torch.as_tensor(x, device=self.device)
        if key in self.image_keys:
            if t.shape[-1] == 3 and t.shape[-3] != 3:  # (B, H, W, 3) -> (B, 3, H, W)
                t = t.permute(0, 3, 1, 2)
            t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        else:
            t = t.float()
        return t

    def step(self, obs: dict) -> Tensor:
        """obs[key]: (num_envs, *shape) for this tick -> actions (num_envs, D_a)."""
        self.policy.check_obs(obs, history=False)
        n = self.num_envs
        for k in self.keys:
            x = self._to_tensor(k, obs[k])
            if x.shape[0] != n:
                from robolearn.policies.base import ObservationError

                raise ObservationError(f"observation {k!r} has batch size {x.shape[0]}; this runner steps {n} envs")
            h = self.history.get(k)
            if h is None:
                h = self.history[k] = x.unsqueeze(1).repeat(1, self.n_obs, *([1] * (x.ndim - 1))).contiguous()
            else:
                h[:, :-1] = h[:, 1:].clone()
                h[:, -1] = x
            if self.fresh.any():  # a new episode sees its first observation as its whole history
                f = self.fresh.to(self.device)
                h[f] = x[f].unsqueeze(1).expand(-1, self.n_obs, *x.shape[1:])
        self.fresh[:] = False
        if self.k:
            return self._ensembled()
        need = self.left == 0
        if need.any():
            ids = torch.arange(n) if self.fixed_shape else torch.nonzero(need).squeeze(1)
            chunk = self._predict({k: self.history[k][ids.to(self.device)] for k in self.keys})
            take = need[ids]
            got = chunk[take.to(chunk.device), self.first:self.first + self.n_act]
            self.queue[need.to(self.device)] = got.to(self.device, self.queue.dtype)
            self.left[need] = self.n_act
        idx = (self.n_act - self.left).to(self.device)
        action = self.queue[torch.arange(n, device=self.device), idx]
        self.left -= 1
        return action

    def _ensembled(self) -> Tensor:
        chunk = self._predict(dict(self.history))[:, self.first:]  # (n, usable, D): actions at t, t+1, ...
        self.acc += chunk.to(self.acc.dtype) * self.weights[None, :, None]
        self.wsum += self.weights[None]
        action = self.acc[:, 0] / self.wsum[:, :1]
        self.acc = torch.roll(self.acc, -1, dims=1)
        self.wsum = torch.roll(self.wsum, -1, dims=1)
        self.acc[:, -1] = 0
        self.wsum[:, -1] = 0
        return action
