"""Session-scoped fixtures of the reward-model tests, shared with the judge's tests (tests/eval): one small
annotated pick_place dataset with 32x32 front-camera images (4 expert successes, 2 injected drops) and one
reward model trained on it for a few steps. Everything is sized for a 2-core CPU: a tiny network, few
steps, short episodes.

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`), so each fixture is built once per
session whichever directory asks first. The one-torch-thread autouse fixture is not here: the
directories that want it (tests/rewards, tests/eval) declare it in their conftest."""

from __future__ import annotations

from pathlib import Path

import pytest

# a tiny stage_progress network: the tests check plumbing and numbers, not how well it learns
SMALL = {"channels": [8, 16], "image_dim": 32, "state_dim": 16, "embed_dim": 32, "hidden": [64]}
IMAGE_SIZE = (32, 32)


def train_config(dataset, out, **kw):
    """A TrainRewardConfig sized for the tests (override any field with kw)."""
    from robolearn.rewards.train import TrainRewardConfig

    base = dict(dataset=str(dataset), out=str(out), steps=20, batch_size=16, val_fraction=0.2, save_every=10,
                val_every=10, log_every=5, progress=False, device="cpu", model_options=dict(SMALL))
    base.update(kw)
    return TrainRewardConfig(**base)


def one_torch_thread():
    """Tiny models on a 2-core machine that is also running other work: torch's intra-op threads cost far
    more in contention than they gain (one engine tick measured 120 ms with 2 threads, 1.6 ms with 1)."""
    from robolearn.training import torch_threads

    return torch_threads(1)


@pytest.fixture(scope="session")
def small_options() -> dict:
    return dict(SMALL)


@pytest.fixture(scope="session")
def make_train_config():
    """train_config (above) for tests: make_train_config(dataset, out, steps=..., ...)."""
    return train_config


@pytest.fixture(scope="session")
def pp_dataset(tmp_path_factory) -> Path:
    """pick_place, 6 episodes (4 successes of ~55-73 frames, 2 drops cut at 80 frames), stage annotated."""
    from robolearn.data.collect import CollectConfig, run

    out = tmp_path_factory.mktemp("reward_data") / "pp"
    with one_torch_thread():
        run(CollectConfig(task="pick_place", episodes=6, out=str(out), cameras=["front"], image_size=IMAGE_SIZE,
                          num_envs=6, fsync=False, progress=False, failure_fraction=0.5, failure_modes=["drop"],
                          seed=0, max_episode_steps=80))
    return out


@pytest.fixture(scope="session")
def reader(pp_dataset):
    from robolearn.data.dataset import DatasetReader

    return DatasetReader(pp_dataset)


@pytest.fixture(scope="session")
def reward_run(pp_dataset, tmp_path_factory) -> Path:
    """A reward model trained for 20 steps on pp_dataset (its run directory)."""
    from robolearn.rewards.train import run

    with one_torch_thread():
        return run(train_config(pp_dataset, tmp_path_factory.mktemp("reward_run") / "run"))


@pytest.fixture
def reward_model(reward_run):
    """A fresh copy of the trained reward model (tests may move it or switch its mode)."""
    from robolearn.rewards import load_reward_model

    return load_reward_model(reward_run / "checkpoints" / "last")
