"""The whole deployment with no hardware, over real DDS: sim_robot_node stands in for the arm, policy_node drives
it, recorder_node writes what happened; run as separate processes, and through the launcher and sim_deploy.

Lockstep makes it fast and exact: the sim steps only when the policy answers, so the ROS run sees the same
initial states as `robolearn eval seed=1000 num_envs=1` and differs from it only by the deployment path
(joint targets through IK and the safety filter instead of the sim's own end-effector controller)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from robolearn_ros.common import latched_qos
from rosutil import wait_until
from std_msgs.msg import String

# rosidl imports lark, which imports the deprecated sre_parse
pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")]

EPISODES = 20
SEED = 1000


def _episodes(box: list) -> list[dict]:
    """The ~/episode messages that end an episode."""
    return [m for m in (json.loads(msg.data) for _, msg in list(box)) if m.get("done")]


def test_ros_success_rate_matches_in_process_eval(spawn, client, lift_policy, tmp_path):
    from robolearn.eval.sim import EvalConfig
    from robolearn.eval.sim import run as evaluate

    box = client.subscribe(String, "/sim_robot/episode")
    status = client.subscribe(String, "/policy/status", latched_qos())
    sim = spawn("sim_robot_node", "sim_robot", task="lift", seed=SEED, auto_reset=True, episodes=EPISODES,
                policy_reset_service="/policy/reset")
    policy = spawn("policy_node", "policy", checkpoint=str(lift_policy), device="cpu", step_on_state=True,
                   start_enabled=True, environment_state_topic="/sim_robot/environment_state")
    assert sim.wait(150) == 0, sim.log()[-3000:]
    ends = wait_until(lambda: len(_episodes(box)) == EPISODES and _episodes(box), 5, "every episode's end",
                      lambda: sim.log()[-3000:] + policy.log()[-3000:])
    assert [e["episode"] for e in ends] == list(range(EPISODES))
    # every step was answered by the policy: none held for lack of a command, none answered twice
    assert sum(e["timeouts"] + e["stale_commands"] + e["bad_commands"] for e in ends) == 0, ends
    ros = np.mean([e["success"] for e in ends])

    in_process = evaluate(EvalConfig(policy=str(lift_policy), task="lift", episodes=EPISODES, num_envs=1, seed=SEED,
                                     device="cpu", progress=False, out=str(tmp_path / "eval")))
    rate = in_process["success_rate"]
    print(f"lift BC policy, {EPISODES} episodes: success over ROS {ros:.0%}, in process (robolearn eval) {rate:.0%}")
    assert rate >= 0.5, "the fixture's policy should be decent for the comparison to mean much"
    assert abs(ros - rate) <= 0.10 + 1e-9

    # the same control path without ROS (ControlLoop on SimRobot, in this process) gives the very same episodes,
    # unless the watchdog held a command (a state older than 1.5 periods when the tick ran: a loaded machine)
    t = time.monotonic()
    final = wait_until(lambda: status and status[-1][0] > t and json.loads(status[-1][1].data), 5, "a fresh status")
    if final["holds_sent"] == 0:
        assert [(e["success"], e["step"]) for e in ends] == _without_ros(lift_policy)
        print("over ROS: the same episodes, step for step, as ControlLoop on SimRobot in process")
    assert policy.proc.poll() is None  # still serving after the sim left


def _without_ros(policy: Path) -> list[tuple[bool, int]]:
    """(success, steps) of the episodes ControlLoop + SimRobot run in process, as sim_deploy runs them."""
    from robolearn.deploy import ControlConfig, ControlLoop, SimRobot

    loop = ControlLoop(ControlConfig(policy=str(policy), device="cpu"))
    loop.enable()
    out = []
    with SimRobot("lift", seed=SEED) as robot:
        for ep in range(EPISODES):
            if ep:
                robot.reset()
            loop.reset()
            while not robot.done:
                robot.command(loop.step(robot.read(), time.monotonic()))
            out.append((bool(robot.success), robot.elapsed_steps))
    return out


@pytest.fixture
def launched(ros_domain, lift_policy, tmp_path) -> dict:
    """`robolearn ros launch sim_deploy` for 3 episodes through the joint trajectory controller's topic, recording
    them with a 32x32 front camera: the launcher's exit code, its output and the dataset."""
    from robolearn.deploy.launch import launch

    out = io.StringIO()
    dataset = tmp_path / "ros_lift"
    rc = launch("sim_deploy", {"policy": str(lift_policy), "episodes": "3", "seed": str(SEED), "device": "cpu",
                               "command_interface": "trajectory", "record": "true", "dataset": str(dataset),
                               "cameras": "front", "image_size": "[32, 32]"}, out=out)
    return {"rc": rc, "out": out.getvalue(), "dataset": dataset}


def test_sim_deploy_launch_records_a_dataset_the_judge_reads(launched, lift_policy, progress_model, tmp_path):
    from robolearn.data.dataset import DatasetReader
    from robolearn.eval.judge import JudgeConfig, run

    text = launched["out"]
    assert launched["rc"] == 0, text[-4000:]
    for name in ("sim_robot", "policy", "recorder"):
        assert f"[launch] started {name}" in text
    assert "[sim_robot] " in text and "3 episodes done: success " in text and "; exiting" in text
    results = [line for line in text.splitlines() if "[sim_robot]" in line and "after" in line and "steps" in line]
    assert len(results) == 3, text[-4000:]
    sim_success = ["success after" in line for line in results]

    reader = DatasetReader(launched["dataset"])
    assert reader.num_episodes == 3 and reader.fps == 20
    assert {k: tuple(f.shape) for k, f in reader.features.items()} == {
        "observation.state": (23,), "observation.environment_state": (10,), "observation.images.front": (32, 32, 3),
        "action": (8,)}
    assert reader.features["action"].names[-1] == "gripper"
    meta = reader.meta
    assert meta.stage_names == ["reach", "grasp", "lift"]
    assert [meta.success(e) for e in range(3)] == sim_success
    for ep in range(3):
        info = meta.episode_info(ep)
        assert info["policy"] == str(lift_policy) and info["seed"] == SEED and info["seed_episode"] == ep
        ann = meta.stages(ep)
        assert ann is not None and ann.names[0] == "reach" and ann.end_frames[-1] == reader.lengths[ep] - 1
        frames = reader.episode(ep)
        assert frames["observation.images.front"].shape == (reader.lengths[ep], 32, 32, 3)
        # each action is the command that answered the frame's state: the arm moves to it by the next frame
        q, target = frames["observation.state"][:, :7], frames["action"][:, :7]
        assert np.abs(target[:-1] - q[1:]).mean() < np.abs(target[:-1] - q[:-1]).mean()

    judged = run(JudgeConfig(dataset=str(launched["dataset"]), reward=str(progress_model), out=str(tmp_path / "judge"),
                             device="cpu", progress=False, report=False))
    assert [r["episode"] for r in judged["rows"]] == [0, 1, 2]
    assert all(r["success_source"] == "label" and 0.0 <= r["process_score"] <= 1.0 for r in judged["rows"])
    assert list(judged["summary"]["policies"]) == [str(lift_policy)]
