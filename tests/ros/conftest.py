"""Fixtures of the ROS 2 tests: node processes over real DDS (cleaned up even when a test fails), an rclpy client
in the test process, each test on a ROS domain of its own, and the policies and progress model they run.

Every node runs as the launcher runs it (robolearn.deploy.launch.NodeAction): `python -c "from MODULE import
main; main()" --ros-args ...` with ros_ws/src/robolearn_ros on PYTHONPATH."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import ROS_PKG, NodeProcess, RosClient, ros_env  # noqa: E402

from robolearn.training import torch_threads  # noqa: E402

# the tests import robolearn_ros (convert, the PARAMETERS tables) from the source tree, as the launcher runs it
if str(ROS_PKG) not in sys.path:
    sys.path.insert(0, str(ROS_PKG))

try:
    import rclpy  # noqa: F401
except ImportError:  # without the ros extra these modules cannot even be collected
    collect_ignore_glob = ["test_*.py"]

_DOMAINS = itertools.count()


def next_domain_id() -> int:
    """A ROS domain for one test: 1..100, different for each test of this session and (likely) from other
    sessions on this machine. Domains above 101 collide with Linux's ephemeral ports on some set-ups."""
    return 1 + (os.getpid() * 7 + next(_DOMAINS)) % 100


@pytest.fixture
def ros_domain(monkeypatch) -> int:
    """A ROS domain of its own for this test, set in os.environ (the nodes and the launcher inherit it)."""
    domain = next_domain_id()
    for key, value in ros_env(domain).items():
        monkeypatch.setenv(key, value)
    return domain


@pytest.fixture
def spawn(ros_domain, tmp_path) -> Callable[..., NodeProcess]:
    """spawn(exe, name, **params) -> a running NodeProcess on this test's domain, stopped after the test."""
    procs: list[NodeProcess] = []

    def start(exe: str, name: str, **params) -> NodeProcess:
        p = NodeProcess(exe, name, params, ros_env(ros_domain), tmp_path)
        procs.append(p)
        return p

    yield start
    for p in procs:  # all at once, then wait for each
        p.interrupt()
    for p in procs:
        p.stop()


@pytest.fixture
def client(ros_domain) -> RosClient:
    c = RosClient(ros_domain)
    yield c
    c.close()


# ---- models -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def lift_policy(tmp_path_factory) -> Path:
    """An MLP trained by BC on 32 scripted lift demos (state + environment state; ~85-90% success): ~40 s."""

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train

    tmp = tmp_path_factory.mktemp("ros_policy")
    with torch_threads(1):
        ds = collect(CollectConfig(task="lift", episodes=32, out=str(tmp / "lift"), num_envs=8, cameras=[],
                                   progress=False, fsync=False))
        run = train(TrainBCConfig(dataset=str(ds), policy="mlp", out=str(tmp / "bc"), steps=2000, batch_size=128,
                                  save_every=2000, eval_episodes=0, progress=False, device="cpu",
                                  policy_options={"hidden": [256, 256, 256], "dropout": 0.1}))
    return run / "checkpoints" / "last"


@pytest.fixture(scope="session")
def progress_model(tmp_path_factory) -> Path:
    """A tiny stage-aware progress model (front camera 32x32, state and environment state) trained for 20 steps
    on 4 lift demos: enough for the judge's plumbing (tests/reward_fixtures.py sizes it the same way)."""

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train

    tmp = tmp_path_factory.mktemp("ros_reward")
    with torch_threads(1):
        ds = collect(CollectConfig(task="lift", episodes=4, out=str(tmp / "lift"), num_envs=4, cameras=["front"],
                                   image_size=(32, 32), progress=False, fsync=False))
        return train(TrainRewardConfig(
            dataset=str(ds), out=str(tmp / "rm"), steps=20, batch_size=16, val_fraction=0.0, progress=False,
            device="cpu", model_options={"channels": [8, 16], "image_dim": 32, "state_dim": 16, "embed_dim": 32,
                                         "hidden": [64], "privileged": True}))
