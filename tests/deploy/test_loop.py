"""ControlLoop + SimRobot: parity with in-process sim evaluation, the fixed-rate loop, enable / e-stop,
and one clear message per bad input."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.deploy import (
    Command,
    ControlConfig,
    ControlLoop,
    RobotState,
    SafetyConfig,
    SimRobot,
    StateError,
    action_from_width,
    width_from_action,
)
from robolearn.errors import ConfigError, UnknownNameError
from robolearn.policies.base import CheckpointError, ObservationError


@pytest.fixture(scope="module")
def loop(lift_policy):
    return ControlLoop(ControlConfig(policy=str(lift_policy), device="cpu"))


@pytest.fixture(scope="module")
def sim():
    with SimRobot("lift", seed=0) as robot:
        yield robot


def _fresh(state: RobotState, **changes) -> RobotState:
    out = RobotState(stamp=state.stamp, q=state.q.copy(), dq=state.dq.copy(), fingers=state.fingers.copy(),
                     images=dict(state.images), environment_state=state.environment_state)
    for k, v in changes.items():
        setattr(out, k, v)
    return out


# ---- parity with robolearn.eval.sim ----------------------------------------------------------------
@pytest.mark.parametrize("seed", [1000, 1003])
def test_control_loop_on_sim_robot_is_the_in_process_eval(lift_policy, seed):
    """The env robolearn.eval builds for this checkpoint, stepped by the engine as eval steps it, and
    ControlLoop + SimRobot on the same seed: the same observations and joint targets at every step of
    the episode, and the same outcome."""
    from robolearn.eval.sim import EvalConfig, _env_settings
    from robolearn.inference.engine import InferenceEngine
    from robolearn.policies import load_policy
    from robolearn.sim.registry import make_env

    policy = load_policy(lift_policy)
    task, overrides, source = _env_settings(EvalConfig(policy=str(lift_policy), episodes=1, seed=seed),
                                            policy.features)
    assert task == "lift" and "recorded env" in source
    env = make_env(task, **overrides)
    engine = InferenceEngine(policy, env.num_envs, device="cpu")
    obs, info = env.reset(seed=seed)

    # the default box stops commanded targets at the table top (z = 0), where the sim lets the IK aim a
    # little below it while the fingers press on the table: a box that never binds, for parity
    wide = SafetyConfig(workspace_lo=[-2.0, -2.0, -1.0], workspace_hi=[2.0, 2.0, 2.0])
    loop = ControlLoop(ControlConfig(policy=str(lift_policy), device="cpu", safety=wide))
    assert (loop.action_mode, loop.control_dt, loop.max_dpos, loop.max_drot) == ("ee_delta", 0.05, 0.05, 0.5)
    assert loop.needs_environment_state and loop.required_cameras == []
    robot = SimRobot(task, seed=seed)
    state = robot.reset(seed=seed)
    loop.enable()
    ids = env.ids
    for t in range(env.max_episode_steps):
        mine = loop.observation(state)
        assert mine.keys() == {"observation.state", "observation.environment_state"}
        for key, value in mine.items():
            assert value.dtype == obs[key].dtype and value.shape == obs[key].shape
            np.testing.assert_allclose(value, obs[key], rtol=0, atol=1e-6, err_msg=f"{key} at step {t}")
        cmd = loop.step(state, state.stamp)
        assert not cmd.held and cmd.reasons == [], (t, cmd.reasons)
        obs, _, terminated, truncated, info = env.step(engine.act(obs))
        robot.command(cmd)
        state = robot.read()
        assert robot.stage == int(info["stage"][0]) and robot.elapsed_steps == t + 1
        if terminated[0] or truncated[0]:  # the env has reset into its next episode: compare the last one
            final = info["final_obs"][0]
            for key, value in loop.observation(state).items():
                np.testing.assert_allclose(value[0], final[key], rtol=0, atol=1e-6, err_msg=f"final {key}")
            break
        np.testing.assert_allclose(cmd.q, env.datas[0].ctrl[ids.arm_act], rtol=0, atol=1e-9)
        np.testing.assert_allclose(robot.env.datas[0].ctrl[ids.finger_act], env.datas[0].ctrl[ids.finger_act],
                                   rtol=0, atol=1e-12)
    assert robot.done and robot.success == bool(terminated[0])
    env.close()
    robot.close()


def test_gripper_width_round_trip():
    for g in np.linspace(-1, 1, 41):
        assert action_from_width(width_from_action(g, 0.08), 0.08) == pytest.approx(g, abs=1e-12)
    assert width_from_action(-1, 0.08) == 0.08 and width_from_action(1, 0.08) == 0.0
    assert width_from_action(5, 0.08) == 0.0  # clipped as the sim clips


def test_sim_robot_opens_the_fingers_to_the_commanded_width(sim):
    state = sim.reset(seed=0)
    sim.command(Command(q=state.q, gripper_width=0.03, reasons=[], held=False, stamp=state.stamp))
    ctrl = sim.env.datas[0].ctrl[sim.env.ids.finger_act]
    assert ctrl == pytest.approx([0.015, -0.015], abs=1e-15)
    sim.command(Command(q=np.empty(0), gripper_width=float("nan"), reasons=["x"], held=True, stamp=0.0))  # no-op
    with pytest.raises(Exception, match=r"command q has shape \(6,\); panda takes \(7,\)"):
        sim.command(Command(q=np.zeros(6), gripper_width=0.03, reasons=[], held=False, stamp=0.0))


# ---- the fixed-rate loop, enable, e-stop ---------------------------------------------------------------
def test_run_keeps_the_rate_and_reports_timing(loop, sim):
    sim.reset(seed=2)
    loop.enable()
    stats = loop.run(sim, duration_s=1.0)
    assert stats["ticks"] + stats["overruns"] == 20  # 1 s at 20 Hz, deadlines fixed in advance
    assert stats["held"] == 0 and sim.elapsed_steps == stats["ticks"]
    for key in ("period_jitter_p50_s", "period_jitter_p99_s", "latency_p50_s", "latency_p99_s"):
        assert 0 <= stats[key] < 1.0, key
    assert stats["latency_p50_s"] <= stats["latency_p99_s"]
    assert abs(stats["period_mean_s"] * (stats["ticks"] + stats["overruns"] - 1) / (stats["ticks"] - 1) - 0.05) < 0.01


def test_prefetching_loop_runs_the_rate(lift_policy, sim):
    """prefetch plans chunks on a worker thread: the loop runs its ticks as without, and a bad value is
    refused with the range."""
    with pytest.raises(ConfigError, match="prefetch=-1"):
        ControlLoop(ControlConfig(policy=str(lift_policy), device="cpu", prefetch=-1))
    with pytest.raises(ConfigError, match="prefetch=9 must be in 1"):
        ControlLoop(ControlConfig(policy=str(lift_policy), device="cpu", prefetch=9))
    loop = ControlLoop(ControlConfig(policy=str(lift_policy), device="cpu", prefetch=2))
    sim.reset(seed=2)
    loop.enable()
    stats = loop.run(sim, duration_s=1.0)
    assert stats["ticks"] + stats["overruns"] == 20 and stats["held"] == 0
    loop.engine.close()


def test_disabled_holds_the_current_position(loop, sim):
    state = sim.reset(seed=3)
    loop.disable()
    cmd = loop.step(state, state.stamp)
    assert cmd.held and cmd.reasons == ["disabled"] and np.array_equal(cmd.q, state.q)
    assert cmd.gripper_width == pytest.approx(state.gripper_width)
    loop.enable()
    assert not loop.step(state, state.stamp).held


def test_estop_latches_while_the_policy_keeps_running(loop, sim):
    state = sim.reset(seed=4)
    loop.enable()
    for _ in range(5):
        sim.command(loop.step(state, state.stamp))
        state = sim.read()
    loop.estop("operator")
    cmds = []
    for _ in range(20):
        cmd = loop.step(state, state.stamp)
        cmds.append(cmd)
        sim.command(cmd)
        state = sim.read()
    assert all(c.held and c.reasons == ["e-stop: operator"] for c in cmds)
    assert all(np.array_equal(c.q, cmds[0].q) for c in cmds)
    assert np.abs(state.q - cmds[0].q).max() < 0.01  # the arm stopped there
    loop.clear_estop()
    assert not loop.step(state, state.stamp).held


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_robot_states_raise_in_observation_and_hold_in_step(loop, sim):
    state = sim.reset(seed=5)
    loop.enable()
    nan_q = state.q.copy()
    nan_q[2] = np.nan
    cases = [
        (_fresh(state, q=nan_q), StateError, "robot state q contains NaN or inf (entry 2)"),
        (_fresh(state, dq=np.full(7, np.inf)), StateError, "robot state dq contains NaN or inf"),
        (_fresh(state, q=state.q[:6]), StateError, r"robot state q has shape (6,); expected (7,)"),
        (_fresh(state, fingers=np.zeros(3)), StateError, "robot state fingers has shape (3,); expected (2,)"),
        (_fresh(state, environment_state=None), ObservationError,
         "the policy reads observation.environment_state (10 values: cube_x"),
        (_fresh(state, environment_state=np.zeros(4)), ObservationError,
         "environment_state has shape (4,); the policy reads (10,)"),
        (_fresh(state, environment_state=np.full(10, np.nan)), ObservationError, "environment_state contains NaN"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error) as info:
            loop.observation(bad)
        assert message in str(info.value)
        cmd = loop.step(bad, bad.stamp)
        assert cmd.held and message in cmd.reasons[0]
        assert cmd.q.shape == (7,) and np.isfinite(cmd.q).all()


def test_nan_policy_action_holds(loop, sim, monkeypatch):
    state = sim.reset(seed=6)
    loop.enable()
    monkeypatch.setattr(loop.engine, "act", lambda obs: np.full((1, 7), np.nan, np.float32))
    cmd = loop.step(state, state.stamp)
    assert cmd.held and cmd.reasons == ["policy action contains NaN or inf"]


def test_missing_or_misshapen_camera(tmp_path, sim, checkpoint):
    ckpt = checkpoint(tmp_path / "cam", camera=16)
    loop = ControlLoop(ControlConfig(policy=str(ckpt), device="cpu"))
    assert loop.required_cameras == ["front"]
    state = _fresh(sim.reset(seed=7), environment_state=np.zeros(10, np.float32))
    with pytest.raises(ObservationError, match=r"the policy reads camera 'front', which the robot state lacks \(it "
                                               r"has no cameras\)"):
        loop.observation(state)
    state.images["front"] = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ObservationError, match=r"camera 'front' gives uint8 images of shape \(32, 32, 3\); the "
                                               r"policy reads uint8 \(16, 16, 3\)"):
        loop.observation(state)
    state.images["front"] = np.zeros((16, 16, 3), np.uint8)
    assert loop.observation(state)["observation.images.front"].shape == (1, 16, 16, 3)
    loop.enable()
    cmd = loop.step(state, state.stamp)
    assert not cmd.held and np.isfinite(cmd.q).all()


def test_policies_that_do_not_fit_the_robot(tmp_path, lift_policy, checkpoint):
    with pytest.raises(UnknownNameError, match=r"unknown robot 'pnda'.*Did you mean 'panda'\?"):
        ControlLoop(ControlConfig(policy=str(lift_policy), robot="pnda"))
    with pytest.raises(ConfigError, match=r"reads observation.state of shape \(23,\), robot 'ur5e' gives \(21,\)"):
        ControlLoop(ControlConfig(policy=str(lift_policy), robot="ur5e"))
    five = checkpoint(tmp_path / "five", action_dim=5)
    with pytest.raises(ConfigError, match=r"outputs 5-dim actions; robot 'panda' takes 7 in action_mode=ee_delta"):
        ControlLoop(ControlConfig(policy=str(five)))
    joints = checkpoint(tmp_path / "joints", action="joint_pos")
    with pytest.raises(ConfigError, match=r"outputs 8-dim actions; robot 'ur5e' takes 7 in action_mode=joint_pos"):
        ControlLoop(ControlConfig(policy=str(joints), robot="ur5e", action_mode="joint_pos"))
    with pytest.raises(ConfigError, match="robosuite"):
        ControlLoop(ControlConfig(policy=str(checkpoint(tmp_path / "rs", env={"task": "robosuite/Lift"}))))
    with pytest.raises(UnknownNameError, match=r"unknown task 'lfit'"):
        ControlLoop(ControlConfig(policy=str(lift_policy), task="lfit"))
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        ControlLoop(ControlConfig(policy=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="name the policy checkpoint"):
        ControlLoop(ControlConfig())


def test_joint_pos_policy_passes_through_the_filter(tmp_path, sim, checkpoint):
    ckpt = checkpoint(tmp_path / "jp", action="joint_pos")
    loop = ControlLoop(ControlConfig(policy=str(ckpt), device="cpu"))
    assert loop.action_mode == "joint_pos"
    state = sim.reset(seed=8)
    loop.enable()
    for _ in range(5):
        cmd = loop.step(state, state.stamp)
        assert not cmd.held
        # untrained: joint targets anywhere in the range, so the filter limits each tick's motion
        assert np.all(np.abs(cmd.q - state.q) <= loop.filter.max_step + 1e-12)
        sim.command(cmd)
        state = sim.read()


def test_ur5e_ee_delta_policy(tmp_path, checkpoint):
    ckpt = checkpoint(tmp_path / "ur", robot="ur5e", env_state=False)
    loop = ControlLoop(ControlConfig(policy=str(ckpt), robot="ur5e", device="cpu"))
    r = loop.robot_spec
    assert loop.action_mode == "ee_delta" and r.dof == 6 and not loop.needs_environment_state
    q = r.home.copy()
    loop.enable()
    for k in range(5):
        state = RobotState(stamp=k * 0.05, q=q, dq=np.zeros(6), fingers=np.array([0.04, -0.04]))
        assert loop.observation(state)["observation.state"].shape == (1, 21)
        cmd = loop.step(state, state.stamp)
        assert not cmd.held and cmd.q.shape == (6,) and 0 <= cmd.gripper_width <= 0.085
        assert np.all(np.abs(cmd.q - q) <= loop.filter.max_step + 1e-12)
        q = cmd.q


def test_sim_robot_bad_input():
    from robolearn.errors import RobolearnError

    with pytest.raises(ConfigError, match="SimRobot runs native tasks"):
        SimRobot("robosuite/Lift")
    with pytest.raises(RobolearnError, match="the simulated Panda needs 7 arm joints"):
        SimRobot("lift", robot="ur5e")
    with pytest.raises(UnknownNameError, match=r"unknown task 'lfit'"):
        SimRobot("lfit")
