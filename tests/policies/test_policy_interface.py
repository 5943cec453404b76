"""The Policy interface through the MLP: shapes, strict normalization, checkpoints, bad observations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robolearn.data import Feature
from robolearn.errors import ConfigError
from robolearn.policies import CheckpointError, ObservationError, load_policy, make_policy

FEATURES = {
    "observation.state": Feature("float32", (5,)),
    "observation.environment_state": Feature("float32", (3,)),
    "observation.images.front": Feature("video", (16, 16, 3)),
    "action": Feature("float32", (4,)),
}


def stats(keys=("observation.state", "observation.environment_state", "action")):
    dims = {"observation.state": 5, "observation.environment_state": 3, "action": 4}
    return {k: {"mean": np.zeros(dims[k]), "std": np.ones(dims[k]) * 2, "min": -np.ones(dims[k]) * 3,
                "max": np.ones(dims[k]) * 3} for k in keys}


def obs_batch(b=2, t=None):
    rng = np.random.default_rng(0)
    shape = (b,) if t is None else (b, t)
    return {"observation.state": rng.normal(size=(*shape, 5)).astype(np.float32),
            "observation.environment_state": rng.normal(size=(*shape, 3)).astype(np.float32)}


def test_mlp_shapes_and_defaults():
    p = make_policy("mlp", FEATURES, stats(), {"hidden": [32, 32]})
    assert p.config.obs_keys == ["observation.state", "observation.environment_state"]  # cameras left out
    chunk = p.predict_action_chunk({k: torch.as_tensor(v) for k, v in obs_batch(3, 2).items()})
    assert chunk.shape == (3, p.config.horizon, 4)
    a = p.select_action(obs_batch(3))
    assert a.shape == (3, 4)
    # actions come back in dataset units: min_max maps [-1, 1] to [min, max] = [-3, 3]
    assert torch.all(chunk.abs() < 100)


def test_training_loss_masks_padding():
    p = make_policy("mlp", FEATURES, stats(), {"hidden": [16], "dropout": 0.0, "horizon": 4, "n_action_steps": 2})
    batch = {k: torch.as_tensor(v) for k, v in obs_batch(2, 2).items()}
    batch["action"] = torch.zeros(2, 4, 4)
    batch["action_is_pad"] = torch.zeros(2, 4, dtype=torch.bool)
    batch["action_is_pad"][:, 3] = True
    clean, _ = p.training_loss(batch)
    batch["action"][:, 3] = 1e6  # a huge error, but only on padded steps
    masked, _ = p.training_loss(batch)
    assert torch.equal(clean, masked)
    batch["action_is_pad"][:, 3] = False
    assert p.training_loss(batch)[0] > 1e4 * masked


def test_checkpoint_roundtrip(tmp_path):
    p = make_policy("mlp", FEATURES, stats(), {"hidden": [32]})
    p.save(tmp_path / "ck")
    assert {f.name for f in (tmp_path / "ck").iterdir()} == {"config.json", "model.safetensors", "stats.json"}
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["format_version"] == 1 and cfg["type"] == "mlp" and "observation.images.front" not in cfg["features"]
    q = load_policy(tmp_path / "ck")
    o = {k: torch.as_tensor(v) for k, v in obs_batch(2, 2).items()}
    p.eval()
    assert torch.equal(p.predict_action_chunk(o), q.predict_action_chunk(o))


def test_bad_checkpoints(tmp_path):
    p = make_policy("mlp", FEATURES, stats(), {"hidden": [32]})
    ck = p.save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_policy(tmp_path / "nothing")
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_policy(ck)
    # a config that does not match the weights (another architecture)
    (ck / "config.json").write_text(json.dumps({**cfg, "config": {**cfg["config"], "hidden": [64]}}))
    with pytest.raises(CheckpointError, match="has shape"):
        load_policy(ck)
    # a feature set that does not match the weights
    feats = dict(cfg["features"])
    feats["observation.state"] = {"dtype": "float32", "shape": [7], "names": None}
    (ck / "config.json").write_text(json.dumps({**cfg, "features": feats}))
    with pytest.raises(CheckpointError, match="statistics"):
        load_policy(ck)
    (ck / "config.json").write_text(json.dumps(cfg))
    (ck / "stats.json").unlink()
    with pytest.raises(CheckpointError, match="stats.json is missing"):
        load_policy(ck)


def test_strict_normalization():
    with pytest.raises(ConfigError, match="no statistics for 'observation.environment_state'"):
        make_policy("mlp", FEATURES, stats(("observation.state", "action")))
    bad = stats()
    bad["action"]["max"] = np.ones(3)
    with pytest.raises(ConfigError, match="'action'/max have shape"):
        make_policy("mlp", FEATURES, bad)
    bad = stats()
    bad["observation.state"]["std"][0] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        make_policy("mlp", FEATURES, bad)
    with pytest.raises(ConfigError, match="unknown MLPConfig field"):
        make_policy("mlp", FEATURES, stats(), {"hiden": [3]})
    with pytest.raises(ConfigError, match="cameras"):
        make_policy("mlp", FEATURES, stats(), {"obs_keys": ["observation.images.front"]})


@pytest.mark.parametrize("damage,match", [
    (lambda o: o.pop("observation.environment_state"), "has no 'observation.environment_state'"),
    (lambda o: o.__setitem__("observation.state", np.zeros((2, 6), np.float32)), "per-step shape"),
    (lambda o: o["observation.state"].__setitem__((0, 1), np.nan), "NaN"),
    (lambda o: o.__setitem__("observation.state", np.full((2, 5), "x")), "dtype"),
])
def test_bad_observations(damage, match):
    p = make_policy("mlp", FEATURES, stats(), {"hidden": [8]})
    o = obs_batch(2)
    damage(o)
    with pytest.raises(ObservationError, match=match):
        p.select_action(o)


def test_policy_config_checks():
    for bad in ({"n_action_steps": 9, "horizon": 8}, {"action_offset": 1}, {"n_obs_steps": 0},
                {"temporal_ensemble": -1.0}):
        with pytest.raises(ConfigError):
            make_policy("mlp", FEATURES, stats(), bad)
    with pytest.raises(Exception, match="unknown policy 'mpl'.*Did you mean 'mlp'"):
        make_policy("mpl", FEATURES, stats())
