"""Fixtures of the deploy tests: a tiny BC policy trained on scripted lift demos, and untrained
policies of other shapes (joint_pos actions, a camera) built from made-up features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.data.format import Feature
from robolearn.hardware import load_robot
from robolearn.training import torch_threads

EE_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]
LIFT_ENV = {"task": "lift", "control_hz": 20.0, "action_mode": "ee_delta", "max_dpos": 0.05, "max_drot": 0.5,
            "robot": "panda"}


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Batch-1 inference and a tiny MLP: one intra-op thread is as fast, and does not stall on OpenMP
    barriers when the other cores are busy (as tests/policies/test_diffusion.py does)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def lift_policy(tmp_path_factory, _one_torch_thread):
    """An MLP trained for 100 steps on 3 scripted lift episodes, saved as `robolearn train bc` saves it
    (the recorded env config in its metadata)."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.windows import WindowDataset
    from robolearn.policies import make_policy

    tmp = tmp_path_factory.mktemp("deploy")
    ds = collect(CollectConfig(task="lift", episodes=3, out=str(tmp / "lift"), num_envs=3, cameras=[],
                               progress=False, fsync=False))
    reader = DatasetReader(ds)
    torch.manual_seed(0)
    policy = make_policy("mlp", reader.features, reader.meta.stats, {"hidden": [64, 64]})
    policy.metadata = {"dataset": str(ds), "env": reader.meta.robolearn["env"], "task": "lift"}
    windows = WindowDataset(reader, policy.config.n_obs_steps, policy.config.horizon, policy.config.action_offset,
                            obs_keys=policy.config.obs_keys)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    policy.train()
    rng = np.random.default_rng(0)
    for _ in range(100):
        batch = windows[rng.integers(0, len(windows), 64)]
        loss, _ = policy.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.save(tmp / "run" / "checkpoints" / "last")


def _stats(features: dict[str, Feature], action_lo, action_hi) -> dict:
    out = {}
    for k, f in features.items():
        if f.is_video:
            continue
        n = f.shape[0]
        out[k] = {"mean": np.zeros(n), "std": np.ones(n), "min": -np.ones(n), "max": np.ones(n)}
    out["action"].update(min=np.asarray(action_lo, float), max=np.asarray(action_hi, float))
    return out


@pytest.fixture(scope="session")
def checkpoint():
    """make_checkpoint, for the tests (test modules are not a package: they get helpers as fixtures)."""
    return make_checkpoint


def make_checkpoint(path, action: str = "ee_delta", robot: str = "panda", camera: int = 0, env_state: bool = True,
                    action_dim: int | None = None, env: dict | None = None):
    """An untrained policy checkpoint: MLP (or a tiny diffusion policy reading a camera of side `camera`),
    observation.state for `robot`, actions ee_delta (7) or joint_pos (robot joints + gripper)."""
    from robolearn.policies import make_policy

    r = load_robot(robot)
    feats = {"observation.state": Feature("float32", (2 * r.dof + 9,))}
    if env_state:
        feats["observation.environment_state"] = Feature("float32", (10,), [f"e{i}" for i in range(10)])
    if camera:
        feats["observation.images.front"] = Feature("video", (camera, camera, 3))
    if action == "ee_delta":
        names, lo, hi = EE_NAMES, -np.ones(7), np.ones(7)
    else:
        names = [*r.joint_names, "gripper"]
        lo, hi = np.append(r.position_lower, -1.0), np.append(r.position_upper, 1.0)
    if action_dim is not None:
        names, lo, hi = None, -np.ones(action_dim), np.ones(action_dim)
    feats["action"] = Feature("float32", (len(lo),), names)
    torch.manual_seed(0)
    if camera:
        tiny = {"down_dims": [16, 32], "horizon": 8, "n_action_steps": 4, "diffusion_step_embed_dim": 16,
                "n_groups": 4, "image_feature_dim": 8}
        policy = make_policy("diffusion", feats, _stats(feats, lo, hi), tiny)
    else:
        policy = make_policy("mlp", feats, _stats(feats, lo, hi), {"hidden": [16]})
    policy.metadata = {"env": env if env is not None else {**LIFT_ENV, "action_mode": action, "robot": robot}}
    return policy.save(path)
