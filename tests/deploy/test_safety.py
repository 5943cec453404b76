"""SafetyFilter: a property fuzz of 10^5 random and adversarial commands and states, the watchdog,
the e-stop latch, and each limit with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robolearn.deploy import ArmKinematics, RobotState, SafetyConfig, SafetyFilter
from robolearn.errors import ConfigError
from robolearn.hardware import load_robot

DT = 0.05
TICKS = 500  # commands per hypothesis example
EXAMPLES = int(__import__("os").environ.get("FUZZ_EXAMPLES", 200))  # 200 * 500 = 10^5 commands


@pytest.fixture(scope="module")
def arms():
    """Per robot: (spec, the filter's kinematics, an independent copy to check it against)."""
    out = {}
    for name in ("panda", "ur5e"):
        r = load_robot(name)
        out[name] = (r, ArmKinematics(r), ArmKinematics(r))
    return out


def _state(robot, q, t, fingers=(0.02, -0.02)) -> RobotState:
    return RobotState(stamp=t, q=np.asarray(q, float), dq=np.zeros(robot.dof), fingers=np.asarray(fingers, float))


def _outside(pos, lo, hi) -> float:
    return float(np.linalg.norm(np.maximum(lo - pos, 0) + np.maximum(pos - hi, 0)))


# ---- the property fuzz ---------------------------------------------------------------------------
class _Scenario:
    """Adversarial ticks, drawn for a whole example at once (one numpy call per field, not per tick):
    states that walk, jump, leave the limits, go NaN/inf, go stale or vanish; commands that are near,
    huge, out of range, NaN/inf or misshapen; gripper widths likewise."""

    def __init__(self, rng: np.random.Generator, robot, ticks: int):
        lo, hi, n, t = robot.position_lower, robot.position_upper, robot.dof, ticks
        self.robot, self.rng = robot, rng
        self.kind = rng.integers(10, size=t)  # state: 0-4 walk, 5 anywhere, 6 off limits, 7 stale, 8 broken, 9 none
        self.walk = rng.normal(0, 0.02, (t, n))
        self.anywhere = rng.uniform(lo, hi, (t, n))
        self.off = rng.choice([-1.0, 1.0], (t, n)) * rng.uniform(0, 0.3, (t, n))
        self.fingers = np.array([0.02, -0.02]) * rng.uniform(0, 2, (t, 1))
        self.late = rng.uniform(0, 0.7 * DT, t)
        self.stale = rng.uniform(2 * DT, 10, t)
        self.broken = rng.integers(4, size=t)
        self.joint = rng.integers(n, size=t)
        self.bad_value = rng.choice([np.nan, np.inf, -np.inf], t)
        self.cmd = rng.integers(8, size=t)  # command: 0-2 near, 3 huge, 4 NaN/inf, 5 misshapen, 6-7 far
        self.near = rng.normal(0, 0.05, (t, n))
        self.far = rng.normal(0, 0.5, (t, n)) * rng.choice([1.0, 10.0], (t, 1))
        self.huge = rng.uniform(-100, 100, (t, n))
        self.out_of_range = rng.uniform(lo - 1, hi + 1, (t, n))
        self.width = rng.choice([rng.uniform(-1, 1), rng.uniform(0, 0.1), np.nan, np.inf, -np.inf, 1e300], t,
                                p=[0.3, 0.5, 0.05, 0.05, 0.05, 0.05])
        self.width[self.width == 1] = rng.uniform(-1, 1)  # not one value for the whole example
        self.misshapen = [rng.uniform(-3, 3, (2, n)), rng.uniform(-3, 3, n + 1), rng.uniform(-3, 3, n - 1)]

    def tick(self, k: int, q_prev: np.ndarray, t: float):
        """(state, q_cmd, width_cmd, now, state_ok) of tick k."""
        r, kind = self.robot, self.kind[k]
        q = q_prev + self.walk[k] if kind < 5 else self.anywhere[k].copy()
        if kind == 6:
            q = q + self.off[k]  # outside the limits, a little or a lot
        stamp = t - self.stale[k] if kind == 7 else t
        state = _state(r, np.clip(q, r.position_lower - 0.5, r.position_upper + 0.5), stamp, self.fingers[k])
        if kind == 8:
            b = self.broken[k]
            if b == 0:
                state.q[self.joint[k]] = self.bad_value[k]
            elif b == 1:
                state.fingers[0] = np.nan
            elif b == 2:
                state.q = state.q[:-1]
            else:
                state.stamp = float("nan")
        if kind == 9:
            state = None
        c = self.cmd[k]
        base = q if state is None or kind == 8 else state.q
        if c < 3:
            q_cmd = base + self.near[k]
        elif c == 3:
            q_cmd = self.huge[k]
        elif c == 4:
            q_cmd = self.out_of_range[k].copy()
            q_cmd[self.joint[k]] = self.bad_value[k]
        elif c == 5:
            q_cmd = self.misshapen[k % 3]
        else:
            q_cmd = base + self.far[k]
        return state, q_cmd, float(self.width[k]), t + self.late[k], kind < 7


def _check(cmd, filt: SafetyFilter, check_kin: ArmKinematics, state, state_ok, prev, estopped_before):
    r = filt.robot
    lo, hi = r.position_lower, r.position_upper
    assert isinstance(cmd.reasons, list)
    if cmd.q.size == 0:  # only before any valid state
        assert cmd.held and filt._good is None
        return
    assert cmd.q.shape == (r.dof,) and np.isfinite(cmd.q).all()
    assert np.all(cmd.q >= lo) and np.all(cmd.q <= hi), "joint limits"
    assert np.isfinite(cmd.gripper_width) and r.gripper_width_min <= cmd.gripper_width <= r.gripper_width_max
    if estopped_before or filt.estopped:
        assert cmd.held, "e-stop latched"
    if cmd.held:
        assert cmd.reasons, "a hold says why"
        if prev is not None and prev.held and prev.q.size:
            assert np.array_equal(cmd.q, prev.q), "a hold keeps one target"
        return
    assert state_ok, "only a fresh valid state lets a command through"
    q_meas = np.asarray(state.q, float)
    assert np.all(np.abs(cmd.q - q_meas) <= filt.max_step * (1 + 1e-9) + 1e-12), "per-tick change"
    pos = check_kin.tcp_pos(cmd.q)
    if _outside(pos, filt.ws_lo, filt.ws_hi) > 1e-9:  # only an arm already outside the box may be outside
        start = np.clip(q_meas, np.maximum(lo, q_meas - filt.max_step), np.minimum(hi, q_meas + filt.max_step))
        assert _outside(pos, filt.ws_lo, filt.ws_hi) <= _outside(check_kin.tcp_pos(start), filt.ws_lo,
                                                                   filt.ws_hi) + 1e-6, "workspace"


def test_fuzz_never_emits_a_command_outside_the_limits(arms):
    count = {"commands": 0, "passed": 0, "held": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(["panda", "ur5e"]),
           velocity_scale=st.floats(0.05, 1.0), tight=st.booleans(), watchdog=st.sampled_from(["hold", "stop"]))
    def run(seed, name, velocity_scale, tight, watchdog):
        robot, kin, check_kin = arms[name]
        box = {"workspace_lo": [0.2, -0.3, 0.05], "workspace_hi": [0.7, 0.3, 0.6]} if tight else {}
        filt = SafetyFilter(robot, SafetyConfig(velocity_scale=velocity_scale, watchdog_action=watchdog, **box), DT,
                            kin)
        rng = np.random.default_rng(seed)
        scenario = _Scenario(rng, robot, TICKS)
        events = rng.random((TICKS, 2))
        q, prev = robot.home.copy(), None
        for k in range(TICKS):
            t = k * DT
            state, q_cmd, w_cmd, now, state_ok = scenario.tick(k, q, t)
            if events[k, 0] < 0.01:
                filt.estop("fuzz")
            if events[k, 1] < 0.02:
                filt.reset()
                prev = None
            estopped = filt.estopped
            cmd = filt(q_cmd, w_cmd, state, now)
            _check(cmd, filt, check_kin, state, state_ok, prev, estopped)
            if state_ok:
                q = np.clip(state.q, robot.position_lower, robot.position_upper)
            prev = cmd
            count["commands"] += 1
            count["held" if cmd.held else "passed"] += 1

    run()
    assert count["commands"] >= 100_000
    assert count["passed"] > 10_000 and count["held"] > 10_000  # both sides of the filter were exercised


# ---- watchdog --------------------------------------------------------------------------------------
@pytest.mark.parametrize("stall", ["same state", "no state"])
def test_watchdog_holds_within_two_control_periods(arms, stall):
    robot, kin, _ = arms["panda"]
    filt = SafetyFilter(robot, SafetyConfig(), DT, kin)
    q = robot.home.copy()
    for k in range(10):  # a healthy stream, commands move the arm
        state = _state(robot, q, k * DT)
        cmd = filt(q + 0.01, 0.04, state, k * DT + 0.002)
        assert not cmd.held and not cmd.reasons
        q = cmd.q
    last, sent = state, q
    t_stall = last.stamp
    first_hold = None
    for j in range(1, 41):  # the policy keeps commanding at 4x the control rate, the stream is silent
        now = t_stall + j * DT / 4
        cmd = filt(q + 0.01, 0.04, last if stall == "same state" else None, now)
        if cmd.held and first_hold is None:
            first_hold = now
            assert any("watchdog" in r for r in cmd.reasons)
            held_q = cmd.q
        if first_hold is None:
            sent = cmd.q
        else:
            assert cmd.held and np.array_equal(cmd.q, held_q)  # the hold stays put
    assert first_hold is not None and first_hold - t_stall <= 2 * DT
    assert np.array_equal(held_q, sent)  # it holds the last command sent, one tick from the last good state
    now = t_stall + 11 * DT  # fresh states again: commands pass again (watchdog_action=hold)
    assert not filt(q + 0.01, 0.04, _state(robot, q, now), now).held


def test_watchdog_stop_latches(arms):
    robot, kin, _ = arms["panda"]
    filt = SafetyFilter(robot, SafetyConfig(watchdog_action="stop", max_obs_age_s=0.06), DT, kin)
    q = robot.home
    assert not filt(q, 0.04, _state(robot, q, 0.0), 0.0).held
    assert filt(q, 0.04, _state(robot, q, 0.0), 0.1).held  # stale
    assert filt.estopped
    assert filt(q, 0.04, _state(robot, q, 0.2), 0.2).held  # fresh again, still latched
    filt.reset()
    assert not filt(q, 0.04, _state(robot, q, 0.3), 0.3).held


# ---- e-stop ----------------------------------------------------------------------------------------
def test_estop_latches_across_a_policy_that_keeps_commanding(arms):
    robot, kin, _ = arms["ur5e"]
    filt = SafetyFilter(robot, SafetyConfig(), DT, kin)
    q = robot.home.copy()
    rng = np.random.default_rng(0)
    held_q = None
    for k in range(60):
        t = k * DT
        if k == 10:
            filt.estop("operator pressed the button")
        cmd = filt(q + rng.normal(0, 0.05, robot.dof), 0.05, _state(robot, q, t), t)
        if k < 10:
            assert not cmd.held
            q = cmd.q  # the arm follows
        else:
            assert cmd.held and filt.estopped
            assert cmd.reasons == ["e-stop: operator pressed the button"]
            held_q = cmd.q if held_q is None else held_q
            assert np.array_equal(cmd.q, held_q)
            q = q + rng.normal(0, 1e-4, robot.dof)  # the arm settles; the target does not follow it
        if k == 30:
            filt.estop("another reason")  # the first reason stays
    assert filt.estop_reason == "operator pressed the button"
    filt.reset()
    assert not filt.estopped
    assert not filt(q + 0.01, 0.05, _state(robot, q, 3.0), 3.0).held


# ---- each limit and its reason ---------------------------------------------------------------------
def test_each_limit_names_what_it_changed(arms):
    robot, kin, _ = arms["panda"]
    filt = SafetyFilter(robot, SafetyConfig(), DT, kin)
    q = robot.home.copy()
    s = _state(robot, q, 0.0)
    ok = filt(q + 0.01, 0.05, s, 0.0)
    assert not ok.held and ok.reasons == [] and np.array_equal(ok.q, q + 0.01) and ok.gripper_width == 0.05
    assert ok.stamp == 0.0

    jump = q.copy()
    jump[1] += 1.0  # 1 rad on joint 2 in one tick; joint 1 moves 0.05 rad with it
    jump[0] += 0.05
    cmd = filt(jump, 0.05, s, 0.0)
    step = cmd.q - q
    assert np.isclose(step[1], robot.velocity_limit[1] * DT) and np.isclose(step[0] / step[1], 0.05)  # straight
    assert cmd.reasons == [f"step scaled to {robot.velocity_limit[1] * DT:.3g} of the command (joint 2 velocity "
                           "limit)"]

    near = q.copy()
    near[3] = robot.position_upper[3] - 0.01  # joint 4's upper limit is -0.0698 rad
    cmd = filt(near + np.eye(7)[3] * 0.05, 0.05, _state(robot, near, 0.0), 0.0)
    assert cmd.q[3] == robot.position_upper[3]
    assert cmd.reasons == ["joint 4 (panda_joint4) clipped to upper limit"]

    cmd = filt(q, 0.5, s, 0.0)
    assert cmd.gripper_width == robot.gripper_width_max and cmd.reasons == ["gripper width 0.5 m clipped to 0.08 m"]


def test_workspace_box_shortens_a_step_that_leaves_it(arms):
    robot, kin, check = arms["panda"]
    pos0 = check.fk(robot.home)[0]
    box = SafetyConfig(workspace_lo=[0.0, -0.5, pos0[2] - 0.01], workspace_hi=[0.8, 0.5, 0.8])
    filt = SafetyFilter(robot, box, DT, kin)
    q = robot.home.copy()
    for k in range(10):  # drive straight down: the TCP stops at the floor of the box
        down = kin.ee_delta_to_joint(q, [0, 0, -1, 0, 0, 0, 0], 0.05, 0.5, DT)
        cmd = filt(down, 0.04, _state(robot, q, k * DT), k * DT)
        q = cmd.q
        assert check.fk(q)[0][2] >= pos0[2] - 0.01 - 1e-9
    assert any("workspace" in r for r in cmd.reasons)
    assert check.fk(q)[0][2] < pos0[2] - 0.009  # it got there, within 1 mm


def test_holds_before_any_state_and_on_bad_input(arms):
    robot, kin, _ = arms["panda"]
    filt = SafetyFilter(robot, SafetyConfig(), DT, kin)
    cmd = filt(robot.home, 0.04, None, 0.0)
    assert cmd.held and cmd.empty and np.isnan(cmd.gripper_width) and cmd.reasons == ["watchdog: no robot state"]
    nan_state = _state(robot, np.full(7, np.nan), 0.0)
    cmd = filt(robot.home, 0.04, nan_state, 0.0)
    assert cmd.held and cmd.empty and "robot state q contains NaN or inf (entry 0)" in cmd.reasons[0]
    s = _state(robot, robot.home, 0.0)
    for q_cmd, w, reason in [
        (np.full(7, np.nan), 0.04, "command: joint 1 is NaN or inf"),
        (robot.home[:6], 0.04, "command: q has shape (6,), expected (7,)"),
        (robot.home, np.inf, "command: gripper width is NaN or inf"),
        ("home", 0.04, "command: not numbers"),
    ]:
        cmd = filt(q_cmd, w, s, 0.0)
        assert cmd.held and reason in cmd.reasons[0]
        assert np.array_equal(cmd.q, robot.home) and cmd.gripper_width == pytest.approx(0.04)
    short = _state(robot, robot.home[:6], 0.0)
    assert "robot state q has shape (6,); expected (7,)" in filt(robot.home, 0.04, short, 0.0).reasons[0]


def test_bad_safety_config(arms):
    robot, kin, _ = arms["panda"]
    for cfg, msg in [
        (SafetyConfig(velocity_scale=0.0), r"velocity_scale=0.0 must be in \(0, 1\]"),
        (SafetyConfig(workspace_lo=[0, 0, 0]), "set both workspace_lo and workspace_hi"),
        (SafetyConfig(workspace_lo=[0, 0, 1], workspace_hi=[1, 1, 0.5]), "must be below workspace_hi"),
        (SafetyConfig(max_obs_age_s=-1), "max_obs_age_s=-1 must be >= 0"),
        (SafetyConfig(watchdog_action="brake"), "watchdog_action='brake' must be 'hold' or 'stop'"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            SafetyFilter(robot, cfg, DT, kin)
