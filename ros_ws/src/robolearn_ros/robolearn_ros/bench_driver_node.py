"""bench_driver_node: a fake ros2_control arm for the ROS control-loop benchmark (robolearn.deploy.ros_bench).

Plays the arm's hardware interface at a fixed rate from the wall clock, as ros2_control's update loop does, and
times what answers it:

  <- joint states (sensor_msgs/JointState)        arm and finger joints in the hardware file's names, replayed
                                                   from `states_file` (recorded by the benchmark), stamped with
                                                   the ROS clock at publication
  <- ~/environment_state (std_msgs/Float64MultiArray)  the replayed object state, same stamp (before the joints)
  -> position commands (std_msgs/Float64MultiArray)    what a forward position controller reads; each carries the
                                                   stamp of the state it answers (robolearn_ros.convert)
  -> gripper commands (std_msgs/Float64MultiArray)     counted only

Once the commander is connected (and `enable_service`, when set, has answered true) it waits `warmup_s`, then
measures for `duration_s`: every state's publication time and every command's arrival time on the monotonic
clock (both in this process, so latency = arrival - publication of the answered state needs no clock sync),
the CPU time of process `cpu_pid` (/proc/<pid>/stat utime + stime) over the window, its own, and the machine's
(/proc/stat: what else ran, and the hypervisor's steal). At the end it keeps
the commander's next ~/status (when `status_topic` is set), writes everything to `output` (JSON, raw samples;
robolearn.deploy.ros_bench computes the figures) and exits. The replayed states ignore the commands: the arm
is a clock and a recorder here, not a simulation.

    ros2 run robolearn_ros bench_driver_node --ros-args -p states_file:=states.npz -p enable_service:=/policy/enable
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool

from robolearn.hardware import load_robot
from robolearn_ros.common import Param, ParameterError, declare_parameters, latched_qos, reliable_qos, spin_node
from robolearn_ros.convert import float_array, float_array_msg, joint_state_msg
from robolearn_ros.sim_robot_node import gripper_topic

PARAMETERS = {
    "hardware": Param("panda", "robot name (hardware/robots/<name>.yaml) or path to a hardware YAML file"),
    "states_file": Param("", ".npz of the replayed states: q (T, dof), dq (T, dof), fingers (T, 2), optionally "
                             "environment_state (T, D); empty: the home pose with a slow sine on every joint"),
    "rate_hz": Param(100.0, "joint states per second (the hardware interface's update rate), Hz"),
    "warmup_s": Param(2.0, "seconds between the commander being ready and the measured window"),
    "duration_s": Param(30.0, "length of the measured window, s"),
    "ready_timeout_s": Param(120.0, "give up (exit code 1) when the commander is not ready after this long, s"),
    "joint_state_topic": Param("", "empty: the hardware file's joint_state_topic"),
    "position_command_topic": Param("", "empty: the hardware file's position_command_topic"),
    "gripper_command_topic": Param("", "empty: the hardware file's gripper_command_topic"),
    "enable_service": Param("", "std_srvs/SetBool called with true before the warm-up (e.g. /policy/enable); "
                                "empty: none"),
    "status_topic": Param("", "std_msgs/String JSON of the commander (e.g. /policy/status): the first one after "
                              "the window is kept; empty: none"),
    "cpu_pid": Param(0, "process whose CPU time over the window is measured; 0: none"),
    "output": Param("", "JSON file the samples are written to at the end"),
}
STATUS_WAIT_S = 2.0  # how long the end waits for the commander's status (it publishes at 2 Hz by default)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` (all its threads), s, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, utime 14, stime 15
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_seconds() -> dict[str, float]:
    """CPU time of the whole machine, every core together, from /proc/stat: busy (user, nice, system, irq,
    softirq) and steal (taken by the hypervisor for other guests), s."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return {"busy_s": (user + nice + system + irq + softirq) / _CLK_TCK, "steal_s": steal / _CLK_TCK}


class BenchDriverNode(Node):
    def __init__(self):
        super().__init__("bench_driver")
        p = self.p = declare_parameters(self, PARAMETERS)
        if not p.output:
            raise ParameterError("parameter 'output' is not set; name the JSON file the samples go to")
        if not (p.rate_hz > 0 and p.duration_s > 0 and p.warmup_s >= 0):
            raise ParameterError("parameters 'rate_hz' and 'duration_s' must be positive and 'warmup_s' >= 0")
        spec = self.spec = load_robot(p.hardware)
        self.names = list(spec.joint_names) + list(spec.gripper_joint_names)
        self.q, self.dq, self.fingers, self.env = self._load_states(p.states_file)
        self.k = 0

        qos = reliable_qos()
        self.cmd_topic = p.position_command_topic or spec.topics["position_command_topic"]
        self.js_pub = self.create_publisher(JointState, p.joint_state_topic or spec.topics["joint_state_topic"], qos)
        self.env_pub = self.create_publisher(Float64MultiArray, "~/environment_state", qos)
        self.create_subscription(Float64MultiArray, self.cmd_topic, self.on_command, qos)
        self.create_subscription(Float64MultiArray, gripper_topic(spec, p.gripper_command_topic), self.on_gripper,
                                 qos)
        if p.status_topic:
            self.create_subscription(String, p.status_topic, self.on_status, latched_qos())
        self.enable_client = self.create_client(SetBool, p.enable_service) if p.enable_service else None

        # samples, monotonic ns; states by stamp so that a command's stamp finds its publication time
        self.published: dict[int, int] = {}
        self.commands: list[tuple[int, int | None]] = []  # (arrival, answered stamp)
        self.gripper_commands = 0
        self.status: dict | None = None
        self.t_start = time.monotonic_ns()
        self.ready_at: int | None = None  # the commander is connected (and enabled)
        self.enabling = False
        self.window: tuple[int, int] | None = None  # (start, end) of the measured window
        self.cpu: dict[str, float] = {}
        self.ended_at: int | None = None
        self.exit_code = 0
        self.finished = False  # spin_node stops spinning
        self.executor_kind = "events"  # the lightest rclpy has: the instrument should disturb least
        self.period_ns = round(1e9 / p.rate_hz)
        wall = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0 / p.rate_hz, self.on_tick, clock=wall)
        self.get_logger().info(f"{spec.name} at {p.rate_hz:g} Hz, {len(self.q)} replayed states -> "
                               f"{self.cmd_topic}; window {p.warmup_s:g} + {p.duration_s:g} s")

    def _load_states(self, path: str):
        dof = self.spec.dof
        if not path:
            t = np.arange(1000) / self.p.rate_hz
            q = np.asarray(self.spec.home) + 0.1 * np.sin(2 * np.pi * 0.2 * t)[:, None]
            half = self.spec.gripper_width_max / 2
            return q, np.gradient(q, axis=0) * self.p.rate_hz, np.tile([half, -half], (len(t), 1)), None
        try:
            data = np.load(path)
            q, dq, fingers = (np.asarray(data[k], np.float64) for k in ("q", "dq", "fingers"))
            env = np.asarray(data["environment_state"], np.float64) if "environment_state" in data else None
        except (OSError, KeyError, ValueError) as e:
            raise ParameterError(f"parameter 'states_file': cannot read {path} ({e}); it must be an .npz with q, dq, "
                                 "fingers and optionally environment_state") from None
        n = len(q)
        if q.shape != (n, dof) or dq.shape != (n, dof) or fingers.shape != (n, 2) or (env is not None
                                                                                     and len(env) != n) or n < 2:
            raise ParameterError(f"parameter 'states_file': {path} must hold q, dq (T, {dof}), fingers (T, 2) and "
                                 f"environment_state (T, D) with T >= 2; got q {q.shape}, dq {dq.shape}, fingers "
                                 f"{fingers.shape}")
        return q, dq, fingers, env

    # ---- the hardware loop ----------------------------------------------------------------------------
    def on_tick(self) -> None:
        n = len(self.q)
        i = self.k % (2 * n - 2)  # forwards, then backwards: no jump in the replayed trajectory
        i = i if i < n else 2 * n - 2 - i
        self.k += 1
        stamp = self.get_clock().now().nanoseconds
        if self.env is not None:
            self.env_pub.publish(float_array_msg(self.env[i], stamp, "environment_state"))
        msg = joint_state_msg(self.names, np.concatenate([self.q[i], self.fingers[i]]),
                              np.concatenate([self.dq[i], np.zeros(2)]), stamp)
        now = time.monotonic_ns()
        self.js_pub.publish(msg)
        if self.ended_at is None:
            self.published[stamp] = now
        self.advance(now)

    def advance(self, now: int) -> None:
        """Connect, enable, warm up, measure, end: one step of the run's schedule per tick."""
        p = self.p
        if self.ended_at is not None:
            if now - self.ended_at > STATUS_WAIT_S * 1e9 or (self.status is not None or not p.status_topic):
                self.finish()
            return
        if self.ready_at is None:
            if (now - self.t_start) > p.ready_timeout_s * 1e9:
                self.fail(f"the commander was not ready within {p.ready_timeout_s:g} s: subscribers of the joint "
                          f"states {self.js_pub.get_subscription_count()}, publishers on {self.cmd_topic} "
                          f"{self.count_publishers(self.cmd_topic)}"
                          + (f", {p.enable_service} ready {self.enable_client.service_is_ready()}"
                             if self.enable_client else ""))
            elif not self.enabling and self.connected():
                self.enable()
            return
        if self.window is None:
            start = self.ready_at + round(p.warmup_s * 1e9)
            if now >= start:
                self.window = (now, now + round(p.duration_s * 1e9))
                self.commands.clear()
                self.gripper_commands = 0
                self.cpu = {"target_start_s": cpu_seconds(p.cpu_pid) if p.cpu_pid else float("nan"),
                            "self_start_s": cpu_seconds(os.getpid()),
                            **{f"machine_{k}_start": v for k, v in machine_seconds().items()}}
            return
        if now >= self.window[1]:
            self.cpu.update(target_end_s=cpu_seconds(p.cpu_pid) if p.cpu_pid else float("nan"),
                            self_end_s=cpu_seconds(os.getpid()), wall_s=(now - self.window[0]) / 1e9,
                            **{f"machine_{k}_end": v for k, v in machine_seconds().items()})
            self.ended_at = now
            self.status = None  # the first status after the window

    def connected(self) -> bool:
        return (self.js_pub.get_subscription_count() > 0 and self.count_publishers(self.cmd_topic) > 0
                and (self.enable_client is None or self.enable_client.service_is_ready()))

    def enable(self) -> None:
        if self.enable_client is None:
            self.ready_at = time.monotonic_ns()
            return
        self.enabling = True

        def done(future) -> None:
            res = future.result()
            if res is None or not res.success:
                self.fail(f"{self.p.enable_service} refused: {getattr(res, 'message', 'no answer')}")
                return
            self.ready_at = time.monotonic_ns()
            self.get_logger().info(f"{self.p.enable_service}: {res.message}; measuring after {self.p.warmup_s:g} s")

        self.enable_client.call_async(SetBool.Request(data=True)).add_done_callback(done)

    # ---- what answers -----------------------------------------------------------------------------
    def on_command(self, msg: Float64MultiArray) -> None:
        now = time.monotonic_ns()  # first: the arrival time is what is measured
        if self.window is not None and self.window[0] <= now < self.window[1]:
            self.commands.append((now, float_array(msg)[1]))

    def on_gripper(self, _msg: Float64MultiArray) -> None:
        if self.window is not None and self.window[0] <= time.monotonic_ns() < self.window[1]:
            self.gripper_commands += 1

    def on_status(self, msg: String) -> None:
        if self.ended_at is not None and self.status is None:
            self.status = json.loads(msg.data)

    # ---- the end --------------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        self.get_logger().error(reason)
        self.write({"error": reason})
        self.exit_code = 1
        self.finished = True

    def finish(self) -> None:
        states = sorted(self.published.items())
        self.write({
            "error": None, "rate_hz": self.p.rate_hz, "window_ns": list(self.window),
            "states": {"stamp_ns": [s for s, _ in states], "published_ns": [t for _, t in states]},
            "commands": {"arrival_ns": [t for t, _ in self.commands], "stamp_ns": [s for _, s in self.commands]},
            "gripper_commands": self.gripper_commands, "cpu": self.cpu, "status": self.status,
        })
        self.finished = True

    def write(self, report: dict) -> None:
        from robolearn.data.format import atomic_write_json

        atomic_write_json(Path(self.p.output), report, fsync=False)


def main(args: list[str] | None = None) -> None:
    raise SystemExit(spin_node(BenchDriverNode, "bench_driver", args))


if __name__ == "__main__":
    main()
