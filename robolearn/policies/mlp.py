"""MLP behaviour cloning over state: the fast baseline.

The normalized state features of the last `n_obs_steps` observations, flattened, go through an MLP
that outputs a whole action chunk (`horizon` actions; horizon=1 is plain single-step BC). Trained
with a masked L1 or MSE loss on normalized actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from robolearn.errors import ConfigError
from robolearn.policies.base import Policy, PolicyConfig, weighted_mean


@dataclass
class MLPConfig(PolicyConfig):
    """MLP BC: state history in, action chunk out."""

    n_obs_steps: int = 2
    horizon: int = 8
    n_action_steps: int = 4
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    """widths of the hidden layers"""
    dropout: float = 0.1
    """dropout after each hidden layer (training only)"""
    loss: Literal["l1", "mse"] = "l1"
    """regression loss on normalized actions"""


class MLPPolicy(Policy):
    name = "mlp"
    config_class = MLPConfig

    def __init__(self, config: MLPConfig, features, stats):
        if not config.obs_keys:
            config.obs_keys = [k for k, f in features.items() if k.startswith("observation.") and not f.is_video]
        super().__init__(config, features, stats)
        if self.image_keys:
            raise ConfigError(f"the MLP policy reads state features only, not cameras {self.image_keys}; use the "
                              "diffusion policy for images, or set obs_keys to state features")
        if config.loss not in ("l1", "mse"):
            raise ConfigError(f"mlp: loss={config.loss!r} must be l1 or mse")
        d_in = config.n_obs_steps * sum(self.features[k].shape[0] for k in self.state_keys)
        layers: list[nn.Module] = []
        for width in config.hidden:
            layers += [nn.Linear(d_in, width), nn.GELU(), nn.Dropout(config.dropout)]
            d_in = width
        layers.append(nn.Linear(d_in, config.horizon * self.action_dim))
        self.net = nn.Sequential(*layers)

    def forward_chunk(self, obs: dict[str, Tensor]) -> Tensor:
        """obs[key]: (B, n_obs_steps, D_k) normalized -> (B, horizon, D_a) normalized."""
        x = torch.cat([obs[k].flatten(1) for k in self.state_keys], dim=1)
        return self.net(x).view(len(x), self.config.horizon, self.action_dim)

    def compute_loss(self, obs, actions, action_is_pad, weights=None):
        pred = self.forward_chunk(obs)
        err = (pred - actions).abs() if self.config.loss == "l1" else (pred - actions) ** 2
        loss = weighted_mean(err, action_is_pad, weights)
        return loss, {"loss": loss.detach()}
