"""Turning a progress estimate into an RL reward.

Three modes, selected by `ShapingConfig.mode`, with Phi(s) = scale * progress(s):

- `potential` (default): potential-based shaping (Ng et al. 1999; Robo-Dopamine's use of a progress
  model) r' = w * r_sparse + gamma * Phi(s') - Phi(s). With Phi of a terminal state taken as 0
  (`terminal_potential: zero`), the shaping terms of an episode telescope to -Phi(s_0), which no
  policy can change: the optimal policy under r' is the optimal policy under r_sparse, whatever the
  progress model gets wrong. `gamma` must be the RL algorithm's discount for this to hold.
  `terminal_potential: keep` uses Phi(s') at termination too (rewards ending in a high-progress
  state; no longer policy-invariant).
- `delta`: r' = w * r_sparse + Phi(s') - Phi(s) (progress gained this step; not discounted).
- `progress`: r' = w * r_sparse + Phi(s') (progress as a reward: dense, but a policy that reaches a
  high-progress state and stays there collects it every step).

A time-limit truncation is not a terminal state: Phi(s') is the potential of the state the episode
was cut at, as if it went on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from robolearn.errors import ConfigError

ShapingMode = Literal["potential", "delta", "progress"]


@dataclass
class ShapingConfig:
    """How the progress model's output becomes the reward."""

    mode: ShapingMode = "potential"
    """potential: w*r + gamma*Phi(s') - Phi(s) (policy-invariant); delta: w*r + Phi(s') - Phi(s);
    progress: w*r + Phi(s')"""
    gamma: float = 0.99
    """discount of the shaping term; set it to the RL algorithm's gamma"""
    scale: float = 1.0
    """Phi = scale * progress"""
    sparse: Literal["success", "env", "none"] = "success"
    """r: success (1 on the step the task succeeds), env (the env's own reward), none (0)"""
    sparse_weight: float = 1.0
    """w, the weight of r"""
    terminal_potential: Literal["zero", "keep"] = "zero"
    """Phi at a terminal state: zero (policy-invariant) or keep (Phi of the final state)"""

    def validate(self) -> None:
        if self.mode not in ("potential", "delta", "progress"):
            raise ConfigError(f"shaping: mode={self.mode!r} must be potential, delta or progress")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"shaping: gamma={self.gamma} must be in (0, 1]")
        if self.sparse not in ("success", "env", "none"):
            raise ConfigError(f"shaping: sparse={self.sparse!r} must be success, env or none")
        if self.terminal_potential not in ("zero", "keep"):
            raise ConfigError(f"shaping: terminal_potential={self.terminal_potential!r} must be zero or keep")
        if not (np.isfinite(self.scale) and np.isfinite(self.sparse_weight)):
            raise ConfigError("shaping: scale and sparse_weight must be finite numbers")


def shaped_reward(cfg: ShapingConfig, sparse: np.ndarray, phi: np.ndarray, phi_next: np.ndarray,
                  terminated: np.ndarray) -> dict[str, np.ndarray]:
    """Named reward terms of one step for a batch, each (N,) float32: sparse (w * r), shaping, total.

    phi: Phi(s) before the step; phi_next: Phi(s') of the state the step reached (the final state
    of an episode that ended, not the next episode's first); terminated: s' is terminal."""
    sparse = cfg.sparse_weight * np.asarray(sparse, np.float64)
    phi, phi_next = np.asarray(phi, np.float64), np.asarray(phi_next, np.float64)
    if cfg.mode == "potential":
        nxt = np.where(np.asarray(terminated, bool), 0.0, phi_next) if cfg.terminal_potential == "zero" else phi_next
        shaping = cfg.gamma * nxt - phi
    elif cfg.mode == "delta":
        shaping = phi_next - phi
    else:
        shaping = phi_next
    return {"sparse": sparse.astype(np.float32), "shaping": shaping.astype(np.float32),
            "total": (sparse + shaping).astype(np.float32)}
