"""Reward shaping formulas (robolearn.rewards.shaping), RA-BC weights (robolearn.rewards.rabc) and the
weighted BC loss (robolearn.policies.base.weighted_mean), by hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.errors import ConfigError
from robolearn.policies.base import weighted_mean
from robolearn.rewards.rabc import EPS, rabc_weights
from robolearn.rewards.shaping import ShapingConfig, shaped_reward

SPARSE = np.array([0.0, 1.0, 0.0, 1.0])
PHI = np.array([0.2, 0.5, 0.9, 0.0])
PHI_NEXT = np.array([0.4, 0.6, 0.1, 0.3])
TERM = np.array([False, True, False, True])


def test_potential_mode_by_hand():
    cfg = ShapingConfig(mode="potential", gamma=0.9, sparse_weight=2.0)
    out = shaped_reward(cfg, SPARSE, PHI, PHI_NEXT, TERM)
    assert set(out) == {"sparse", "shaping", "total"}
    assert all(v.dtype == np.float32 and v.shape == (4,) for v in out.values())
    np.testing.assert_allclose(out["sparse"], [0, 2, 0, 2])
    # terminal states have Phi = 0 (terminal_potential: zero)
    np.testing.assert_allclose(out["shaping"], [0.9 * 0.4 - 0.2, -0.5, 0.9 * 0.1 - 0.9, -0.0], atol=1e-7)
    np.testing.assert_allclose(out["total"], out["sparse"] + out["shaping"], atol=1e-7)


def test_potential_mode_keep_terminal_potential():
    cfg = ShapingConfig(mode="potential", gamma=0.9, terminal_potential="keep")
    out = shaped_reward(cfg, SPARSE, PHI, PHI_NEXT, TERM)
    np.testing.assert_allclose(out["shaping"], 0.9 * PHI_NEXT - PHI, atol=1e-7)
    np.testing.assert_allclose(out["total"], SPARSE + 0.9 * PHI_NEXT - PHI, atol=1e-7)


def test_delta_and_progress_modes_by_hand():
    delta = shaped_reward(ShapingConfig(mode="delta", gamma=0.5, sparse_weight=0.5), SPARSE, PHI, PHI_NEXT, TERM)
    np.testing.assert_allclose(delta["shaping"], [0.2, 0.1, -0.8, 0.3], atol=1e-7)  # no gamma, no terminal zero
    np.testing.assert_allclose(delta["total"], [0.2, 0.6, -0.8, 0.8], atol=1e-7)
    prog = shaped_reward(ShapingConfig(mode="progress"), SPARSE, PHI, PHI_NEXT, TERM)
    np.testing.assert_allclose(prog["shaping"], PHI_NEXT, atol=1e-7)
    np.testing.assert_allclose(prog["total"], SPARSE + PHI_NEXT, atol=1e-7)


def test_truncation_keeps_the_potential_of_the_state_reached():
    """A time limit is not a terminal state: the step into it gets gamma * Phi(s') like any other."""
    cfg = ShapingConfig(mode="potential", gamma=0.95)
    out = shaped_reward(cfg, np.zeros(2), np.array([0.3, 0.3]), np.array([0.7, 0.7]), np.array([False, True]))
    assert out["shaping"][0] == pytest.approx(0.95 * 0.7 - 0.3)  # truncated (not terminated): kept
    assert out["shaping"][1] == pytest.approx(-0.3)  # terminated: Phi(s') = 0


@pytest.mark.parametrize("gamma", [0.9, 0.99, 0.5])
def test_potential_shaping_telescopes_to_minus_phi0(gamma):
    """sum_t gamma^t * F_t = -Phi(s_0) for an episode that terminates: the policy cannot change it."""
    rng = np.random.default_rng(int(gamma * 100))
    cfg = ShapingConfig(mode="potential", gamma=gamma, scale=3.0)
    for length in (1, 2, 17, 60):
        phi = cfg.scale * rng.uniform(0, 1, length + 1)  # Phi(s_0) .. Phi(s_T)
        total = 0.0
        for t in range(length):
            term = np.array([t == length - 1])
            f = shaped_reward(cfg, np.zeros(1), phi[t:t + 1], phi[t + 1:t + 2], term)["shaping"][0]
            total += gamma ** t * float(f)
        assert total == pytest.approx(-phi[0], abs=1e-5)
    # the same check, vectorized, straight from the formula
    phi = rng.uniform(0, 1, 41)
    term = np.zeros(40, bool)
    term[-1] = True
    f = shaped_reward(cfg, np.zeros(40), phi[:-1], phi[1:], term)["shaping"].astype(np.float64)
    assert np.sum(gamma ** np.arange(40) * f) == pytest.approx(-phi[0], abs=1e-5)


@pytest.mark.parametrize("kw, match", [
    ({"mode": "dense"}, "mode"),
    ({"gamma": 0.0}, "gamma"),
    ({"gamma": 1.5}, "gamma"),
    ({"gamma": -0.1}, "gamma"),
    ({"sparse": "always"}, "sparse"),
    ({"terminal_potential": "one"}, "terminal_potential"),
    ({"scale": float("nan")}, "scale"),
    ({"sparse_weight": float("inf")}, "sparse_weight"),
])
def test_shaping_config_validate(kw, match):
    with pytest.raises(ConfigError, match=match):
        ShapingConfig(**kw).validate()


def test_shaping_config_defaults_are_valid():
    ShapingConfig().validate()
    ShapingConfig(gamma=1.0).validate()  # gamma = 1 is allowed


# ---- RA-BC -----------------------------------------------------------------------------------------

def test_rabc_weights_by_hand():
    d = np.array([0.1, 0.0, -0.1, 0.02, 0.005, -0.3])
    mu, sigma = d.mean(), d.std()
    w = rabc_weights(d, kappa=0.01)
    assert w.dtype == np.float32 and w.shape == d.shape
    ramp = np.clip((d - (mu - 2 * sigma)) / (4 * sigma + EPS), 0, 1)
    want = np.where(d > 0.01, 1.0, ramp)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    assert w[0] == 1.0 and w[3] == 1.0  # delta above kappa: full weight
    assert 0 < w[1] < 1 and 0 < w[2] < w[1]  # the ramp, lower for a larger regression
    assert np.all((w >= 0) & (w <= 1))


def test_rabc_weights_ramp_clips_to_zero_and_kappa_boundary():
    d = np.array([0.0, 0.0, 0.0, 0.0, -10.0, 0.05])
    w = rabc_weights(d, kappa=0.05)
    assert w[4] == 0.0  # far below mu - 2 sigma
    assert w[5] < 1.0  # delta == kappa is not above it: the ramp applies
    w_all_above = rabc_weights(np.array([0.2, 0.3, 0.4]), kappa=0.01)
    np.testing.assert_array_equal(w_all_above, 1.0)
    rng = np.random.default_rng(0)
    w = rabc_weights(rng.normal(0, 0.05, 1000), kappa=0.02)
    assert np.all((w >= 0) & (w <= 1))


def test_rabc_weights_constant_deltas():
    w = rabc_weights(np.zeros(5), kappa=0.01)  # sigma 0: (0 - 0) / eps = 0
    assert np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1))


def _masked_mean(err, pad):
    mask = ~pad.bool()
    return err[mask].mean()


def test_weighted_mean_with_unit_weights_is_the_masked_mean():
    g = torch.Generator().manual_seed(0)
    err = torch.rand(5, 4, 3, generator=g)
    pad = torch.zeros(5, 4, dtype=torch.bool)
    pad[1, 2:] = True
    pad[3, 1:] = True
    plain = weighted_mean(err, pad, None)
    torch.testing.assert_close(plain, _masked_mean(err, pad))
    torch.testing.assert_close(weighted_mean(err, pad, torch.ones(5)), plain)
    torch.testing.assert_close(weighted_mean(err, pad, torch.full((5,), 3.0)), plain)  # scale-free


def test_weighted_mean_ignores_zero_weight_samples():
    g = torch.Generator().manual_seed(1)
    err = torch.rand(4, 3, 2, generator=g)
    pad = torch.zeros(4, 3, dtype=torch.bool)
    pad[2, 2] = True
    w = torch.tensor([1.0, 0.0, 1.0, 0.0])
    got = weighted_mean(err, pad, w)
    keep = torch.tensor([0, 2])
    torch.testing.assert_close(got, _masked_mean(err[keep], pad[keep]))
    err2 = err.clone()
    err2[1] += 100.0
    err2[3] = float("1e6")
    torch.testing.assert_close(weighted_mean(err2, pad, w), got)
    # fractional weights: sum_i w_i * sum(err_i) / sum_i w_i * count_i
    w = torch.tensor([0.5, 1.0, 0.25, 0.0])
    mask = (~pad).unsqueeze(-1).float()
    num = sum(w[i] * (err[i] * mask[i]).sum() for i in range(4))
    den = sum(w[i] * mask[i].sum() * 2 for i in range(4))
    torch.testing.assert_close(weighted_mean(err, pad, w), num / den)
