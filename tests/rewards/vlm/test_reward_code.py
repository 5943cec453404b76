"""Reward code: fields from declared features, the code-reward env wrapper, the critic, and the whole
design -> critic -> RL round -> feedback loop against a loopback VLM server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robolearn.data.format import Feature
from robolearn.errors import ConfigError, RobolearnError
from robolearn.rewards.code import describe_fields, obs_fields, split_obs
from robolearn.rewards.vlm.client import VLMConfig
from robolearn.rewards.vlm.server import FixtureServer, request_text

GOOD = '''
def compute_reward(obs, action):
    d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
    lifted = np.clip((obs["cube_pos"][:, 2] - 0.02) / 0.05, 0.0, 1.0)
    return {"reach": 1.0 - np.tanh(10.0 * d), "lift": 2.0 * lifted}
'''
FALLING = '''
def compute_reward(obs, action):
    return {"away": np.linalg.norm(obs["cube_to_tcp"], axis=-1)}
'''
UNSAFE = '''
import os
def compute_reward(obs, action):
    return {"x": np.zeros(len(action))}
'''


@pytest.fixture(scope="module")
def lift(tmp_path_factory):
    """A small lift dataset recorded by the expert (state only) and a tiny MLP base trained on it."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc

    tmp = tmp_path_factory.mktemp("reward_code")
    ds = collect(CollectConfig(task="lift", episodes=4, out=str(tmp / "ds"), num_envs=4, fsync=False,
                               progress=False))
    base = train_bc(TrainBCConfig(dataset=str(ds), policy="mlp", out=str(tmp / "bc"), steps=30, batch_size=32,
                                  eval_episodes=0, progress=False, device="cpu",
                                  policy_options={"obs_keys": ["observation.state"], "hidden": [32]}))
    return tmp, ds, base


def test_fields_group_the_declared_names():
    from robolearn.sim.vec_env import STATE_NAMES

    env_names = ["cube_x", "cube_y", "cube_z", "cube_qw", "cube_qx", "cube_qy", "cube_qz",
                 "cube_to_tcp_x", "cube_to_tcp_y", "cube_to_tcp_z"]
    feats = {"observation.state": Feature("float32", (len(STATE_NAMES),), list(STATE_NAMES)),
             "observation.environment_state": Feature("float32", (10,), env_names),
             "observation.images.front": Feature("video", (8, 8, 3)),
             "action": Feature("float32", (7,), ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"])}
    fields = {f.name: f for f in obs_fields(feats)}
    assert list(fields) == ["q", "dq", "tcp_pos", "tcp_quat", "fingers", "cube_pos", "cube_quat", "cube_to_tcp",
                            "gripper_width"]
    assert fields["q"].columns == list(range(7)) and fields["cube_to_tcp"].unit == "m"
    state = np.arange(2 * len(STATE_NAMES), dtype=np.float32).reshape(2, -1)
    env = np.arange(20, dtype=np.float32).reshape(2, 10)
    obs = split_obs(list(fields.values()), {"observation.state": state, "observation.environment_state": env})
    np.testing.assert_array_equal(obs["cube_to_tcp"], env[:, 7:10])
    np.testing.assert_array_equal(obs["gripper_width"], state[:, 21] - state[:, 22])
    assert obs["q"].shape == (2, 7) and obs["gripper_width"].shape == (2,) and obs["q"].dtype == np.float64
    table = describe_fields(list(fields.values()), feats["action"])
    assert 'obs["cube_pos"]' in table and "(N, 3)" in table and "gripper" in table


def test_critic_accepts_rising_rewards_and_names_what_is_wrong(lift):
    from robolearn.rewards.vlm.codegen import critique, recorded_episodes

    _, ds, _ = lift
    rec = recorded_episodes(str(ds), 4)
    good = critique(GOOD, rec, 0.3)
    assert good["accepted"] and good["progress_corr"] > 0.3 and set(good["terms"]) == {"reach", "lift"}
    falling = critique(FALLING, rec, 0.3)
    assert not falling["accepted"] and "flagged" in falling["message"] and "away" in falling["message"]
    unsafe = critique(UNSAFE, rec, 0.3)
    assert not unsafe["accepted"] and unsafe["stage"] == "check" and "import" in unsafe["message"]
    crash = critique("def compute_reward(obs, action):\n    return {'x': obs['nope']}\n", rec, 0.3)
    assert not crash["accepted"] and crash["stage"] == "run" and "nope" in crash["message"]


def test_train_residual_takes_reward_code(lift, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from robolearn.rl.train import TrainResidualConfig, run

    _, _, base = lift
    path = tmp_path / "reward.py"
    path.write_text(GOOD)
    cfg = TrainResidualConfig(base=str(base), reward=f"code:{path}", out=str(tmp_path / "rl"), num_envs=2,
                              num_threads=1, total_steps=64, save_every=64, eval_every=0, eval_episodes=2,
                              hidden=[16], progress=False)
    cfg.ppo.n_steps, cfg.ppo.batch_size, cfg.ppo.n_epochs = 16, 16, 1
    out = run(cfg)
    (run_dir,) = (out / "tb").iterdir()
    tags = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    assert {"reward/code/reach", "reward/code/lift", "reward/code/total"} <= set(tags), tags
    with pytest.raises(ConfigError, match="not a file"):
        run(TrainResidualConfig(base=str(base), reward=f"code:{tmp_path / 'missing.py'}", out=str(tmp_path / "x")))


def _responder(programs: list[str]):
    """Answers designer prompts with `programs` by candidate number (round 2 gets the same ones)."""
    def respond(req):
        text = request_text(req)
        k = int(text.split("This is candidate ")[1].split(" ")[0]) - 1
        return f"Idea: reward the stages in order.\n```python\n{programs[k].strip()}\n```"
    return respond


def test_loop_keeps_the_best_program_and_feeds_back(lift, tmp_path):
    from robolearn.rewards.vlm.codegen import RewardCodeConfig, run

    tmp, ds, base = lift
    with FixtureServer(_responder([GOOD, FALLING, UNSAFE])) as server:
        cfg = RewardCodeConfig(base=str(base), out=str(tmp_path / "rc"), candidates=3, rounds=2, image=False,
                               critic_episodes=4, rl_steps=32, rl_envs=2, eval_episodes=2, progress=False,
                               vlm=VLMConfig(base_url=server.base_url, model=server.model,
                                             cache_dir=str(tmp_path / "cache")))
        summary = run(cfg)
        n_requests = len(server.requests)
        second_round = request_text(server.requests[3])
        # a rerun reads every finished candidate back and asks nothing new
        again = run(cfg)
    assert n_requests == 6 and len(server.requests) == 6
    assert again["best"] == summary["best"]
    out = tmp_path / "rc"
    assert summary["best"]["candidate"] == 0 and (out / "reward.py").read_text().strip() == GOOD.strip()
    statuses = [c["status"] for c in summary["candidates"]]
    assert statuses[:3] == ["trained", "rejected (progress)", "rejected (check)"]
    # round 2's prompt carries the best program, its RL feedback and the critic's complaints
    assert "The best program so far" in second_round and "Success rate after the RL round" in second_round
    assert "imports are not allowed" in second_round.lower() or "import" in second_round
    cand = out / "round_0" / "candidate_0"
    for name in ("prompt.txt", "answer.md", "reward.py", "critic.json", "feedback.txt", "result.json"):
        assert (cand / name).is_file(), name
    assert "obs[\"cube_to_tcp\"]" in (cand / "prompt.txt").read_text()
    feedback = (cand / "feedback.txt").read_text()
    assert "Stages reached" in feedback and "reach:" in feedback
    assert len((out / "history.jsonl").read_text().splitlines()) == 12  # 6 per run: the rerun logs its reads
    assert json.loads((out / "summary.json").read_text())["vlm"]["model"] == server.model


def test_loop_with_nothing_usable_says_so(lift, tmp_path):
    from robolearn.rewards.vlm.codegen import RewardCodeConfig, run

    _, _, base = lift
    with FixtureServer("I cannot write code for this.") as server:
        cfg = RewardCodeConfig(base=str(base), out=str(tmp_path / "rc"), candidates=1, rounds=1, image=False,
                               critic_episodes=2, progress=False,
                               vlm=VLMConfig(base_url=server.base_url, model=server.model, cache_dir=None))
        with pytest.raises(RobolearnError, match="no program passed the critic"):
            run(cfg)
    assert "no ```python block" in json.loads((tmp_path / "rc/round_0/candidate_0/result.json").read_text())[
        "feedback"]
    with pytest.raises(ConfigError, match="name the BC base"):
        run(RewardCodeConfig())
