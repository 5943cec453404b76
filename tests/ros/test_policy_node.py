"""policy_node against a free-running sim_robot_node over DDS: it starts disabled, ~/enable starts the commands, the
e-stop latches them into a hold while the policy keeps running, ~/reset clears it, ~/status carries the reasons and
the loop timing; recorder_node's ~/start and ~/stop write an episode; relay_node echoes; bad parameters fail at
start-up with one line."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from robolearn_ros.common import latched_qos
from robolearn_ros.convert import float_array, joint_state_msg
from rosutil import wait_until
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

# rosidl imports lark, which imports the deprecated sre_parse
pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")]

COMMANDS = "/forward_position_controller/commands"


def _since(box: list, t: float) -> list:
    return [m for ts, m in list(box) if ts >= t]


def _status(box: list) -> dict:
    return json.loads(box[-1][1].data) if box else {}


def test_enable_estop_reset_status_and_recording(spawn, client, lift_policy, tmp_path):
    commands = client.subscribe(Float64MultiArray, COMMANDS)
    status = client.subscribe(String, "/policy/status", latched_qos())
    rec_status = client.subscribe(String, "/recorder/status", latched_qos())
    estop = client.publisher(Bool, "/estop")
    sim = spawn("sim_robot_node", "sim_robot", task="lift", seed=3, lockstep=False, terminate_on_success=False,
                max_episode_steps=100_000)
    policy = spawn("policy_node", "policy", checkpoint=str(lift_policy), device="cpu",
                   environment_state_topic="/sim_robot/environment_state")
    recorder = spawn("recorder_node", "recorder", dataset=str(tmp_path / "rec"), policy="bc_lift",
                     environment_state_topic="/sim_robot/environment_state", success_topic="/sim_robot/success",
                     stage_topic="/sim_robot/stage", stage_names="reach,grasp,lift", fsync=False)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-2500:]}" for p in (sim, policy, recorder))

    # disabled at start: every input is in, and nothing is commanded
    wait_until(lambda: _status(status).get("ticks", 0) > 10 and _status(status)["waiting_for"] == [], 60,
               "policy_node to receive joint states and the environment state", logs)
    s = _status(status)
    assert s["enabled"] is False and s["estopped"] is False and s["reasons"] == ["disabled"]
    time.sleep(1.0)
    assert commands == [], "a disabled policy_node published commands"

    # enabled: it commands at the control rate; the status carries the timing
    wait_until(lambda: rec_status, 30, "recorder_node", logs)
    assert client.call(Trigger, "/sim_robot/reset").success
    res = client.call(SetBool, "/policy/enable", SetBool.Request(data=True))
    assert res.success and res.message == "enabled"
    t_enabled = time.monotonic()
    assert client.call(Trigger, "/recorder/start").success
    wait_until(lambda: len(commands) >= 30, 20, "30 commands", logs)
    assert client.call(Trigger, "/recorder/stop").success
    s = wait_until(lambda: _status(status).get("commands_sent", 0) >= 30 and _status(status), 10, "status")
    assert s["enabled"] is True and s["mode"] == "timer" and s["rate_hz"] == 20.0
    t = s["timing"]
    assert t["window"] >= 30 and 0 < t["compute_ms_p50"] <= t["compute_ms_p99"] <= t["compute_ms_max"]
    assert 35.0 < t["period_ms_mean"] < 70.0 and t["latency_ms_p50"] is not None
    moving = np.array([float_array(m)[0] for m in _since(commands, t_enabled)])
    assert np.ptp(moving, axis=0).max() > 1e-3  # the policy moves the arm

    # the recorded episode: a dataset robolearn.data reads, with the sim's success and stage labels
    wait_until(lambda: _status(rec_status).get("episodes_written") == 1, 30, "the recorded episode", logs)
    from robolearn.data.dataset import DatasetReader

    reader = DatasetReader(tmp_path / "rec")
    assert reader.num_episodes == 1 and 20 <= reader.lengths[0] <= 60
    assert reader.meta.success(0) in (True, False) and reader.meta.episode_info(0)["policy"] == "bc_lift"
    assert reader.meta.stages(0).names[0] == "reach" and reader.meta.stage_names == ["reach", "grasp", "lift"]
    frames = reader.episode(0)
    assert np.isfinite(frames["action"]).all() and np.isfinite(frames["observation.environment_state"]).all()

    # e-stop: latched; every command holds one target while the policy keeps running
    assert client.call(Trigger, "/sim_robot/reset").success
    estop.publish(Bool(data=True))
    wait_until(lambda: _status(status).get("estopped"), 10, "the e-stop to latch", logs)
    estop.publish(Bool(data=False))  # releasing the button does not clear the latch
    t_stopped = time.monotonic()
    time.sleep(1.0)
    held = np.array([float_array(m)[0] for m in _since(commands, t_stopped + 0.2)])
    assert len(held) >= 10, "an e-stopped policy_node must keep commanding the hold"
    assert np.ptp(held, axis=0).max() == 0.0
    s = _status(status)
    assert s["estopped"] and s["held"] is True and s["reasons"][0].startswith("e-stop: e-stop topic /estop")
    assert s["reason_counts"]["e-stop: e-stop topic /estop"] >= 10

    # ~/reset clears it: the policy drives again
    res = client.call(Trigger, "/policy/reset")
    assert res.success and "e-stop cleared" in res.message
    t_reset = time.monotonic()
    wait_until(lambda: len(_since(commands, t_reset)) >= 20, 10, "commands after the reset", logs)
    after = np.array([float_array(m)[0] for m in _since(commands, t_reset + 0.2)])
    assert np.ptp(after, axis=0).max() > 1e-3
    assert _status(status)["estopped"] is False

    # disabled again: the commands stop
    assert client.call(SetBool, "/policy/enable", SetBool.Request(data=False)).message == "disabled"
    time.sleep(0.3)
    t_off = time.monotonic()
    time.sleep(0.7)
    assert _since(commands, t_off) == []


def test_relay_echoes_joint_positions_with_their_stamp(spawn, client):
    commands = client.subscribe(Float64MultiArray, COMMANDS)
    pub = client.publisher(JointState, "/joint_states")
    relay = spawn("relay_node", "relay", robot="panda")
    names = [f"panda_joint{i}" for i in range(1, 8)]
    q = np.linspace(-0.5, 0.5, 7)

    def echoed():
        pub.publish(joint_state_msg(names[::-1], q[::-1], np.zeros(7), 1234))
        time.sleep(0.05)
        return commands

    wait_until(echoed, 30, "the relay's answer", relay.log)
    values, stamp = float_array(commands[0][1])
    np.testing.assert_allclose(values, q)
    assert stamp == 1234


def test_bad_parameters_fail_at_startup_with_one_message(spawn, lift_policy):
    cases = {
        "missing checkpoint": ("policy_node", {"checkpoint": "/nonexistent/ckpt"},
                               "/nonexistent/ckpt: no such checkpoint directory"),
        "unknown robot": ("policy_node", {"checkpoint": str(lift_policy), "hardware": "ur3"},
                          "unknown robot 'ur3'; known robots: panda"),
        "typo": ("policy_node", {"checkpoint": str(lift_policy), "rate": 10.0}, "unknown parameter(s) rate"),
        "missing environment state": ("policy_node", {"checkpoint": str(lift_policy)},
                                      "set parameter 'environment_state_topic'"),
        "unknown task": ("sim_robot_node", {"task": "lfit"}, "Did you mean 'lift'?"),
        "no dataset": ("recorder_node", {}, "parameter 'dataset' is not set"),
    }
    procs = {case: spawn(exe, f"n{i}", **params) for i, (case, (exe, params, _)) in enumerate(cases.items())}
    for case, p in procs.items():
        rc = p.wait(90)
        out = p.log().strip()
        assert rc == 2, (case, out)
        assert cases[case][2] in out and "Traceback" not in out and out.count("\n") == 0, (case, out)
        assert out.startswith(f"[{cases[case][0].removesuffix('_node')}] error: "), (case, out)
