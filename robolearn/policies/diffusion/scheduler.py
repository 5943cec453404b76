"""DDPM noise schedule for training and the deterministic DDIM sampler (eta = 0) for inference.

Training (Ho et al. 2020) noises a clean chunk x0 at a random step t of `num_train_timesteps`:

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps          add_noise(x0, eps, t)

and the network learns to predict eps. Sampling (Song et al. 2021, DDIM with eta = 0) walks a table
of `num_inference_steps` timesteps from pure noise down to t = -1 (abar = 1):

    x0_hat = (x_t - sqrt(1 - abar_t) * eps_hat) / sqrt(abar_t), clipped to +-clip_sample_range
    x_prev = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev) * eps_hat     step(x_t, eps_hat, k)

As in diffusers' DDIMScheduler (the one LeRobot and Chi et al. use), eps_hat is not re-derived from
the clipped x0_hat. Every per-step coefficient is computed once, in float64, when the table is set:
a sampling step is a handful of tensor ops and no Python arithmetic on tensors.

Timesteps are spaced "trailing" (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", Table 2): with 100 training steps and 10 DDIM steps the table is 99, 89, ..., 9, so
sampling starts at the step whose marginal is (nearly) the pure noise it is given. diffusers'
default "leading" spacing starts at t = 90, where a cosine schedule still keeps sqrt(abar) = 0.17 of
the signal, and never visits the last 9 steps the network was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from robolearn.errors import ConfigError

BetaSchedule = Literal["squaredcos_cap_v2", "linear"]
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")


def make_betas(num_train_timesteps: int, schedule: BetaSchedule) -> np.ndarray:
    """Noise variances beta_1..beta_T, float64 (T,).

    squaredcos_cap_v2: the cosine schedule of Nichol & Dhariwal 2021 (abar(s) = cos^2((s + 0.008) /
    1.008 * pi / 2)), each beta capped at 0.999 as in diffusers; linear: 1e-4 .. 0.02 (Ho et al.)."""
    t = num_train_timesteps
    if schedule == "squaredcos_cap_v2":
        abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / t) / abar(i / t), 0.999) for i in range(t)], np.float64)
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, t, dtype=np.float64)
    raise ConfigError(f"beta_schedule={schedule!r} must be one of {', '.join(BETA_SCHEDULES)}")


class DiffusionScheduler(nn.Module):
    """DDPM forward process (`add_noise`) and DDIM reverse process (`step`, `sample`).

    The tables are non-persistent buffers: they follow `.to(device)` but are not written to
    checkpoints (the config rebuilds them)."""

    def __init__(self, num_train_timesteps: int = 100, num_inference_steps: int = 10,
                 beta_schedule: BetaSchedule = "squaredcos_cap_v2", clip_sample: bool = True,
                 clip_sample_range: float = 1.0):
        super().__init__()
        if num_train_timesteps < 1:
            raise ConfigError(f"num_train_timesteps={num_train_timesteps} must be >= 1")
        self.num_train_timesteps = num_train_timesteps
        self.clip_sample, self.clip_sample_range = clip_sample, float(clip_sample_range)
        betas = make_betas(num_train_timesteps, beta_schedule)
        abar = np.cumprod(1.0 - betas)
        self._abar = abar  # float64 copy for the DDIM tables
        self.register_buffer("betas", torch.from_numpy(betas).float(), persistent=False)
        self.register_buffer("alphas_cumprod", torch.from_numpy(abar).float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", torch.from_numpy(np.sqrt(abar)).float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", torch.from_numpy(np.sqrt(1 - abar)).float(),
                             persistent=False)
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Build the DDIM table for `num_inference_steps` steps (1..num_train_timesteps)."""
        t_max = self.num_train_timesteps
        if not 1 <= num_inference_steps <= t_max:
            raise ConfigError(f"num_inference_steps={num_inference_steps} must be in 1..{t_max} "
                              "(num_train_timesteps)")
        self.num_inference_steps = num_inference_steps
        ratio = t_max / num_inference_steps
        ts = [int(round(t_max - k * ratio)) - 1 for k in range(num_inference_steps)]  # trailing spacing
        prev = ts[1:] + [-1]
        abar_prev = [self._abar[p] if p >= 0 else 1.0 for p in prev]  # t = -1: the clean sample
        # x0_hat = x * c_x - eps * c_eps ; x_prev = x0_hat * a_prev + eps * b_prev
        self._coefs = [(1 / math.sqrt(self._abar[t]), math.sqrt((1 - self._abar[t]) / self._abar[t]),
                        math.sqrt(ap), math.sqrt(1 - ap)) for t, ap in zip(ts, abar_prev)]
        device = self.betas.device
        self.register_buffer("timesteps", torch.tensor(ts, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("prev_timesteps", torch.tensor(prev, dtype=torch.long, device=device), persistent=False)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x0, noise: (B, ...), t: (B,) int in 0..T-1 -> x_t (B, ...)."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return self.sqrt_alphas_cumprod[t].view(shape) * x0 + self.sqrt_one_minus_alphas_cumprod[t].view(shape) * noise

    def step(self, x: Tensor, eps: Tensor, k: int) -> Tensor:
        """DDIM step k of the table (timesteps[k] -> prev_timesteps[k]): x_t, eps_hat (B, ...) -> x_prev."""
        c_x, c_eps, a_prev, b_prev = self._coefs[k]
        x0 = torch.add(x * c_x, eps, alpha=-c_eps)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return torch.add(x0 * a_prev, eps, alpha=b_prev)

    def sample(self, x: Tensor, predict_eps: Callable[[Tensor, int], Tensor]) -> Tensor:
        """Run the whole table from noise x (B, ...): predict_eps(x_t, k) -> eps_hat, k indexing `timesteps`."""
        for k in range(self.num_inference_steps):
            x = self.step(x, predict_eps(x, k), k)
        return x
