"""Per-environment observation histories and action-chunk queues for a batch of envs.

Each env keeps its last `n_obs_steps` observations (a new episode starts with its first observation
repeated) and the actions left from its last chunk. Without temporal ensembling, an env whose queue
is empty gets a new chunk and executes its first `n_action_steps` actions (after the
`-action_offset` past steps a chunk may start with); envs are independent, so episodes that reset at
different times never wait for each other. With temporal ensembling (ACT), every tick predicts a new
chunk for every env and the action executed at t averages every chunk that covers t, the chunk
predicted j ticks ago weighted exp(k * j) (older chunks weigh more, as in ACT's exp(-k * i) with
i = 0 the oldest), normalized.

Prefetching (`prefetch=d`, one env): the next chunk is requested d ticks before the queue runs dry,
from that tick's history, and predicted on a worker thread while the current chunk's last d actions
are executed; the tick that needs it takes the chunk's actions from d steps in (the chunk predicted
from the observation at s holds the action for s + j at j, past its leading past steps), waiting
only if the prediction is not done yet. A control loop whose chunk prediction takes longer than a
control period then never stalls a tick for it (as LeRobot's asynchronous inference, in-process):
the price is that each chunk is planned from an observation d ticks older than without prefetching.
The first chunk of an episode is predicted on the tick, as without. With the traced predictor
(`InferenceEngine(trace=True)`) the worker runs in TorchScript's interpreter, outside the GIL, so
the ticks on the main thread are not slowed by it.

How the per-tick path stays cheap (it runs at the control rate, often for one env, where Python
overhead is most of the cost; `robolearn bench inference` times it):

- on a CPU device every per-tick buffer (histories, queues, the ensembling sums) is a numpy array:
  a numpy op on a few floats costs ~1 us against ~5 us for a torch op, and the chunk predictor gets
  `torch.from_numpy` views, no copies; on an accelerator they are device tensors;
- the bookkeeping (which envs start an episode, how many actions each has left) is numpy on the host
  whatever the device, so deciding whether to predict never waits for the device;
- histories are ring buffers (the newest observation overwrites the oldest slot, one write per key
  and tick) put in time order only when a chunk is predicted; the ensembling sums are rings too;
- observations are checked once, before anything is written, with one device sync at most for all
  the NaN checks of a tick; anything the quick checks refuse is handed to `Policy.check_obs`, which
  raises the error naming the key.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from math import isfinite

import numpy as np
import torch
from torch import Tensor

from robolearn.policies.base import ObservationError, Policy

_HOST_DEVICES = ("cpu",)
"""device types whose per-tick buffers are numpy arrays (tests empty it to run the tensor path on a CPU)"""


class ChunkRunner:
    """select_action for `num_envs` envs of one policy.

    predict: normalized-free chunk predictor, obs {key: (b, n_obs_steps, *shape)} -> (b, horizon, D_a);
    defaults to the policy's `predict_action_chunk` (`history_predictor`) under `torch.inference_mode`. It
    gets tensors of its own (copies in time order, never the runner's buffers).
    fixed_shape: always predict for the whole batch (shapes never change: CUDA graphs, torch.compile),
    keeping only the chunks of envs that needed one.
    prefetch: d > 0 requests each next chunk d ticks before the queue runs dry, predicted on a worker
    thread (see the module doc); one env, no temporal ensembling, 1 <= d <= min(n_action_steps,
    horizon - past steps - n_action_steps)."""

    def __init__(self, policy, num_envs: int, predict: Callable[[dict[str, Tensor]], Tensor] | None = None,
                 fixed_shape: bool = False, device: torch.device | str | None = None, prefetch: int = 0):
        self.policy, self.num_envs = policy, num_envs
        cfg = policy.config
        self.n_obs, self.first, self.n_act = cfg.n_obs_steps, -cfg.action_offset, cfg.n_action_steps
        self.usable = cfg.horizon - self.first  # chunk actions at t, t+1, ...
        self.k = cfg.temporal_ensemble
        self.fixed_shape = fixed_shape
        self.prefetch = int(prefetch)
        if self.prefetch:
            check_prefetch(self.prefetch, num_envs, self.n_act, self.usable, self.k)
        self._future: Future | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.keys = list(cfg.obs_keys)
        self.image_keys = set(policy.image_keys)
        self._forward = history_predictor(policy)
        self._predict = predict or self._default_predict
        self.host = self.device.type in _HOST_DEVICES
        # what Policy.check_obs(history=False) accepts per key: per-step shapes, and whether bool is a number
        self._accept: dict[str, tuple[tuple[tuple[int, ...], ...], bool]] = {}
        for k in self.keys:
            ft = policy.features[k]
            if ft.is_video:
                h, w, c = ft.shape
                self._accept[k] = (((h, w, c), (c, h, w)), False)
            else:
                self._accept[k] = ((tuple(ft.shape),), ft.dtype == "bool")
        d = policy.action_dim
        self.fresh = np.ones(num_envs, dtype=bool)  # envs whose next observation starts an episode
        self.pos = np.full(num_envs, self.n_act, dtype=np.int64)  # queue index of the next action; n_act: empty
        # Python mirrors of fresh.any() and of the ticks until the first queue runs dry (n_act - pos.max()):
        # most ticks then decide with an int compare instead of two numpy reductions
        self._any_fresh, self._due = True, 0
        self._rows = np.arange(num_envs) if self.host else torch.arange(num_envs, device=self.device)
        # histories: ring buffers (num_envs, n_obs_steps, *shape) float32, made at the first tick;
        # slot `newest` holds the latest observation, `orders[newest]` lists the slots oldest first
        self.history: dict = {}
        self.newest = self.n_obs - 1
        orders = [(np.arange(self.n_obs) + p + 1) % self.n_obs for p in range(self.n_obs)]
        self._orders = orders if self.host else [torch.from_numpy(o).to(self.device) for o in orders]
        self.queue = self._zeros(num_envs, self.n_act, d)
        if self.k:
            # acc[:, (head + i) % usable] sums the weighted chunk actions for t + i; wsum their weights
            self.acc = self._zeros(num_envs, self.usable, d)
            self.wsum = self._zeros(num_envs, self.usable)
            self.head = 0
            w = torch.exp(self.k * torch.arange(self.usable, dtype=torch.float32))  # torch's exp, on either path
            self.weights = w.numpy() if self.host else w.to(self.device)

    def _zeros(self, *shape: int):
        if self.host:
            return np.zeros(shape, dtype=np.float32)
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def _index(self, ids: np.ndarray):
        return ids if self.host else torch.from_numpy(ids).to(self.device)

    def _default_predict(self, obs: dict[str, Tensor]) -> Tensor:
        with torch.inference_mode():
            return self._forward(obs)

    def reset(self, env_ids=None) -> None:
        """Start new episodes for `env_ids` (all when None): their next observation fills their history
        and their queues (and ensembling sums) are emptied."""
        ids = slice(None) if env_ids is None else np.asarray(env_ids, dtype=np.int64)
        self._drop_prefetched()
        self.fresh[ids] = True
        self.pos[ids] = self.n_act
        self._any_fresh, self._due = True, 0
        if self.k:
            dev_ids = ids if isinstance(ids, slice) else self._index(ids)
            self.acc[dev_ids] = 0
            self.wsum[dev_ids] = 0

    def step(self, obs: dict) -> Tensor:
        """obs[key]: (num_envs, *shape) for this tick -> actions (num_envs, D_a) float32 on the device."""
        action = self._step(obs)
        return torch.from_numpy(action) if self.host else action

    def _step(self, obs: dict):
        """`step`, returning a fresh numpy array on a CPU device (InferenceEngine.act hands it out as is)."""
        xs = self._checked(obs)
        self._push(xs)
        if self.k:
            return self._ensembled()
        return self._dequeue()

    # ---- observations ------------------------------------------------------------------------
    def _checked(self, obs: dict) -> dict:
        """Check this tick's observations (all of them, before any buffer changes) and convert them:
        {key: (num_envs, *shape)} float32 numpy arrays on a CPU device, else float tensors on the device;
        cameras (num_envs, 3, H, W) in [0, 1]. Values are checked finite after the conversion to float32,
        so the histories hold nothing the policy's own check_obs would refuse."""
        n = self.num_envs
        out = {}
        flags = []  # all-finite flags of device tensors, read with one sync at the end
        for k in self.keys:
            x = obs.get(k) if isinstance(obs, dict) else None
            shapes, bool_ok = self._accept[k]
            if isinstance(x, np.ndarray):
                if x.shape[1:] not in shapes or x.dtype.kind not in "fiub":
                    return self._refused(obs)
                floating = x.dtype.kind == "f"
            elif isinstance(x, Tensor):
                if x.shape[1:] not in shapes or ((x.is_complex() or x.dtype == torch.bool) and not bool_ok):
                    return self._refused(obs)
                floating = x.is_floating_point()
            else:
                return self._refused(obs)
            if x.ndim == 0 or x.shape[0] != n:
                got = "a scalar" if x.ndim == 0 else f"batch size {x.shape[0]}"
                raise ObservationError(f"observation {k!r} has {got}; this runner steps {n} envs")
            x = out[k] = self._convert(k, x)
            if not floating:  # integers and uint8 images convert to finite floats
                continue
            if self.host:
                # a sum is finite only when every value is (inf + -inf is NaN): one pass, no bool temporary;
                # a finite sum that overflows goes to the slow path, which lets it through
                if not isfinite(_sum(x, None)):
                    return self._refused(obs)
            else:
                flags.append(torch.isfinite(x).all())
        if flags and not bool(flags[0] if len(flags) == 1 else torch.stack(flags).all()):
            return self._refused(obs)
        return out

    def _refused(self, obs: dict) -> dict:
        """The quick checks refused `obs`: Policy.check_obs raises the error that names the key. Whatever
        it lets through (an array type the quick checks do not know) is converted with torch.as_tensor."""
        self.policy.check_obs(obs, history=False)
        n = self.num_envs
        out = {}
        for k in self.keys:
            t = torch.as_tensor(obs[k])
            if t.ndim == 0 or t.shape[0] != n:
                raise ObservationError(f"observation {k!r} has shape {tuple(t.shape)}; this runner steps {n} envs")
            if t.is_floating_point() and not bool(torch.isfinite(t.float()).all()):
                raise ObservationError(f"observation {k!r} contains NaN or inf (or values beyond float32)")
            out[k] = self._convert(k, t)
        return out

    def _convert(self, key: str, x):
        if self.host:
            if isinstance(x, Tensor):
                x = x.detach().cpu()
                x = (x if x.dtype in _NUMPY_DTYPES else x.float()).numpy()
            if key in self.image_keys:
                if x.shape[-1] == 3 and x.shape[-3] != 3:  # (B, H, W, 3) -> (B, 3, H, W)
                    x = x.transpose(0, 3, 1, 2)
                if x.dtype == np.uint8:
                    x = x.astype(np.float32)
                    x /= 255  # float32 division, bit for bit torch's `x.float() / 255.0`
            if x.dtype != np.float32:
                with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, refused by the caller
                    x = x.astype(np.float32)
            return x
        t = torch.as_tensor(x, device=self.device)
        if key in self.image_keys:
            if t.shape[-1] == 3 and t.shape[-3] != 3:
                t = t.permute(0, 3, 1, 2)
            return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        return t.float()

    def _push(self, xs: dict) -> None:
        """Write this tick's observations into the history rings; fresh envs get theirs in every slot."""
        if not self.history:
            for k, x in xs.items():
                self.history[k] = self._zeros(self.num_envs, self.n_obs, *x.shape[1:])
        p = self.newest = (self.newest + 1) % self.n_obs
        for k, x in xs.items():
            self.history[k][:, p] = x
        if self._any_fresh:  # a new episode sees its first observation as its whole history
            ids = slice(None) if self.fresh.all() else self._index(np.flatnonzero(self.fresh))
            for k, x in xs.items():
                self.history[k][ids] = x[ids][:, None]
            self.fresh[:] = False
            self._any_fresh = False

    def _ordered(self, ids) -> dict[str, Tensor]:
        """The histories of envs `ids` (all when None) in time order: {key: (b, n_obs_steps, *shape)},
        tensors of their own on the device."""
        order = self._orders[self.newest]
        out = {}
        for k in self.keys:
            h = self.history[k]
            g = h[:, order] if ids is None else h[ids[:, None], order]  # advanced indexing: always a copy
            out[k] = torch.from_numpy(g) if self.host else g
        return out

    def _chunk(self, chunk: Tensor):
        """The predictor's chunk as a float32 array of this runner's kind."""
        chunk = chunk.detach()
        if self.host:
            return chunk.to("cpu", torch.float32).numpy()
        return chunk.to(self.device, torch.float32)

    # ---- actions -----------------------------------------------------------------------------
    def _dequeue(self):
        if self.prefetch:
            return self._dequeue_prefetching()
        if self._due == 0:  # some env's queue is empty
            need = self.pos == self.n_act
            every = need.all()
            if every or self.fixed_shape:
                chunk = self._chunk(self._predict(self._ordered(None)))
                got = chunk[:, self.first:self.first + self.n_act]
                if every:
                    self.queue[:] = got
                else:
                    ids = self._index(np.flatnonzero(need))
                    self.queue[ids] = got[ids]
            else:
                ids = self._index(np.flatnonzero(need))
                chunk = self._chunk(self._predict(self._ordered(ids)))
                self.queue[ids] = chunk[:, self.first:self.first + self.n_act]
            self.pos[need] = 0
            self._due = self.n_act - int(self.pos.max())
        action = self.queue[self._rows, self.pos if self.host else torch.from_numpy(self.pos).to(self.device)]
        self.pos += 1
        self._due -= 1
        return action

    def _dequeue_prefetching(self):
        """`_dequeue` for one env with prefetching (see the module doc)."""
        pos = int(self.pos[0])
        if pos == self.n_act:  # the queue is dry: the prefetched chunk, or on an episode's first tick one now
            if self._future is not None:
                chunk, self._future = self._chunk(self._future.result()), None
                start = self.first + self.prefetch
            else:
                chunk, start = self._chunk(self._predict(self._ordered(None))), self.first
            self.queue[:] = chunk[:, start:start + self.n_act]
            pos = 0
        action = self.queue[:, pos]
        if pos == self.n_act - self.prefetch:  # d actions left, this one included: ask for the next chunk
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="chunk-prefetch")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            self._future = self._pool.submit(self._predict, self._ordered(None))
        self.pos[0] = pos + 1
        return action.copy() if self.host else action.clone()  # the queue is refilled in place

    def _drop_prefetched(self) -> None:
        """Forget an in-flight chunk (its episode ended), after waiting for it: its noise draws must not
        interleave with the next episode's (a seeded run stays reproducible)."""
        if self._future is not None:
            future, self._future = self._future, None
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the chunk is discarded; a broken predictor fails the next tick
                pass

    def close(self) -> None:
        """Stop the prefetch worker (after its current prediction); the runner can still be used."""
        self._drop_prefetched()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _ensembled(self):
        chunk = self._chunk(self._predict(self._ordered(None)))[:, self.first:]  # (n, usable, D): t, t+1, ...
        h, u, w = self.head, self.usable, self.weights
        # chunk action i lands in ring slot (h + i) % u: slots h.. take actions 0.., slots ..h-1 the rest
        self.acc[:, h:] += chunk[:, :u - h] * w[None, :u - h, None]
        self.wsum[:, h:] += w[None, :u - h]
        if h:
            self.acc[:, :h] += chunk[:, u - h:] * w[None, u - h:, None]
            self.wsum[:, :h] += w[None, u - h:]
        action = self.acc[:, h] / self.wsum[:, h:h + 1]
        self.acc[:, h] = 0
        self.wsum[:, h] = 0
        self.head = (h + 1) % u
        return action


def check_prefetch(prefetch: int, num_envs: int, n_act: int, usable: int, ensemble: float) -> None:
    """Raise ValueError naming the limit when `prefetch` ticks of look-ahead cannot be served."""
    if num_envs != 1 or ensemble:
        raise ValueError(f"prefetch={prefetch} serves one env without temporal ensembling (a control loop); "
                         f"got num_envs={num_envs}, temporal_ensemble={ensemble}")
    top = min(n_act, usable - n_act)
    if not 1 <= prefetch <= top:
        raise ValueError(f"prefetch={prefetch} must be in 1..{top}: at most n_action_steps={n_act} ticks ahead, "
                         f"and the chunk must still hold n_action_steps actions after skipping the prefetch ticks "
                         f"({usable} usable actions per chunk)" if top >= 1 else
                         f"prefetch needs a chunk longer than 2 x n_action_steps={n_act} (it has {usable} usable "
                         f"actions): lower n_action_steps or raise horizon")


def history_predictor(policy: Policy) -> Callable[[dict[str, Tensor]], Tensor]:
    """`policy.predict_action_chunk` without its `check_obs`, for histories a ChunkRunner built: every
    observation in them was checked (shape, dtype, finite as float32) when it arrived, so the second
    check only costs time (~10 us per key on a CPU, on every predicting tick) and, on a GPU, a host sync
    per key that a CUDA graph cannot capture. A policy that overrides predict_action_chunk keeps its own."""
    if type(policy).predict_action_chunk is not Policy.predict_action_chunk:
        return policy.predict_action_chunk

    def predict(obs: dict[str, Tensor]) -> Tensor:
        return policy.normalizer.unnormalize("action", policy.forward_chunk(policy.normalize_obs(obs)))

    return predict


_sum = np.add.reduce
_NUMPY_DTYPES = {torch.float16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16, torch.int32,
                 torch.int64, torch.bool}

