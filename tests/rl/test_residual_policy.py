"""ResidualPolicy: starts exactly at its base, stays within scale of it, saves/loads as any policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.errors import ConfigError
from robolearn.inference.engine import InferenceEngine
from robolearn.policies import CheckpointError, load_policy, make_policy
from robolearn.policies.base import ObservationError
from robolearn.rl.residual import ResidualPolicy


@pytest.fixture(scope="module")
def lift_env_and_base(tmp_path_factory):
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader
    from robolearn.sim.registry import make_env

    root = collect(CollectConfig(task="lift", episodes=2, out=str(tmp_path_factory.mktemp("lift") / "ds"),
                                 cameras=[], num_envs=2, fsync=False, progress=False))
    r = DatasetReader(root)
    torch.manual_seed(0)
    base = make_policy("mlp", r.features, r.meta.stats, {"obs_keys": ["observation.state"], "hidden": [32, 32],
                                                          "horizon": 4, "n_action_steps": 2})
    with torch.no_grad():  # an untrained MLP outputs ~0; make the base's actions non-trivial
        for p in base.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    env = make_env("lift", num_envs=3, seed=0)
    yield env, base.eval()
    env.close()


def _residual(base, env, **kw):
    sp = env.single_action_space
    return ResidualPolicy.from_base(base, action_low=sp.low, action_high=sp.high, hidden=[16], **kw)


def test_untrained_residual_acts_exactly_as_its_base(lift_env_and_base):
    env, base = lift_env_and_base
    res = _residual(base, env, scale=0.2)
    e_base, e_res = InferenceEngine(base, 3, device="cpu"), InferenceEngine(res, 3, device="cpu")
    obs, _ = env.reset(seed=1)
    for _ in range(9):
        a_base, a_res = e_base.act(obs), e_res.act(obs)
        np.testing.assert_allclose(np.clip(a_base, -1, 1), a_res, atol=1e-6)
        np.testing.assert_allclose(e_res.runner.last_base_action, a_base, atol=1e-6)
        obs, _, term, trunc, _ = env.step(a_res)
        done = np.flatnonzero(term | trunc)
        e_base.reset(done)
        e_res.reset(done)
    # the base is frozen: no gradient reaches it, the residual is all that trains
    assert not any(p.requires_grad for p in res.base.parameters())
    assert all(p.requires_grad for p in res.residual.parameters())


def test_corrections_are_bounded_by_scale_and_the_action_space(lift_env_and_base, tmp_path):
    env, base = lift_env_and_base
    res = _residual(base, env, scale=0.05)
    with torch.no_grad():
        res.residual[-1].bias.copy_(torch.tensor([100.0, -100.0, 0, 0, 0, 0, 100.0]))
    engine = InferenceEngine(res, 3, device="cpu")
    obs, _ = env.reset(seed=2)
    a = engine.act(obs)
    b = engine.runner.last_base_action
    np.testing.assert_allclose(a[:, 0], np.minimum(b[:, 0] + 0.05, 1.0), atol=1e-5)
    np.testing.assert_allclose(a[:, 1], np.maximum(b[:, 1] - 0.05, -1.0), atol=1e-5)
    np.testing.assert_allclose(a[:, 2:6], np.clip(b[:, 2:6], -1, 1), atol=1e-6)
    assert (a >= -1).all() and (a <= 1).all()
    # round trip: the checkpoint carries the base and the residual; the loaded policy acts the same
    res.save(tmp_path / "res")
    loaded = load_policy(tmp_path / "res")
    assert isinstance(loaded, ResidualPolicy) and loaded.config.scale == 0.05
    again = InferenceEngine(loaded, 3, device="cpu").act(obs)
    np.testing.assert_allclose(again, a, atol=1e-6)


def test_select_action_and_predict_chunk_agree_with_the_engine(lift_env_and_base):
    env, base = lift_env_and_base
    res = _residual(base, env, scale=0.1)
    with torch.no_grad():
        res.residual[-1].weight.normal_(0, 0.1)
    obs, _ = env.reset(seed=3)
    engine = InferenceEngine(res, 3, device="cpu")
    a_engine = engine.act(obs)
    res.reset()
    a_select = res.select_action(obs).numpy()
    np.testing.assert_allclose(a_select, a_engine, atol=1e-6)
    hist = {"observation.state": torch.from_numpy(obs["observation.state"])[:, None].repeat(1, 2, 1)}
    chunk = res.predict_action_chunk(hist)
    assert chunk.shape == (3, 1, 7)
    np.testing.assert_allclose(chunk[:, 0].detach().numpy(), a_engine, atol=1e-5)


def test_bad_uses_are_refused(lift_env_and_base, tmp_path):
    env, base = lift_env_and_base
    res = _residual(base, env)
    with pytest.raises(ConfigError, match="cannot itself be a residual"):
        ResidualPolicy.from_base(res)
    with pytest.raises(ConfigError, match="trained by RL"):
        res.compute_loss({}, torch.zeros(1, 1, 7), torch.zeros(1, 1, dtype=torch.bool))
    with pytest.raises(ConfigError, match="do not apply"):
        InferenceEngine(res, 1, device="cpu", compile=True)
    with pytest.raises(ConfigError, match="scale"):
        _residual(base, env, scale=0.0)
    engine = InferenceEngine(res, 3, device="cpu")
    obs, _ = env.reset(seed=4)
    bad = {"observation.state": obs["observation.state"].copy()}
    bad["observation.state"][1, 3] = np.nan
    with pytest.raises(ObservationError, match="NaN"):
        engine.act(bad)
    res.save(tmp_path / "r")
    cfg = (tmp_path / "r" / "config.json").read_text().replace('"type": "mlp"', '"type": "nope"')
    (tmp_path / "r" / "config.json").write_text(cfg)
    with pytest.raises(Exception, match="nope"):
        load_policy(tmp_path / "r")
    with pytest.raises(CheckpointError):
        load_policy(tmp_path / "missing")
