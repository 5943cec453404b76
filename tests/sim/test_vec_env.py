"""VecEnv: the gymnasium vector API, auto-reset, seeding, partial resets, threads, the two action modes,
and the simulated Panda against its hardware file. Parametrized over every registered native task."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from robolearn.hardware import load_robot
from robolearn.sim.registry import get_task_class, make_env, native_task_names

TASKS = native_task_names()


def random_actions(env, rng: np.random.Generator) -> np.ndarray:
    sp = env.single_action_space
    return rng.uniform(sp.low, sp.high, (env.num_envs, *sp.shape)).astype(np.float32)


def assert_obs_equal(a: dict, b: dict, envs=slice(None)) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k][envs], b[k][envs], err_msg=k)


# ---- API and spaces ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_returns_match_declared_spaces(task):
    env = make_env(task, num_envs=3)
    assert env.observation_space == batch_space(env.single_observation_space, 3)
    assert env.action_space == batch_space(env.single_action_space, 3)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(info, dict)
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions = random_actions(env, rng)
        assert env.action_space.contains(actions)
        obs, reward, terminated, truncated, info = env.step(actions)
        assert env.observation_space.contains(obs)
        for k, sp in env.single_observation_space.items():
            assert obs[k].dtype == sp.dtype and obs[k].shape == (3, *sp.shape), k
        assert reward.shape == (3,) and reward.dtype == np.float32 and np.all(np.isfinite(reward))
        assert terminated.shape == truncated.shape == (3,)
        assert terminated.dtype == truncated.dtype == bool
    assert env.single_observation_space["observation.state"].shape == (23,)
    assert env.single_observation_space["observation.environment_state"].shape == (
        len(env.task.environment_state_names),)
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_gymnasium_vector_attributes(task):
    env = make_env(task, num_envs=2)
    assert isinstance(env, gym.vector.VectorEnv)
    assert env.num_envs == 2
    assert isinstance(env.single_observation_space, gym.spaces.Dict)
    assert isinstance(env.single_action_space, gym.spaces.Box)
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert env.unwrapped is env
    assert env.closed is False
    env.close()
    assert env.closed is True
    env.close()  # closing twice is allowed


def test_gymnasium_vector_wrapper_sees_episodes():
    """gymnasium's own RecordEpisodeStatistics reads our metadata and same-step auto-reset."""
    env = gym.wrappers.vector.RecordEpisodeStatistics(make_env("lift", num_envs=2, max_episode_steps=4))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(8):
        *_, info = env.step(random_actions(env.unwrapped, rng))
        if "episode" in info:
            lengths += list(info["episode"]["l"][info["_episode"]])
    assert lengths == [4, 4, 4, 4]
    env.close()


# ---- auto-reset ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_autoreset_same_step(task):
    """At the time limit the step returns the new episode's first observation, and the finished
    episode's last observation and info in final_obs / final_info."""
    env = make_env(task, num_envs=2, max_episode_steps=3, seed=1)
    ref = make_env(task, num_envs=2, max_episode_steps=4, seed=1)  # same episode, one step longer
    env.reset()
    ref.reset()
    rng = np.random.default_rng(0)
    for t in range(3):
        a = random_actions(env, rng)
        obs, _, terminated, truncated, info = env.step(a)
        ref_obs, *_ = ref.step(a)
        assert not terminated.any()
        if t < 2:
            assert not truncated.any() and "final_obs" not in info
            assert_obs_equal(obs, ref_obs)
    assert truncated.all()
    assert info["_final_obs"].all() and info["_final_info"].all()
    for i in range(2):
        final = info["final_obs"][i]
        assert env.single_observation_space.contains(final)
        for k in final:
            np.testing.assert_array_equal(final[k], ref_obs[k][i], err_msg=k)
    assert set(info["final_info"]) >= {"success", "stage", "stage_name", "reward_terms", "elapsed_steps"}
    np.testing.assert_array_equal(info["final_info"]["elapsed_steps"], [3, 3])
    # the returned observation is a new episode (objects at new poses), not the final one
    assert not np.array_equal(obs["observation.environment_state"], ref_obs["observation.environment_state"])
    obs, _, _, truncated, info = env.step(random_actions(env, rng))
    assert not truncated.any() and "final_obs" not in info
    np.testing.assert_array_equal(info["elapsed_steps"], [1, 1])
    env.close()
    ref.close()


def test_autoreset_only_the_finished_env():
    env = make_env("lift", num_envs=3, max_episode_steps=3, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    env.step(random_actions(env, rng))
    env.reset_envs([1])  # env 1 is now one step behind
    env.step(random_actions(env, rng))
    before = env.state.body_pos["cube"].copy()
    obs, _, _, truncated, info = env.step(random_actions(env, rng))
    np.testing.assert_array_equal(truncated, [True, False, True])
    np.testing.assert_array_equal(info["_final_obs"], [True, False, True])
    assert info["final_obs"][1] is None
    np.testing.assert_array_equal(info["elapsed_steps"], [3, 2, 3])
    assert env.elapsed.tolist() == [0, 2, 0]
    assert not np.allclose(env.state.body_pos["cube"][[0, 2]], before[[0, 2]], atol=1e-3)
    env.close()


# ---- seeding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_rollout(task):
    a = make_env(task, num_envs=2, seed=7)
    b = make_env(task, num_envs=2, seed=0)
    oa, _ = a.reset()
    ob, _ = b.reset(seed=7)  # reseeding at reset equals seeding in the config
    assert_obs_equal(oa, ob)
    rng = np.random.default_rng(3)
    for _ in range(10):
        act = random_actions(a, rng)
        oa, ra, *_ = a.step(act)
        ob, rb, *_ = b.step(act)
        assert_obs_equal(oa, ob)
        np.testing.assert_array_equal(ra, rb)
    a.close()
    b.close()


@pytest.mark.parametrize("task", TASKS)
def test_different_seed_different_object_poses(task):
    env = make_env(task, num_envs=2)
    pose = lambda: {b: p.copy() for b, p in env.state.body_pos.items()}  # noqa: E731
    env.reset(seed=0)
    p0 = pose()
    env.reset(seed=1)
    p1 = pose()
    moved = [b for b in env.task.randomized_bodies if not np.allclose(p0[b], p1[b])]
    assert moved, "no randomized body moved between seeds 0 and 1"
    for b in moved:  # the envs of one batch draw different poses too
        assert not np.allclose(p0[b][0], p0[b][1])
    env.close()


# ---- partial resets ------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_partial_reset_changes_only_those_envs(task):
    env = make_env(task, num_envs=3, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(4):
        obs, *_ = env.step(random_actions(env, rng))
    qpos = [d.qpos.copy() for d in env.datas]

    new, info = env.reset(options={"reset_mask": np.array([False, True, False])})
    assert_obs_equal(new, obs, envs=[0, 2])
    for k in obs:  # env 1 restarted: its arm and objects moved back to a start pose
        assert not np.array_equal(new[k][1], obs[k][1]), k
    np.testing.assert_array_equal(info["elapsed_steps"], [4, 0, 4])
    np.testing.assert_array_equal(env.datas[0].qpos, qpos[0])
    np.testing.assert_array_equal(env.datas[2].qpos, qpos[2])

    new2 = env.reset_envs([0])
    assert_obs_equal(new2, new, envs=[1, 2])
    assert not np.array_equal(new2["observation.state"][0], new["observation.state"][0])
    assert env.elapsed.tolist() == [0, 0, 4]
    env.close()


# ---- infos ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_info_has_judgement_and_every_reward_term(task):
    env = make_env(task, num_envs=2)
    cls = get_task_class(task)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(random_actions(env, np.random.default_rng(0)))
    assert info["success"].dtype == bool and info["success"].shape == (2,)
    assert np.issubdtype(info["stage"].dtype, np.integer) and info["stage"].shape == (2,)
    assert list(info["stage_name"]) == [cls.stages[s] for s in info["stage"]]
    assert set(info["reward_terms"]) >= set(cls.reward_weights)
    for name, term in info["reward_terms"].items():
        assert term.shape == (2,) and np.all(np.isfinite(term)), name
    weighted = sum(w * info["reward_terms"][k].astype(np.float64) for k, w in cls.reward_weights.items())
    np.testing.assert_allclose(reward, weighted, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(info["elapsed_steps"], [1, 1])
    env.close()


# ---- threads -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_threads_are_bit_identical(task):
    """Threads only split the physics of independent envs, so results must not change at all
    (uneven chunks and auto-resets included)."""
    runs = []
    for threads in (1, 2, 3):
        env = make_env(task, num_envs=4, num_threads=threads, seed=5, max_episode_steps=4)
        obs, _ = env.reset()
        rng = np.random.default_rng(9)
        trace = [obs]
        for _ in range(6):
            obs, reward, terminated, truncated, _ = env.step(random_actions(env, rng))
            trace.append({**obs, "reward": reward, "terminated": terminated, "truncated": truncated})
        env.close()
        runs.append(trace)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert_obs_equal(a, b)


# ---- action modes --------------------------------------------------------------------------------
def test_joint_pos_reaches_joint_targets():
    """A 0.1 rad target on every joint is approached at once and held within 0.01 rad after 0.5 s."""
    env = make_env("lift", num_envs=2, action_mode="joint_pos", seed=0)
    env.reset()
    robot = env.robot
    q0 = env.state.q.copy()
    target = np.clip(q0 + 0.1 * np.array([1, -1, 1, 1, -1, 1, 1]), robot.position_lower, robot.position_upper)
    action = np.concatenate([target, -np.ones((2, 1))], axis=1)
    env.step(action)
    assert np.all(np.linalg.norm(target - env.state.q, axis=1) < np.linalg.norm(target - q0, axis=1))
    errors = []
    for _ in range(15):
        env.step(action)
        errors.append(np.abs(target - env.state.q).max())
    assert max(errors[9:]) < 0.01, f"max joint error per step (rad): {np.round(errors, 3).tolist()}"
    env.close()


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_ee_delta_moves_the_tcp_along_the_command(axis):
    """Half-scale translation for 5 steps moves the TCP ~5 * 0.5 * max_dpos along that world axis."""
    env = make_env("lift", num_envs=2, seed=0)
    env.reset()
    p0 = env.state.tcp_pos.copy()
    action = np.zeros((2, 7))
    action[:, axis], action[:, 6] = 0.5, -1.0
    for _ in range(5):
        env.step(action)
    moved = env.state.tcp_pos - p0
    expected = 5 * 0.5 * env.cfg.max_dpos
    assert np.all(moved[:, axis] > 0.8 * expected) and np.all(moved[:, axis] < 1.2 * expected)
    off_axis = np.delete(moved, axis, axis=1)
    assert np.all(np.abs(off_axis) < 0.1 * moved[:, [axis]])
    env.close()


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "z"])
def test_ee_delta_full_scale_keeps_the_direction(axis):
    """At action 1.0 the joint velocity limits bind; slowing down is fine, turning is not: a +x
    command must not become a diagonal (a policy saturating its actions would learn the distortion)."""
    env = make_env("lift", num_envs=2, seed=0)
    env.reset()
    p0 = env.state.tcp_pos.copy()
    action = np.zeros((2, 7))
    action[:, axis], action[:, 6] = 1.0, -1.0
    for _ in range(5):
        env.step(action)
    moved = env.state.tcp_pos - p0
    assert np.all(moved[:, axis] > 0.1)
    off_axis = np.delete(moved, axis, axis=1)
    assert np.all(np.abs(off_axis) < 0.1 * moved[:, [axis]]), f"TCP moved {moved.round(3).tolist()}"
    env.close()


# ---- termination ---------------------------------------------------------------------------------
def run_expert_until_success(env, steps: int):
    expert = env.task.make_expert(env.num_envs, env.cfg.max_dpos, env.cfg.max_drot)
    for t in range(steps):
        ee, _ = expert.act(env.state)
        out = env.step(env.expert_action(ee))
        if out[4]["success"].any():
            return t, out
    raise AssertionError(f"the {env.task.name} expert did not succeed within {steps} steps")


@pytest.mark.parametrize("task", TASKS)
def test_terminate_on_success(task):
    env = make_env(task, num_envs=2, seed=0, terminate_on_success=True)
    env.reset()
    t, (_, _, terminated, truncated, info) = run_expert_until_success(env, env.max_episode_steps)
    np.testing.assert_array_equal(terminated, info["success"])
    assert not truncated.any()
    done = np.flatnonzero(terminated)
    assert info["final_info"]["success"][done].all()
    assert (env.elapsed[done] == 0).all()  # auto-reset
    env.close()

    env = make_env(task, num_envs=2, seed=0, terminate_on_success=False)
    env.reset()
    t2, (_, _, terminated, truncated, info) = run_expert_until_success(env, env.max_episode_steps)
    assert t2 == t  # same seed, same expert: the same step succeeds
    assert not terminated.any() and not truncated.any() and "final_obs" not in info
    assert (env.elapsed == t + 1).all()  # the episode goes on
    env.close()


# ---- the simulated Panda against hardware/robots/panda.yaml --------------------------------------
def test_robot_model_matches_hardware_file():
    robot = load_robot("panda")
    env = make_env("lift", num_envs=1, task_options={"robot_init_noise": 0.0})
    m = env.nominal
    jid = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)  # noqa: E731
    aid = lambda name: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_ACTUATOR, name)  # noqa: E731

    arm = [jid(n) for n in robot.joint_names]
    assert min(arm) >= 0, "an arm joint of the hardware file is missing from the model"
    np.testing.assert_array_equal(m.jnt_qposadr[arm], env.ids.arm_qpos)  # same order as the file
    assert all(m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE for j in arm)
    assert all(m.jnt_limited[j] for j in arm)
    np.testing.assert_allclose(m.jnt_range[arm, 0], robot.position_lower)
    np.testing.assert_allclose(m.jnt_range[arm, 1], robot.position_upper)
    for i, name in enumerate(robot.joint_names):
        a = aid(f"{name}_pos")
        assert a >= 0 and m.actuator_trnid[a, 0] == arm[i]
        np.testing.assert_allclose(m.actuator_forcerange[a], [-robot.effort_limit[i], robot.effort_limit[i]])
        np.testing.assert_allclose(m.actuator_ctrlrange[a], [robot.position_lower[i], robot.position_upper[i]])
        assert m.actuator_forcelimited[a]

    fingers = [jid(n) for n in robot.gripper_joint_names]
    assert min(fingers) >= 0
    half = robot.gripper_width_max / 2
    np.testing.assert_allclose(m.jnt_range[fingers], [[0.0, half], [-half, 0.0]])
    for name in robot.gripper_joint_names:
        a = aid(f"{name}_pos")
        force = robot.gripper_max_force / 2
        np.testing.assert_allclose(m.actuator_forcerange[a], [-force, force])

    # the controller's per-step joint limit is the file's velocity limit, and reset starts at home
    np.testing.assert_allclose(env.controller.max_step, robot.velocity_limit / env.cfg.control_hz)
    env.reset(seed=0)
    np.testing.assert_allclose(env.state.q[0], robot.home, atol=1e-6)
    np.testing.assert_allclose(env.state.gripper_width, [robot.gripper_width_max], atol=1e-6)
    env.close()


def test_zero_ee_delta_action_holds_the_tcp_still():
    """The null-space pull toward home must not leak into the end effector: 'no action' = stay put."""
    env = make_env("lift", num_envs=8, seed=3)
    env.reset()
    p0 = env.state.tcp_pos.copy()
    action = np.zeros((8, 7))
    action[:, 6] = -1.0
    for _ in range(10):
        env.step(action)
    drift = np.linalg.norm(env.state.tcp_pos - p0, axis=1)
    assert drift.max() < 0.002, f"TCP drifted {drift.round(4).tolist()} m under zero actions"
    env.close()
