"""ResFiT's pieces: the demo replay buffer, SAC's critic warm-up, demonstrations as residual transitions,
the residual's default inputs, and `robolearn train residual --algo sac` with demonstrations."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from robolearn.data.dataset import DatasetReader
from robolearn.errors import ConfigError, RobolearnError
from robolearn.policies import load_policy, make_policy
from robolearn.rewards import load_reward_model
from robolearn.rewards.shaping import ShapingConfig
from robolearn.rl.algorithms import DemoReplayBuffer, DemoTransitions, LayerNormSACPolicy, ResidualSAC
from robolearn.rl.demos import demo_transitions
from robolearn.rl.residual import ResidualPolicy
from robolearn.rl.train import TrainResidualConfig, run
from robolearn.training import torch_threads

STATE, ENV_STATE, FRONT = "observation.state", "observation.environment_state", "observation.images.front"


@pytest.fixture(scope="module")
def pieces(tmp_path_factory):
    """A tiny pick_place dataset (two successful episodes, two stalled ones cut by the time limit, a
    32x32 camera), a BC base reading state and environment state, a progress model, and a short lift
    dataset (same state, different environment state)."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc
    from robolearn.rewards.train import TrainRewardConfig
    from robolearn.rewards.train import run as train_reward

    tmp = tmp_path_factory.mktemp("resfit")
    ds = collect(CollectConfig(task="pick_place", episodes=4, out=str(tmp / "ds"), cameras=["front"],
                               image_size=(32, 32), num_envs=4, fsync=False, progress=False, seed=0,
                               failure_fraction=0.5, failure_modes=["stall"], max_episode_steps=100))
    base = train_bc(TrainBCConfig(dataset=str(ds), policy="mlp", out=str(tmp / "bc"), steps=30, batch_size=32,
                                  eval_episodes=0, progress=False, device="cpu",
                                  policy_options={"obs_keys": [STATE, ENV_STATE], "hidden": [32]}))
    reward = train_reward(TrainRewardConfig(dataset=str(ds), out=str(tmp / "rm"), steps=10, batch_size=16,
                                            val_fraction=0.0, progress=False, device="cpu",
                                            model_options={"channels": [8, 8], "hidden": [32]}))
    lift = collect(CollectConfig(task="lift", episodes=1, out=str(tmp / "lift"), cameras=[], num_envs=1,
                                 fsync=False, progress=False, max_episode_steps=20))
    return {"ds": ds, "base": base, "reward": reward, "lift": lift}


def _residual(base, **kw):
    return ResidualPolicy.from_base(base, action_low=-np.ones(7), action_high=np.ones(7), hidden=[16], **kw)


def _cfg(base, out, **kw):
    sac = kw.pop("sac", {})
    defaults = {"base": str(base), "out": str(out), "num_envs": 2, "num_threads": 1, "total_steps": 48,
                "save_every": 48, "eval_every": 0, "eval_episodes": 0, "hidden": [16], "progress": False,
                "algo": "sac"}
    cfg = TrainResidualConfig(**{**defaults, **kw})
    cfg.sac.learning_starts, cfg.sac.batch_size, cfg.sac.buffer_size, cfg.sac.utd = 16, 16, 1000, 1
    for k, v in sac.items():
        setattr(cfg.sac, k, v)
    return cfg


def _episode_ends(d: DemoTransitions) -> np.ndarray:
    """Index one past each episode's last transition (every episode ends in a done or a time-out)."""
    return np.flatnonzero((d.dones + d.timeouts) > 0) + 1


# ---- DemoReplayBuffer --------------------------------------------------------------------------

OBS_SPACE = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
ACT_SPACE = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def _hand_demos(obs_dim: int = 2, act_dim: int = 1) -> DemoTransitions:
    """Episode A: rows 0-3, succeeds at row 3; episode B: rows 4-6, times out at row 6. obs = 100 + row
    (online obs stay below 10), reward = row + 1."""
    n = 7
    obs = (100.0 + np.arange(n, dtype=np.float32))[:, None].repeat(obs_dim, 1)
    return DemoTransitions(observations=obs, actions=np.full((n, act_dim), 0.5, np.float32),
                           next_observations=obs + 0.5, rewards=np.arange(1, n + 1, dtype=np.float32),
                           dones=np.array([0, 0, 0, 1, 0, 0, 0], np.float32),
                           timeouts=np.array([0, 0, 0, 0, 0, 0, 1], np.float32), episodes=2)


# row -> (n-step return, discount of the bootstrap, done) for n_steps=3, gamma=0.5
DEMO_RETURNS = {
    0: (1 + 0.5 * 2 + 0.25 * 3, 0.125, 0.0),
    1: (2 + 0.5 * 3 + 0.25 * 4, 0.125, 1.0),  # reaches episode A's success at row 3
    2: (3 + 0.5 * 4, 0.25, 1.0),  # stops at the success: never runs into episode B
    3: (4.0, 0.5, 1.0),
    4: (5 + 0.5 * 6 + 0.25 * 7, 0.125, 0.0),  # the time-out bootstraps (not a terminal)
    5: (6 + 0.5 * 7, 0.25, 0.0),
    6: (7.0, 0.5, 0.0),  # the last row does not wrap around to row 0
}


def _fill(buf, n: int = 5) -> None:
    for i in range(n):
        buf.add(np.full((1, 2), float(i), np.float32), np.full((1, 2), i + 0.5, np.float32),
                np.zeros((1, 1), np.float32), np.array([1.0], np.float32), np.array([i == n - 1]), [{}])


def _buffer(demos=None, fraction=0.5, **kw):
    return DemoReplayBuffer(50, OBS_SPACE, ACT_SPACE, device="cpu", n_steps=3, gamma=0.5, demos=demos,
                            demo_fraction=fraction, **kw)


@pytest.mark.parametrize("fraction, n_demo", [(0.25, 2), (0.5, 4), (0.3, 2)])
def test_demo_buffer_appends_its_share_of_demo_rows(fraction, n_demo):
    buf = _buffer(_hand_demos(), fraction)
    _fill(buf)
    s = buf.sample(8)
    assert s.observations.shape == (8, 2) and s.actions.shape == (8, 1) and s.rewards.shape == (8, 1)
    assert s.discounts is not None and s.discounts.shape == (8, 1)
    from_demo = (s.observations[:, 0] >= 100).numpy()
    assert from_demo.tolist() == [False] * (8 - n_demo) + [True] * n_demo
    np.testing.assert_allclose(s.actions[8 - n_demo:].numpy(), 0.5)  # demo actions, not the online zeros
    np.testing.assert_allclose(s.actions[:8 - n_demo].numpy(), 0.0)


def test_demo_n_step_returns_stop_at_demo_episode_ends():
    buf = _buffer(_hand_demos(), 0.5)
    _fill(buf)
    # the demo buffer itself, row by row
    s = buf.demo._get_samples(np.arange(7))
    for row, (ret, disc, done) in DEMO_RETURNS.items():
        assert s.rewards[row, 0].item() == pytest.approx(ret)
        assert s.discounts[row, 0].item() == pytest.approx(disc)
        assert s.dones[row, 0].item() == done
    # next obs: the state the n-step window ends in (row 2 -> row 3's next, row 0 -> row 2's next)
    np.testing.assert_allclose(s.next_observations[:, 0].numpy(), [102.5, 103.5, 103.5, 103.5, 106.5, 106.5, 106.5])
    # the same through `sample` (random rows, identified by their observation)
    torch.manual_seed(0)
    np.random.seed(0)
    big = buf.sample(400)
    rows = big.observations[200:, 0].numpy() - 100
    assert set(rows.astype(int).tolist()) == set(range(7))
    for i, row in enumerate(rows.astype(int)):
        ret, disc, done = DEMO_RETURNS[row]
        assert big.rewards[200 + i, 0].item() == pytest.approx(ret)
        assert big.discounts[200 + i, 0].item() == pytest.approx(disc)  # gamma ** (steps summed)
        assert big.dones[200 + i, 0].item() == done
    # the online rows are the parent's n-step returns of the online data (reward 1 per step)
    online = big.rewards[:200, 0].numpy()
    assert set(np.round(online, 6).tolist()) <= {1.75, 1.5, 1.0}


def test_demo_buffer_without_demos_is_its_parent():
    from stable_baselines3.common.buffers import NStepReplayBuffer

    for buf in (_buffer(None, 0.5), _buffer(_hand_demos(), 0.0)):
        ref = NStepReplayBuffer(50, OBS_SPACE, ACT_SPACE, device="cpu", n_steps=3, gamma=0.5)
        _fill(buf)
        _fill(ref)
        assert buf.demo is None
        np.random.seed(3)
        a = buf.sample(8)
        np.random.seed(3)
        b = ref.sample(8)
        assert (a.observations < 100).all()
        for x, y in zip(a, b):
            assert (x is None and y is None) or torch.equal(x, y)
    # an empty demo set is no demo set either
    empty = DemoTransitions(*(np.zeros((0, *s)) for s in [(2,), (1,), (2,), (), (), ()]))
    assert _buffer(empty, 0.5).demo is None


def test_demo_buffer_refuses_bad_demos_and_fractions():
    with pytest.raises(ConfigError, match="observations"):
        _buffer(_hand_demos(obs_dim=3), 0.5)
    with pytest.raises(ConfigError, match="actions"):
        _buffer(_hand_demos(act_dim=2), 0.5)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="demo_fraction"):
            _buffer(_hand_demos(), bad)


# ---- ResidualSAC -------------------------------------------------------------------------------


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_sac_critic_warmup_moves_only_the_critics_first():
    from stable_baselines3.common.logger import configure

    demos = DemoTransitions(observations=np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32),
                            actions=np.zeros((20, 1), np.float32),
                            next_observations=np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32),
                            rewards=np.ones(20, np.float32), dones=np.eye(20, dtype=np.float32)[-1],
                            timeouts=np.zeros(20, np.float32), episodes=1)
    model = ResidualSAC("MlpPolicy", "Pendulum-v1", critic_warmup=5, learning_starts=0, batch_size=16,
                        buffer_size=200, seed=0, device="cpu", replay_buffer_class=DemoReplayBuffer,
                        replay_buffer_kwargs={"n_steps": 3, "gamma": 0.99, "demos": demos, "demo_fraction": 0.5},
                        policy_kwargs={"net_arch": [16], "n_critics": 2})
    model.set_logger(configure(None, [""]))
    assert model.replay_buffer.demo is not None
    rng = np.random.default_rng(2)
    for i in range(40):
        model.replay_buffer.add(rng.normal(size=(1, 3)).astype(np.float32), rng.normal(size=(1, 3)).astype(np.float32),
                                rng.uniform(-1, 1, (1, 1)).astype(np.float32), rng.normal(size=1).astype(np.float32),
                                np.array([i % 10 == 9]), [{}])
    actor, critic, target = _params(model.actor), _params(model.critic), _params(model.critic_target)
    ent = model.log_ent_coef.detach().clone()

    model.train(gradient_steps=3, batch_size=16)  # all warm-up
    assert model._n_updates == 3
    assert _same(actor, _params(model.actor)) and torch.equal(ent, model.log_ent_coef.detach())
    assert not model.actor.optimizer.state and not model.ent_coef_optimizer.state  # never stepped
    assert not _same(critic, _params(model.critic)) and not _same(target, _params(model.critic_target))
    critic = _params(model.critic)

    model.train(gradient_steps=4, batch_size=16)  # 2 more warm-up steps, then 2 full SAC steps
    assert model._n_updates == 7
    assert not _same(actor, _params(model.actor)) and not torch.equal(ent, model.log_ent_coef.detach())
    assert not _same(critic, _params(model.critic))
    assert model.actor.optimizer.state  # the actor's Adam took its steps

    with pytest.raises(ConfigError, match="critic_warmup"):
        ResidualSAC("MlpPolicy", "Pendulum-v1", critic_warmup=-1, device="cpu")


def _filled_sac(**kwargs) -> ResidualSAC:
    from stable_baselines3.common.logger import configure

    model = ResidualSAC("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=16, buffer_size=200, seed=0,
                        device="cpu", **{"policy_kwargs": {"net_arch": [16]}, **kwargs})
    model.set_logger(configure(None, [""]))
    rng = np.random.default_rng(0)
    for i in range(40):
        model.replay_buffer.add(rng.normal(size=(1, 3)).astype(np.float32), rng.normal(size=(1, 3)).astype(np.float32),
                                rng.uniform(-1, 1, (1, 1)).astype(np.float32), rng.normal(size=1).astype(np.float32),
                                np.array([i % 10 == 9]), [{}])
    return model


def _adam_steps(opt) -> int:
    return int(next(iter(opt.state.values()))["step"]) if opt.state else 0


def test_sac_policy_delay_steps_the_actor_every_kth_critic_update():
    model = _filled_sac(critic_warmup=2, policy_delay=3)
    model.train(gradient_steps=11, batch_size=16)
    # updates 0-1 warm up the critics; the actor and alpha then step at updates 2, 5 and 8
    assert model._n_updates == 11
    assert _adam_steps(model.critic.optimizer) == 11
    assert _adam_steps(model.actor.optimizer) == 3 and _adam_steps(model.ent_coef_optimizer) == 3
    model.train(gradient_steps=1, batch_size=16)  # update 11: the next in the cycle
    assert _adam_steps(model.actor.optimizer) == 4
    for bad, match in (({"policy_delay": 0}, "policy_delay=0"), ({"residual_penalty": -1.0}, "residual_penalty=-1.0"),
                       ({"residual_penalty": float("nan")}, "residual_penalty=nan")):
        with pytest.raises(ConfigError, match=match):
            ResidualSAC("MlpPolicy", "Pendulum-v1", device="cpu", **bad)


def test_sac_residual_penalty_pulls_the_actor_back_to_the_base():
    """An actor whose correction starts far from zero: with the penalty its deterministic correction
    shrinks towards the base's (zero), whatever the critic says; plain SAC's does not."""
    sq = {}
    for penalty in (0.0, 5.0):
        model = _filled_sac(residual_penalty=penalty, learning_rate=3e-3, ent_coef=1e-3)
        with torch.no_grad():
            model.actor.mu.bias.fill_(1.5)  # tanh(1.5) = 0.9 of the scale
        obs = torch.as_tensor(np.random.default_rng(3).normal(size=(64, 3)), dtype=torch.float32)
        with torch.no_grad():
            before = float(torch.tanh(model.actor.get_action_dist_params(obs)[0]).pow(2).mean())
        model.train(gradient_steps=150, batch_size=16)
        with torch.no_grad():
            sq[penalty] = float(torch.tanh(model.actor.get_action_dist_params(obs)[0]).pow(2).mean())
        assert before > 0.7
    assert sq[5.0] < 0.1 and sq[0.0] > 0.3  # (0.03 and 0.45 when written)


def test_layernorm_sac_critics_and_their_targets():
    model = ResidualSAC(LayerNormSACPolicy, "Pendulum-v1", learning_starts=0, batch_size=8, buffer_size=100,
                        seed=0, device="cpu", policy_kwargs={"net_arch": [16, 8], "n_critics": 3})
    for critic in (model.critic, model.critic_target):
        assert len(critic.q_networks) == 3
        for i, q in enumerate(critic.q_networks):
            assert getattr(critic, f"qf{i}") is q  # registered: in parameters() and the state dict
            kinds = [type(m).__name__ for m in q]
            assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    ln = [n for n in model.critic.state_dict() if ".1.weight" in n]
    assert len(ln) == 3
    for a, b in zip(model.critic.parameters(), model.critic_target.parameters()):
        assert torch.equal(a, b)  # the target starts as a copy
    assert {id(p) for p in model.critic.optimizer.param_groups[0]["params"]} == \
        {id(p) for p in model.critic.parameters() if p.requires_grad}  # the LayerNorms are optimized too
    obs, act = torch.zeros(4, 3), torch.zeros(4, 1)
    assert [q.shape for q in model.critic(obs, act)] == [(4, 1)] * 3


def test_sac_actor_learns_at_its_own_rate():
    from stable_baselines3.common.logger import configure

    model = ResidualSAC("MlpPolicy", "Pendulum-v1", learning_starts=0, batch_size=8, buffer_size=100, seed=0,
                        device="cpu", learning_rate=1e-3, actor_lr_scale=0.1, policy_kwargs={"net_arch": [8]})
    model.set_logger(configure(None, [""]))
    rng = np.random.default_rng(0)
    for _ in range(16):
        model.replay_buffer.add(rng.normal(size=(1, 3)).astype(np.float32), rng.normal(size=(1, 3)).astype(np.float32),
                                rng.uniform(-1, 1, (1, 1)).astype(np.float32), np.zeros(1, np.float32),
                                np.array([False]), [{}])
    for _ in range(2):  # the scale applies once per update, not compounded
        model.train(gradient_steps=1, batch_size=8)
        assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
        assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="actor_lr_scale"):
        ResidualSAC("MlpPolicy", "Pendulum-v1", actor_lr_scale=0.0, device="cpu")


def test_sac_explores_with_its_actor_before_learning_starts():
    """SB3's SAC acts uniformly at random until learning_starts; a residual's learner acts with its own
    actor: here a zero mean and a negligible std, so every action is ~0 (the base's)."""
    model = ResidualSAC("MlpPolicy", "Pendulum-v1", learning_starts=10_000, seed=0, device="cpu",
                        policy_kwargs={"net_arch": [16]})
    with torch.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.zero_()
        model.actor.log_std.weight.zero_()
        model.actor.log_std.bias.fill_(-15.0)
    model._last_obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for _ in range(20):
        action, buffer_action = model._sample_action(model.learning_starts, None, n_envs=4)
        assert action.shape == (4, 1) and np.abs(action).max() < 1e-4 and np.abs(buffer_action).max() < 1e-4


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError
    assert torch.get_num_threads() == before


# ---- the residual's default inputs -------------------------------------------------------------


def test_residual_keys_default_to_every_low_dim_key_the_base_reads(pieces, tmp_path):
    base = load_policy(pieces["base"])
    assert base.config.obs_keys == [STATE, ENV_STATE]
    res = _residual(base)
    assert res.config.residual_keys == [STATE, ENV_STATE]
    assert res.input_dim == 23 + 16 + 7
    assert res.residual[0].in_features == res.input_dim
    res.save(tmp_path / "res")
    again = load_policy(tmp_path / "res")
    assert again.config.residual_keys == [STATE, ENV_STATE] and again.input_dim == 46
    only = _residual(base, residual_keys=[STATE])
    assert only.config.residual_keys == [STATE] and only.input_dim == 23 + 7
    x = res.residual_input({STATE: torch.zeros(2, 23), ENV_STATE: torch.zeros(2, 16)}, torch.zeros(2, 7))
    assert x.shape == (2, 46)


# ---- demonstrations as residual transitions ------------------------------------------------------


def test_demo_transitions_follow_the_cut_rule_and_the_base(pieces):
    base = load_policy(pieces["base"])
    policy = _residual(base, scale=0.1)
    reader = DatasetReader(pieces["ds"])
    d = demo_transitions(policy, pieces["ds"])

    # lengths: successes are cut after their first success, failures lose their last frame
    counts, succeeded = [], []
    for e in range(reader.num_episodes):
        succ = reader.episode(e, ["next.success"])["next.success"].reshape(-1).astype(bool)
        first = np.flatnonzero(succ)
        counts.append(int(first[0]) + 1 if len(first) else len(succ) - 1)
        succeeded.append(bool(len(first)))
    assert any(succeeded) and not all(succeeded)  # the fixture has both kinds
    assert d.episodes == reader.num_episodes and len(d) == sum(counts)
    ends = np.cumsum(counts)
    np.testing.assert_array_equal(_episode_ends(d), ends)
    for n, end, ok in zip(counts, ends, succeeded):
        assert d.dones[end - 1] == float(ok) and d.timeouts[end - 1] == float(not ok)
        assert d.dones[end - n:end - 1].sum() == 0 and d.timeouts[end - n:end - 1].sum() == 0
    assert d.observations.shape == (len(d), policy.input_dim) == d.next_observations.shape
    assert d.actions.shape == (len(d), 7) and d.actions.dtype == np.float32
    assert (np.abs(d.actions) <= 1).all() and 0 <= d.clipped_fraction <= 1
    # sparse reward: 1 exactly on the successes' last transitions
    np.testing.assert_array_equal(d.rewards, d.dones)
    assert d.reward_terms["sparse/success"] == pytest.approx(d.dones.mean())

    # a spot check: the base run online over episode 1's frames, the residual input and correction at t
    from robolearn.inference.engine import InferenceEngine

    e, t = 1, 7
    ep = reader.episode(e, [STATE, ENV_STATE, "action"])
    engine = InferenceEngine(policy.base, 1, device="cpu")
    for i in range(t + 1):
        a = engine.act({k: ep[k][i:i + 1] for k in (STATE, ENV_STATE)})
    row = int(ends[e - 1]) + t
    with torch.inference_mode():
        x = policy.residual_input({k: torch.as_tensor(ep[k][t:t + 1]) for k in (STATE, ENV_STATE)},
                                  torch.as_tensor(a)).numpy()
    np.testing.assert_allclose(d.observations[row], x[0], atol=1e-5)
    np.testing.assert_allclose(d.next_observations[row - 1], x[0], atol=1e-5)
    np.testing.assert_allclose(d.actions[row], np.clip((ep["action"][t] - a[0]) / 0.1, -1, 1), atol=1e-4)

    # only some episodes
    part = demo_transitions(policy, pieces["ds"], episodes=[e])
    assert len(part) == counts[e] and part.episodes == 1
    np.testing.assert_allclose(part.observations[t], x[0], atol=1e-5)


def test_demo_transitions_with_the_learned_reward_telescope(pieces):
    from robolearn.inference.engine import InferenceEngine

    base = load_policy(pieces["base"])
    policy = _residual(base)
    rm = load_reward_model(pieces["reward"])
    shaping = ShapingConfig(mode="potential", gamma=1.0, scale=2.0, sparse="success", terminal_potential="zero")
    d = demo_transitions(policy, pieces["ds"], reward_model=rm, shaping=shaping)
    sparse = demo_transitions(policy, pieces["ds"])
    np.testing.assert_array_equal(d.observations, sparse.observations)
    np.testing.assert_array_equal(d.dones, sparse.dones)
    assert np.isfinite(d.rewards).all() and d.rewards.dtype == np.float32
    assert d.reward_terms["learned/total"] == pytest.approx(float(d.rewards.mean()), rel=1e-4, abs=1e-6)

    # Phi scored live, tick by tick (all episodes side by side), as RewardWrapper scores the online envs
    reader = DatasetReader(pieces["ds"])
    keys = list(rm.config.obs_keys)
    ends = _episode_ends(d)
    starts = np.concatenate([[0], ends[:-1]])
    frames = (ends - starts) + (d.dones[ends - 1] == 0)  # frames each episode's transitions visit
    eps = [reader.episode(e, keys) for e in range(len(ends))]
    engine = InferenceEngine(rm, len(ends), device="cpu")
    phi = np.zeros((len(ends), int(frames.max())))
    with torch_threads(1):
        for t in range(phi.shape[1]):  # a finished episode repeats its last frame (scores unused)
            obs = {k: np.stack([ep[k][min(t, n - 1)] for ep, n in zip(eps, frames)]) for k in keys}
            phi[:, t] = 2.0 * engine.score(obs)["progress"]
    for e, (lo, hi, n) in enumerate(zip(starts, ends, frames)):
        total = float(d.rewards[lo:hi].astype(np.float64).sum())
        if d.dones[hi - 1]:  # terminal potential 0: the shaping sums to -Phi(s_0), plus the success
            assert total == pytest.approx(1.0 - phi[e, 0], abs=1e-4)
        else:  # a time-out is not terminal: Phi(last state reached) - Phi(s_0)
            assert total == pytest.approx(phi[e, n - 1] - phi[e, 0], abs=1e-4)


def test_demo_transitions_refuse_a_dataset_of_another_task(pieces):
    base = load_policy(pieces["base"])  # pick_place: environment_state (16,); lift's is (10,)
    with pytest.raises(ConfigError, match="observation.environment_state"):
        demo_transitions(_residual(base), pieces["lift"])
    # a state-only base fits lift's state, but the reward model reads a camera the lift dataset lacks
    r = DatasetReader(pieces["ds"])
    state_only = make_policy("mlp", r.features, r.meta.stats, {"obs_keys": [STATE], "hidden": [8]})
    rm = load_reward_model(pieces["reward"])
    assert FRONT in rm.config.obs_keys
    with pytest.raises(ConfigError, match=FRONT):
        demo_transitions(_residual(state_only), pieces["lift"], reward_model=rm, shaping=ShapingConfig())


# ---- robolearn train residual --algo sac ---------------------------------------------------------


def test_sac_with_demonstrations_and_the_learned_reward(pieces, tmp_path, capsys):
    expected = len(demo_transitions(_residual(load_policy(pieces["base"])), pieces["ds"]))
    out = run(_cfg(pieces["base"], tmp_path / "sac", reward=str(pieces["reward"]), sac={"critic_warmup": 8}))
    printed = capsys.readouterr().out
    assert f"demonstrations: {expected} transitions of 4 episodes from {Path(pieces['ds']).resolve()}" in printed
    state = json.loads((out / "checkpoints" / "last" / "training_state.json").read_text())
    assert state["algo"] == "sac" and state["step"] == 48 and state["n_updates"] > 8
    policy = load_policy(out)
    assert isinstance(policy, ResidualPolicy) and policy.config.residual_keys == [STATE, ENV_STATE]
    assert policy.residual[-1].weight.abs().sum() > 0  # past the warm-up the actor moved off zero


def test_sac_without_demonstrations_warmup_and_resume(pieces, tmp_path, capsys):
    cfg = _cfg(pieces["base"], tmp_path / "sac", reward="sparse", total_steps=32, save_every=32,
               sac={"demos": "none", "critic_warmup": 10_000})
    out = run(cfg)
    assert "demonstrations" not in capsys.readouterr().out
    first = json.loads((out / "checkpoints" / "last" / "training_state.json").read_text())
    assert first["n_updates"] > 0
    # all updates were warm-up: the actor (the residual) is still exactly zero
    assert load_policy(out).residual[-1].weight.abs().sum() == 0
    # ... and so are its exploration std (one std everywhere, sac.log_std_init) and entropy coefficient
    from safetensors.torch import load_file

    state = load_file(str(out / "checkpoints" / "last" / "training_state.safetensors"))
    assert state["policy.actor.log_std.weight"].abs().sum() == 0
    assert bool((state["policy.actor.log_std.bias"] == -2.0).all())
    assert torch.allclose(state["log_ent_coef"].exp(), torch.tensor([0.01]))
    assert any(".1.weight" in k and "critic.qf0" in k for k in state)  # the critics' LayerNorm
    # the resumed run counts on from the saved number of updates (its warm-up is not restarted)
    out = run(_cfg(pieces["base"], tmp_path / "sac", reward="sparse", total_steps=48, save_every=32,
                   sac={"demos": "none", "critic_warmup": 10_000}))
    second = json.loads((out / "checkpoints" / "last" / "training_state.json").read_text())
    assert second["step"] == 48 and second["n_updates"] > first["n_updates"] + 8


def test_sac_bad_demo_settings(pieces, tmp_path):
    with pytest.raises(ConfigError, match="not a dataset directory"):
        run(_cfg(pieces["base"], tmp_path / "a", sac={"demos": str(tmp_path / "nowhere")}))
    with pytest.raises(ConfigError, match="demo_fraction"):
        run(_cfg(pieces["base"], tmp_path / "b", sac={"demo_fraction": 1.0}))
    with pytest.raises(ConfigError, match="critic_warmup"):
        run(_cfg(pieces["base"], tmp_path / "c", sac={"critic_warmup": -1}))
    for bad, match in (({"ent_coef_init": 0.0}, "sac.ent_coef_init=0.0 must be > 0"),
                       ({"actor_learning_rate": -1e-4}, "sac.actor_learning_rate must be > 0"),
                       ({"log_std_init": float("nan")}, "sac.log_std_init=nan must be a finite number"),
                       ({"policy_delay": 0}, "sac.policy_delay=0 must be at least 1"),
                       ({"residual_penalty": -0.5}, r"sac.residual_penalty=-0.5 must be >= 0 \(0: plain SAC\)")):
        with pytest.raises(ConfigError, match=match):
            run(_cfg(pieces["base"], tmp_path / "e", sac=bad))
    # demos from another task's dataset: refused naming the feature
    with pytest.raises(ConfigError, match="observation.environment_state"):
        run(_cfg(pieces["base"], tmp_path / "d", sac={"demos": str(pieces["lift"])}))


def test_a_base_of_another_task_is_refused(pieces, tmp_path):
    # the pick_place base reads a (16,) environment_state; lift gives (10,)
    with pytest.raises(RobolearnError, match=r"observation.environment_state.*\(16,\).*\(10,\)") as info:
        run(_cfg(pieces["base"], tmp_path / "lift", reward="sparse", task="lift", sac={"demos": "none"}))
    assert isinstance(info.value, ConfigError)
