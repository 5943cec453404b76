"""RobosuiteVecEnv: robosuite tasks with the native VecEnv's keys, spaces, infos and auto-reset.

One 2-env Lift (horizon 3) is shared by the module; each test resets it first. robosuite renders with
OSMesa, which `robolearn/__init__` selects before mujoco is imported.
"""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.errors import ActionError, ConfigError, UnknownNameError
from robolearn.sim.config import EnvConfig
from robolearn.sim.registry import make_env

N = 2
HORIZON = 3


@pytest.fixture(scope="module")
def lift():
    env = make_env("robosuite/Lift", num_envs=N, max_episode_steps=HORIZON)
    yield env
    env.close()


def _assert_in_space(env, obs) -> None:
    assert set(obs) == set(env.single_observation_space.spaces)
    for k, space in env.single_observation_space.items():
        assert obs[k].shape == (env.num_envs, *space.shape), k
        assert obs[k].dtype == space.dtype, k
    assert env.observation_space.contains(obs)


def test_lift_reset_and_step_match_declared_spaces(lift):
    obs, info = lift.reset(seed=0)
    _assert_in_space(lift, obs)
    assert lift.single_action_space.shape == (7,)
    assert lift.action_space.shape == (N, 7)
    assert info["elapsed_steps"].tolist() == [0, 0]

    obs, reward, terminated, truncated, info = lift.step(np.zeros((N, 7), np.float32))
    _assert_in_space(lift, obs)
    assert reward.shape == (N,) and reward.dtype == np.float32
    assert terminated.shape == truncated.shape == (N,)
    assert info["success"].dtype == bool and info["success"].shape == (N,)
    assert info["stage"].tolist() == [0, 0]
    assert info["stage_name"].tolist() == ["task", "task"]
    np.testing.assert_array_equal(info["reward_terms"]["reward"], reward)
    assert info["elapsed_steps"].tolist() == [1, 1]


def test_state_layout_and_quaternions_are_wxyz(lift):
    obs, _ = lift.reset(seed=0)
    for _ in range(2):
        obs, *_ = lift.step(np.tile([0.3, 0.0, 0.0, 0.0, 0.2, 0.0, 1.0], (N, 1)))
    state = obs["observation.state"]
    quat = state[:, 17:21]
    np.testing.assert_allclose(np.linalg.norm(quat, axis=1), 1.0, atol=1e-5)
    for i, env in enumerate(lift.envs):
        robot, data = env.robots[0], env.sim.data
        np.testing.assert_allclose(state[i, :7], data.qpos[robot._ref_joint_pos_indexes], atol=1e-5)
        np.testing.assert_allclose(state[i, 7:14], data.qvel[robot._ref_joint_vel_indexes], atol=1e-5)
        # MuJoCo's own xquat is wxyz; robosuite's observation (xyzw) must have been reordered
        wxyz = data.get_body_xquat(robot.robot_model.eef_name["right"])
        np.testing.assert_allclose(quat[i], wxyz, atol=1e-5)
        # object quaternions in environment_state are reordered the same way
        cube = obs["observation.environment_state"][i]
        assert lift.environment_state_names[3:7] == ["cube_quat_w", "cube_quat_x", "cube_quat_y", "cube_quat_z"]
        np.testing.assert_allclose(cube[:3], data.get_body_xpos(env.cube.root_body), atol=1e-5)
        np.testing.assert_allclose(cube[3:7], data.get_body_xquat(env.cube.root_body), atol=1e-5)


def test_autoreset_at_horizon_returns_final_obs(lift):
    lift.reset(seed=1)
    zeros = np.zeros((N, 7))
    for _ in range(HORIZON - 1):
        _, _, terminated, truncated, info = lift.step(zeros)
        assert not truncated.any() and "final_obs" not in info
    obs, _, terminated, truncated, info = lift.step(zeros)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all()
    assert info["final_info"]["elapsed_steps"].tolist() == [HORIZON, HORIZON]
    assert info["final_info"]["success"].dtype == bool
    for i in range(N):
        final = info["final_obs"][i]
        assert set(final) == set(obs) and final["observation.state"].shape == (23,)
        # the returned observation is already the next episode's first one
        assert not np.array_equal(final["observation.environment_state"], obs["observation.environment_state"][i])
    _, _, _, truncated, info = lift.step(zeros)
    assert info["elapsed_steps"].tolist() == [1, 1] and not truncated.any()


def test_success_terminates_unless_disabled(lift, monkeypatch):
    lift.reset(seed=3)
    monkeypatch.setattr(lift.envs[0], "_check_success", lambda: True)
    _, _, terminated, truncated, info = lift.step(np.zeros((N, 7)))
    assert info["success"].tolist() == [True, False]
    assert terminated.tolist() == [True, False] and not truncated.any()
    assert info["_final_obs"].tolist() == [True, False] and info["final_info"]["success"][0]
    assert info["elapsed_steps"].tolist() == [1, 1] and lift.elapsed.tolist() == [0, 1]

    monkeypatch.setattr(lift.cfg, "terminate_on_success", False)
    _, _, terminated, _, info = lift.step(np.zeros((N, 7)))
    assert info["success"][0] and not terminated.any()


def test_partial_reset_mask(lift):
    lift.reset(seed=2)
    lift.step(np.zeros((N, 7)))
    _, info = lift.reset(options={"reset_mask": np.array([False, True])})
    assert info["elapsed_steps"].tolist() == [1, 0]


def test_seeding_is_deterministic(lift):
    first, _ = lift.reset(seed=5)
    lift.step(np.full((N, 7), 0.5))
    again, _ = lift.reset(seed=5)
    for k in first:
        np.testing.assert_array_equal(first[k], again[k], err_msg=k)
    env_state = first["observation.environment_state"]
    assert not np.array_equal(env_state[0], env_state[1]), "envs of one batch should get different seeds"
    other, _ = lift.reset(seed=6)
    assert not np.array_equal(other["observation.environment_state"], env_state)

    fresh = make_env("robosuite/Lift", num_envs=N, seed=5)
    try:
        built, _ = fresh.reset()
    finally:
        fresh.close()
    # a fresh env built with seed=5 equals one built with seed=0 and reset with seed=5 (object sizes,
    # placements and robot init noise), and reset(seed=5) after seed 6 comes back to it
    back, _ = lift.reset(seed=5)
    for k in first:
        np.testing.assert_array_equal(built[k], first[k], err_msg=k)
        np.testing.assert_array_equal(back[k], first[k], err_msg=k)


@pytest.mark.parametrize(
    "action, match",
    [(np.zeros((N, 6)), r"expected \(2, 7\)"), (np.zeros(7), r"expected \(2, 7\)"), ("nan", "NaN or inf")],
)
def test_bad_actions_raise_action_error(lift, action, match):
    lift.reset(seed=0)
    if isinstance(action, str):
        action = np.zeros((N, 7))
        action[1, 3] = np.nan
    with pytest.raises(ActionError, match=match):
        lift.step(action)
    assert lift.elapsed.tolist() == [0, 0]


def test_unknown_env_name_suggests_the_closest():
    with pytest.raises(UnknownNameError, match=r"robosuite/PickPlaceCan.*Did you mean 'robosuite/Lift'\?"):
        make_env("robosuite/Lfit")


def _cfg(**kw) -> EnvConfig:
    return EnvConfig(task="robosuite/Lift", **kw)


def _with_randomization() -> EnvConfig:
    cfg = _cfg()
    cfg.randomization.physics.friction_scale = (0.8, 1.2)
    return cfg


def _with_pointcloud() -> EnvConfig:
    cfg = _cfg(cameras=["agentview"])
    cfg.pointcloud.enabled = True
    return cfg


@pytest.mark.parametrize(
    "cfg, match",
    [
        (_cfg(action_mode="joint_pos"), "set action_mode=ee_delta"),
        (_cfg(physics_hz=1000.0), "set physics_hz=500"),
        (_with_randomization(), "randomization.physics.friction_scale"),
        (_with_pointcloud(), "pointcloud.enabled=false"),
        (_cfg(task_options={"horizon": 10}), "horizon via max_episode_steps"),
        (_cfg(task_options={"not_an_arg": 1}), "not_an_arg"),
    ],
    ids=["joint_pos", "physics_hz", "randomization", "pointcloud", "derived_option", "unknown_option"],
)
def test_unsupported_config_raises_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        make_env(cfg)


def test_camera_images_and_depth():
    h, w = 24, 32  # not square, so that a height/width swap shows
    env = make_env("robosuite/Lift", num_envs=1, cameras=["agentview", "wrist"], image_size=(h, w), depth=True)
    try:
        obs, _ = env.reset(seed=0)
        _assert_in_space(env, obs)
        assert obs["observation.images.agentview"].shape == (1, h, w, 3)
        assert obs["observation.images.wrist"].dtype == np.uint8
        obs, *_ = env.step(np.zeros((1, 7)))
        _assert_in_space(env, obs)
        obs, _ = env.reset(seed=3)  # rebuilds the model and its offscreen render context
        obs, *_ = env.step(np.zeros((1, 7)))
        _assert_in_space(env, obs)
        depth = obs["observation.depth.agentview"][0, ..., 0]
        assert 0.1 < depth.min() and depth.max() < 10.0, "depth should be in metres"
        # agentview looks down at the table from the front: once flipped upright, the top rows see
        # the far side of the scene and the bottom rows the near table edge
        assert depth[:3].mean() > depth[-3:].mean() + 0.3
        np.testing.assert_array_equal(env.render(), obs["observation.images.agentview"])
    finally:
        env.close()


def test_unknown_camera_lists_the_available_ones():
    with pytest.raises(UnknownNameError, match=r"agentview.*Did you mean 'wrist'\?"):
        make_env("robosuite/Lift", cameras=["wirst"], image_size=(16, 16))


@pytest.mark.parametrize("name", ["Stack", "NutAssemblySquare", "PickPlaceCan"])
def test_other_robosuite_envs_construct_and_step(name):
    env = make_env(f"robosuite/{name}", num_envs=1)
    try:
        obs, _ = env.reset(seed=0)
        _assert_in_space(env, obs)
        assert env.single_observation_space["observation.environment_state"].shape[0] > 0
        obs, reward, *_ = env.step(np.zeros((1, 7)))
        _assert_in_space(env, obs)
        assert np.isfinite(reward).all()
    finally:
        env.close()
