"""`robolearn train residual` end to end at a tiny budget: PPO and SAC, progress and sparse rewards, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robolearn.errors import ConfigError
from robolearn.policies import load_policy
from robolearn.rl.residual import ResidualPolicy
from robolearn.rl.train import TrainResidualConfig, run


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """A tiny pick_place dataset (32x32 camera), a BC base and a progress model trained on it."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train_reward

    tmp = tmp_path_factory.mktemp("residual")
    ds = collect(CollectConfig(task="pick_place", episodes=4, out=str(tmp / "ds"), cameras=["front"],
                               image_size=(32, 32), num_envs=4, fsync=False, progress=False))
    base = train_bc(TrainBCConfig(dataset=str(ds), policy="mlp", out=str(tmp / "bc"), steps=30, batch_size=32,
                                  eval_episodes=0, progress=False, device="cpu",
                                  policy_options={"obs_keys": ["observation.state"], "hidden": [32]}))
    reward = train_reward(TrainRewardConfig(dataset=str(ds), out=str(tmp / "rm"), steps=10, batch_size=16,
                                            val_fraction=0.0, progress=False, device="cpu",
                                            model_options={"channels": [8, 8], "hidden": [32]}))
    return tmp, base, reward


def _cfg(base, out, **kw):
    defaults = {"base": str(base), "out": str(out), "num_envs": 2, "num_threads": 1, "total_steps": 64,
                "save_every": 32, "eval_every": 0, "eval_episodes": 2, "hidden": [16], "progress": False}
    cfg = TrainResidualConfig(**{**defaults, **kw})
    cfg.ppo.n_steps, cfg.ppo.batch_size, cfg.ppo.n_epochs = 16, 16, 1
    cfg.sac.learning_starts, cfg.sac.batch_size, cfg.sac.buffer_size, cfg.sac.utd = 16, 16, 1000, 1
    return cfg


def test_ppo_with_the_progress_reward_trains_evaluates_and_resumes(pieces, tmp_path):
    _, base, reward = pieces
    out = run(_cfg(base, tmp_path / "ppo", reward=str(reward), eval_every=32))
    assert (out / "checkpoints" / "last").resolve().name == "step_00000064"
    policy = load_policy(out)
    assert isinstance(policy, ResidualPolicy) and policy.config.scale == 0.1
    assert policy.metadata["residual"]["reward"] == str(reward)
    evals = [json.loads(x) for x in (out / "eval_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 32, 64] and all(0 <= e["success_rate"] <= 1 for e in evals)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 64 and summary["resumed_from"] == 0 and 0 <= summary["success_rate"] <= 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = (out / "tb").iterdir()
    tags = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    for tag in ("reward/learned/progress", "reward/learned/shaping", "reward/learned/total", "train/loss",
                "eval/success_rate"):
        assert tag in tags, tags
    # resume: the learner continues from its saved state
    before = load_policy(out / "checkpoints" / "last").state_dict()
    out2 = run(_cfg(base, tmp_path / "ppo", reward=str(reward), total_steps=96, eval_every=32))
    summary = json.loads((out2 / "train_summary.json").read_text())
    assert summary["resumed_from"] == 64 and summary["steps"] == 96
    after = load_policy(out2).state_dict()
    assert any(not np.allclose(before[k].numpy(), after[k].numpy()) for k in before if k.startswith("residual."))
    # SAC's options are not this PPO run's: changing them (or a release adding one) does not block a resume
    cfg = _cfg(base, tmp_path / "ppo", reward=str(reward), total_steps=96, eval_every=32)
    cfg.sac.utd = 3
    out3 = run(cfg)
    assert json.loads((out3 / "train_summary.json").read_text())["resumed_from"] == 96
    with pytest.raises(ConfigError, match="different"):
        run(_cfg(base, tmp_path / "ppo", reward="sparse", total_steps=128))


def test_sac_with_the_sparse_reward(pieces, tmp_path):
    _, base, _ = pieces
    out = run(_cfg(base, tmp_path / "sac", reward="sparse", algo="sac", total_steps=48, eval_episodes=0))
    policy = load_policy(out)
    assert isinstance(policy, ResidualPolicy)
    state = json.loads((out / "checkpoints" / "last" / "training_state.json").read_text())
    assert state["algo"] == "sac" and state["step"] == 48
    # a resumed SAC run restores its networks and optimizers
    out = run(_cfg(base, tmp_path / "sac", reward="sparse", algo="sac", total_steps=64, eval_episodes=0))
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == 48


def test_bad_inputs(pieces, tmp_path):
    tmp, base, reward = pieces
    with pytest.raises(ConfigError, match="base"):
        run(TrainResidualConfig())
    res_dir = run(_cfg(base, tmp_path / "r", reward="sparse", total_steps=16, save_every=16, eval_episodes=0))
    with pytest.raises(ConfigError, match="already a residual"):
        run(_cfg(res_dir, tmp_path / "rr", reward="sparse"))
    with pytest.raises(ConfigError, match="stages"):  # a pick_place progress model on lift
        run(_cfg(base, tmp_path / "lift", reward=str(reward), task="lift"))
