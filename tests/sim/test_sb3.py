"""SB3VecEnv: the stable-baselines3 view of our vector envs.

stable-baselines3 2.9 ships a checker for single gymnasium envs only (`check_env`; no VecEnv checker).
So the adapter is checked the strongest way available: SB3's `check_vecenv` when the installed SB3 has
one; SB3's and gymnasium's single-env checkers on a one-env view of the adapter; the vector API
contract by hand; SB3's own VecEnv wrappers around it; and PPO / SAC learning for 64 steps, as SB3's
own tests do.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import VecCheckNan, VecMonitor, VecNormalize, VecTransposeImage

from robolearn.errors import ConfigError, UnknownNameError
from robolearn.sim.registry import make_env, native_task_names
from robolearn.sim.sb3 import SB3VecEnv, sb3_key

TASKS = native_task_names()


def sb3_env(task: str = "lift", num_envs: int = 2, keys=None, flatten: bool = False, **cfg) -> SB3VecEnv:
    return SB3VecEnv(make_env(task, num_envs=num_envs, **cfg), keys=keys, flatten=flatten)


def random_actions(venv, rng: np.random.Generator) -> np.ndarray:
    sp = venv.action_space
    return rng.uniform(sp.low, sp.high, (venv.num_envs, *sp.shape)).astype(np.float32)


class SingleEnvView(gym.Env):
    """A one-env SB3VecEnv as a `gymnasium.Env`, so that the single-env checkers of SB3 and gymnasium
    can run on the adapter. A finished episode returns its terminal observation (not the auto-reset one)."""

    metadata = {"render_modes": []}

    def __init__(self, venv: SB3VecEnv):
        assert venv.num_envs == 1
        self.venv = venv
        self.observation_space = venv.observation_space
        self.action_space = venv.action_space

    @staticmethod
    def _first(obs):
        return {k: v[0] for k, v in obs.items()} if isinstance(obs, dict) else obs[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.venv.seed(seed)
        obs = self.venv.reset()
        return self._first(obs), self.venv.reset_infos[0]

    def step(self, action):
        obs, rewards, dones, infos = self.venv.step(np.asarray(action)[None])
        info = infos[0]
        truncated = bool(info["TimeLimit.truncated"])
        obs = info["terminal_observation"] if dones[0] else self._first(obs)
        return obs, float(rewards[0]), bool(dones[0]) and not truncated, truncated, info

    def close(self):
        self.venv.close()


def check_vec_api(venv: SB3VecEnv, steps: int = 12) -> None:
    """The SB3 VecEnv contract, by hand: batch-first obs inside the declared space, (N,) float32
    rewards, (N,) bool dones, N info dicts, terminal_observation for every finished env."""
    n, space = venv.num_envs, venv.observation_space
    rng = np.random.default_rng(0)

    def check_obs(obs, where):
        if isinstance(space, gym.spaces.Dict):
            assert isinstance(obs, dict) and list(obs) == list(space.spaces), where
            for k, sp in space.spaces.items():
                assert obs[k].shape == (n, *sp.shape) and obs[k].dtype == sp.dtype, (where, k, obs[k].shape)
                assert all(sp.contains(o) for o in obs[k]), (where, k)
        else:
            assert isinstance(obs, np.ndarray) and obs.shape == (n, *space.shape) and obs.dtype == space.dtype, where
            assert all(space.contains(o) for o in obs), where

    check_obs(venv.reset(), "reset")
    assert isinstance(venv.reset_infos, list) and len(venv.reset_infos) == n
    finished = 0
    for _ in range(steps):
        obs, rewards, dones, infos = venv.step(random_actions(venv, rng))
        check_obs(obs, "step")
        assert rewards.shape == (n,) and rewards.dtype == np.float32 and np.all(np.isfinite(rewards))
        assert dones.shape == (n,) and dones.dtype == bool
        assert isinstance(infos, list) and len(infos) == n and all(isinstance(i, dict) for i in infos)
        for done, info in zip(dones, infos):
            assert isinstance(info["TimeLimit.truncated"], bool)
            assert ("terminal_observation" in info) == bool(done)
            if done:
                assert space.contains(info["terminal_observation"])
                finished += 1
    assert finished > 0, "check_vec_api needs an episode to end; use a small max_episode_steps"


# ---- checkers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flatten", [False, True], ids=["dict", "flat"])
@pytest.mark.parametrize("task", TASKS)
def test_sb3_vec_env_checker(task, flatten):
    try:  # newer stable-baselines3 releases ship a VecEnv checker; 2.9 does not
        from stable_baselines3.common.vec_env_checker import check_vecenv
    except ImportError:
        check_vecenv = None
    venv = sb3_env(task, num_envs=3, flatten=flatten, max_episode_steps=4)
    if check_vecenv is not None:
        check_vecenv(venv)
    check_vec_api(venv)
    venv.close()


@pytest.mark.parametrize("flatten", [False, True], ids=["dict", "flat"])
@pytest.mark.parametrize("task", TASKS)
def test_single_env_checkers(task, flatten):
    """SB3's check_env (with its VecCheckNan run) and gymnasium's check_env on a one-env view."""
    view = SingleEnvView(sb3_env(task, num_envs=1, flatten=flatten))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sb3_check_env(view, warn=True)
    assert not [str(w.message) for w in caught], "SB3's check_env warned"
    # gymnasium warns that unbounded observation boxes are "probably too low/high": advice, not an error
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Box observation space m.*infinity")
        gym_check_env(view, skip_render_check=True, skip_close_check=True)
    view.close()


def test_sb3_wrappers():
    """VecCheckNan, VecMonitor and VecNormalize (SB3's own wrappers) run over the adapter."""
    venv = VecNormalize(VecMonitor(VecCheckNan(sb3_env(num_envs=2, max_episode_steps=5), raise_exception=True)))
    obs = venv.reset()
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(12):
        obs, rewards, dones, infos = venv.step(random_actions(venv, rng))
        assert all(np.all(np.isfinite(v)) for v in obs.values()) and np.all(np.isfinite(rewards))
        episodes += [info["episode"] for info in infos if "episode" in info]
    assert len(episodes) == 4 and all(ep["l"] == 5 for ep in episodes)
    # VecNormalize has seen data: its running statistics are per SB3 key
    assert set(venv.obs_rms) == {"state", "environment_state"}
    assert venv.obs_rms["state"].count > 1
    venv.close()


# ---- learning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("policy", ["MultiInputPolicy", "MlpPolicy"])
def test_ppo_learns(task, policy):
    venv = sb3_env(task, num_envs=2, flatten=policy == "MlpPolicy", max_episode_steps=10)
    model = PPO(policy, venv, n_steps=16, batch_size=16, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [32]})
    model.learn(total_timesteps=64)
    obs = venv.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, *venv.action_space.shape)
    venv.close()


def test_sac_uses_terminal_observation():
    """Off-policy SB3 stores infos['terminal_observation'] as next_obs of a finished episode."""
    venv = sb3_env(num_envs=2, max_episode_steps=4)
    model = SAC("MultiInputPolicy", venv, buffer_size=128, batch_size=16, learning_starts=16, gradient_steps=1,
                seed=0, device="cpu", policy_kwargs={"net_arch": [32]})
    model.learn(total_timesteps=64)
    buf = model.replay_buffer
    assert buf.pos == 32 and buf.dones[:32].sum() == 16  # every 4th step of both envs ends an episode
    assert buf.timeouts[:32].sum() == 16  # ... by the time limit (TimeLimit.truncated), not a true terminal
    # the stored next observation of a finished step is its terminal observation, not the auto-reset one
    done_t = np.flatnonzero(buf.dones[:32, 0])
    assert not np.array_equal(buf.next_observations["state"][done_t, 0], buf.observations["state"][done_t + 1, 0])
    venv.close()


def test_robosuite_adapter():
    """The robosuite adapter has the same vector interface, so the same SB3 view serves it."""
    raw = make_env("robosuite/Lift", num_envs=2, max_episode_steps=4)
    check_vec_api(SB3VecEnv(raw))
    venv = SB3VecEnv(raw, flatten=True)
    PPO("MlpPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu",
        policy_kwargs={"net_arch": [32]}).learn(total_timesteps=64)
    venv.close()


# ---- the adapter itself --------------------------------------------------------------------------
def test_key_renaming():
    assert sb3_key("observation.state") == "state"
    assert sb3_key("observation.environment_state") == "environment_state"
    assert sb3_key("observation.images.front") == "images_front"
    assert sb3_key("observation.depth.wrist") == "depth_wrist"
    assert sb3_key("robot0.eef/pos") == "robot0_eef_pos"
    assert sb3_key("observation.training") == "obs_training"  # an nn.Module attribute would clash
    venv = sb3_env(num_envs=1)
    assert venv.key_map == {"observation.state": "state", "observation.environment_state": "environment_state"}
    assert all("." not in k for k in venv.observation_space.spaces)
    venv.close()


@pytest.mark.parametrize("flatten", [False, True], ids=["dict", "flat"])
def test_matches_the_wrapped_env(flatten):
    """Same seed and actions: SB3VecEnv returns the wrapped env's numbers, relabelled; a finished
    env's info describes its last step and carries its final observation."""
    raw = make_env("lift", num_envs=2, max_episode_steps=3, seed=5)
    venv = sb3_env(num_envs=2, flatten=flatten, max_episode_steps=3, seed=5)
    venv.seed(11)
    obs = venv.reset()
    robs, _ = raw.reset(seed=11)

    def as_sb3(o):
        if flatten:
            return np.concatenate([o[k] for k in venv.keys], axis=1)
        return {venv.key_map[k]: v for k, v in o.items()}

    def equal(a, b):
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        return np.array_equal(a, b)

    assert equal(obs, as_sb3(robs))
    rng = np.random.default_rng(0)
    for _ in range(3):
        a = random_actions(venv, rng)
        obs, rewards, dones, infos = venv.step(a)
        robs, rrew, rterm, rtrunc, rinfos = raw.step(a)
        assert equal(obs, as_sb3(robs))
        np.testing.assert_array_equal(rewards, rrew)
        np.testing.assert_array_equal(dones, rterm | rtrunc)
    assert dones.all()
    for i, info in enumerate(infos):
        assert info["TimeLimit.truncated"] is True
        assert info["elapsed_steps"] == 3  # the finished episode's step count, not the new episode's
        assert info["is_success"] is bool(rinfos["final_info"]["success"][i])
        assert set(info["reward_terms"]) == set(rinfos["reward_terms"])
        final = {k: v[None] for k, v in rinfos["final_obs"][i].items()}
        expected = as_sb3(final)
        expected = expected[0] if flatten else {k: v[0] for k, v in expected.items()}
        assert equal(info["terminal_observation"], expected)
    venv.close()
    raw.close()


def test_terminated_is_not_a_time_limit():
    """A success that ends the episode is a true terminal: TimeLimit.truncated stays False."""
    venv = sb3_env(num_envs=2, task_options={"lift_height": -1.0})  # the cube starts 'lifted'
    venv.reset()
    _, _, dones, infos = venv.step(np.zeros((2, 7), np.float32))
    assert dones.all()
    assert all(i["is_success"] and not i["TimeLimit.truncated"] for i in infos)
    venv.close()


def test_seeding():
    a, b = sb3_env(num_envs=2), sb3_env(num_envs=2)
    assert a.seed(3) == [3, 3]
    b.seed(3)
    oa, ob = a.reset(), b.reset()
    assert all(np.array_equal(oa[k], ob[k]) for k in oa)
    b.seed(4)
    ob = b.reset()
    assert not np.array_equal(oa["environment_state"], ob["environment_state"])
    a.close()
    b.close()


def test_key_selection():
    venv = sb3_env(num_envs=2, keys=["observation.state"])
    assert list(venv.observation_space.spaces) == ["state"]
    assert venv.reset()["state"].shape == (2, 23)
    venv.close()
    venv = sb3_env(num_envs=2, keys=["state"], flatten=True)  # SB3 names are accepted too
    assert venv.observation_space.shape == (23,)
    assert venv.flat_slices == {"state": slice(0, 23)}
    venv.close()


def test_vec_env_methods():
    venv = sb3_env(num_envs=3)
    assert venv.get_attr("max_episode_steps") == [100, 100, 100]
    assert venv.get_attr("num_envs", indices=[0, 2]) == [3, 3]
    assert venv.has_attr("task") and not venv.has_attr("no_such_attribute")
    venv.set_attr("max_episode_steps", 7)
    assert venv.env.max_episode_steps == 7
    with pytest.raises(ConfigError, match="all of them"):
        venv.set_attr("max_episode_steps", 8, indices=[1])
    assert venv.env_is_wrapped(gym.Wrapper) == [False, False, False]
    assert venv.env_method("reset_envs", [1], indices=[0])[0]["observation.state"].shape == (3, 23)
    assert venv.render_mode is None and venv.get_images() == [None, None, None]
    assert venv.unwrapped is venv
    venv.close()


# ---- a fake vector env: the adapter needs only our vector interface -------------------------------
class FakeVectorEnv:
    """The minimum SB3VecEnv relies on, with an image key and no renderer."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs=2):
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Dict({
            "observation.state": gym.spaces.Box(-1, 1, (3,), np.float32),
            "observation.images.front": gym.spaces.Box(0, 255, (36, 36, 3), np.uint8),
        })
        self.single_action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.t = 0

    def _obs(self):
        return {"observation.state": np.full((self.num_envs, 3), 0.1 * self.t, np.float32),
                "observation.images.front": np.full((self.num_envs, 36, 36, 3), self.t, np.uint8)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, actions):
        self.t += 1
        n = self.num_envs
        done = np.arange(n) == 0  # env 0 finishes every step
        infos = {"success": done.copy(), "_success": done.copy(),
                 "final_obs": np.array([{k: v[i] for k, v in self._obs().items()} if done[i] else None
                                        for i in range(n)], dtype=object),
                 "_final_obs": done.copy()}
        return self._obs(), np.zeros(n, np.float32), done, np.zeros(n, bool), infos

    def close(self):
        pass


def test_images_stay_hwc_uint8():
    venv = SB3VecEnv(FakeVectorEnv())
    assert venv.key_map["observation.images.front"] == "images_front"
    sp = venv.observation_space["images_front"]
    assert sp.shape == (36, 36, 3) and sp.dtype == np.uint8
    obs, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
    assert obs["images_front"].shape == (2, 36, 36, 3) and obs["images_front"].dtype == np.uint8
    assert infos[0]["terminal_observation"]["images_front"].shape == (36, 36, 3)
    # gymnasium's '_key' masks: env 1 has no success entry
    assert infos[0]["is_success"] is True and "success" not in infos[1]


def test_bad_arguments():
    expected = r"observation key 'observation\.stat'.*Did you mean 'observation\.state'"
    with pytest.raises(UnknownNameError, match=expected):
        SB3VecEnv(FakeVectorEnv(), keys=["observation.stat"])
    with pytest.raises(ConfigError, match="cannot flatten the image keys"):
        SB3VecEnv(FakeVectorEnv(), keys=["state", "images_front"], flatten=True)
    flat = SB3VecEnv(FakeVectorEnv(), flatten=True)  # default selection leaves the image out
    assert flat.keys == ["observation.state"]
    next_step_env = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1")])
    with pytest.raises(ConfigError, match="same-step auto-reset"):
        SB3VecEnv(next_step_env)
    next_step_env.close()


# ---- real cameras --------------------------------------------------------------------------------
def test_camera_observations_with_ppo():
    venv = sb3_env(num_envs=2, cameras=["front"], image_size=(36, 36), max_episode_steps=6,
                   keys=["observation.state", "observation.images.front"])
    assert list(venv.observation_space.spaces) == ["images_front", "state"]
    sp = venv.observation_space["images_front"]
    assert sp.shape == (36, 36, 3) and sp.dtype == np.uint8  # HWC uint8, as rendered
    obs = venv.reset()
    assert list(obs) == ["images_front", "state"]
    assert obs["images_front"].shape == (2, 36, 36, 3) and obs["images_front"].std() > 0
    assert venv.render_mode == "rgb_array" and venv.get_images()[0].shape == (36, 36, 3)
    model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    assert isinstance(model.get_env(), VecTransposeImage)  # SB3 transposed the images itself
    model.learn(total_timesteps=64)
    venv.close()
