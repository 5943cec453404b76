"""policy_node: a trained robolearn policy commanding a ros2_control arm through robolearn.deploy's safety filter.

  -> joint states (sensor_msgs/JointState)       the hardware file's joint_state_topic
  -> cameras (sensor_msgs/Image)                 those the policy reads, at `camera_topic_format` (or camera_topics)
  -> environment state (std_msgs/Float64MultiArray)  when the policy reads it (a tracker, or sim_robot_node)
  -> e-stop (std_msgs/Bool)                      true latches the e-stop: every command holds until ~/reset
  <- position commands (std_msgs/Float64MultiArray) to a forward position controller (command_interface:=position)
     or a trajectory (trajectory_msgs/JointTrajectory) to a joint trajectory controller (:=trajectory)
  <- gripper command (std_msgs/Float64MultiArray [width, m])
  <- ~/status (std_msgs/String, JSON): enabled, e-stop, what the filter changed and why (reasons and their
     counts), what the node waits for, loop timing (compute, period jitter, state-to-command latency)
  ~/enable (std_srvs/SetBool), ~/reset (std_srvs/Trigger: clear the e-stop, start the policy afresh)

It starts disabled and publishes no command until enabled (the controllers hold their last target). While
enabled it commands every tick: the policy's target through the safety filter, or a hold (the e-stop, a
stale or missing state) that the filter chose. The logic is robolearn.deploy.ControlLoop; this node turns
messages into RobotState and Commands into messages.

Ticks come from a timer at the control rate, or (step_on_state:=true) from each new joint state once its
cameras and environment state with the same stamp are in: lockstep with sim_robot_node. With the timer and
sync_to_states (the default), each tick answers a joint state it has not answered yet: a timer tick that finds
none waits for the next to arrive (at most until the following timer tick, which runs on the stale state, and
the watchdog holds), a state arriving just before a timer tick (ALIGN_TOLERANCE) is answered at once in that
tick's place, and when joint states come at about the control rate the timer is re-phased to fall as they
arrive. A timer free-running beside the joint states reads each one up to a period after it came (0-10 ms
at 100 Hz, fixed by the phase the two happened to start at), so the state-to-command latency could never be
held under a period; synced, it is the tick's compute (GitHub issue 9; `robolearn bench ros`).

Speed (issue 9): the EventsExecutor (half the CPU per message of SingleThreadedExecutor, measured), one torch
thread (a batch-1 MLP gains nothing from two; with the other core busy, OpenMP's two threads waiting on each
other put the p99 of its inference at 32-39 ms instead of 2), and no garbage collection of what start-up loaded
(robolearn_ros.common.spin_node).

    ros2 run robolearn_ros policy_node --ros-args -p checkpoint:=runs/bc/lift_mlp -p hardware:=panda
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, deque

import numpy as np
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from robolearn.deploy import ControlConfig, ControlLoop, RobotState, SafetyConfig
from robolearn_ros.common import (
    EXECUTORS,
    Param,
    ParameterError,
    declare_parameters,
    image_qos,
    latched_qos,
    reliable_qos,
    spin_node,
)
from robolearn_ros.convert import (
    JointStateCache,
    fingers_from_joints,
    float_array,
    float_array_msg,
    image_to_array,
    stamp_ns,
    trajectory_msg,
)
from robolearn_ros.sim_robot_node import gripper_topic

PARAMETERS = {
    "checkpoint": Param("", "policy checkpoint directory, or a training run directory (its checkpoints/last)"),
    "hardware": Param("panda", "robot name (hardware/robots/<name>.yaml) or path to a hardware YAML file"),
    "rate_hz": Param(0.0, "control rate, Hz; 0: the rate the policy was trained at"),
    "device": Param("auto", "policy device: auto, cpu, cuda, cuda:N"),
    "task": Param("", "task the policy was trained on, when its checkpoint does not record it"),
    "command_interface": Param("position", "position: std_msgs/Float64MultiArray to a forward position controller; "
                                           "trajectory: trajectory_msgs/JointTrajectory to a joint trajectory "
                                           "controller"),
    "joint_state_topic": Param("", "empty: the hardware file's joint_state_topic"),
    "position_command_topic": Param("", "empty: the hardware file's position_command_topic"),
    "trajectory_command_topic": Param("", "empty: the hardware file's trajectory_command_topic"),
    "gripper_command_topic": Param("", "std_msgs/Float64MultiArray [width, m]; empty: the hardware file's "
                                       "gripper_command_topic, else /gripper_controller/commands"),
    "camera_topic_format": Param("/cameras/{camera}/image_raw", "topic of each camera the policy reads"),
    "camera_topics": Param([], "per-camera topics overriding camera_topic_format, as camera=topic", str),
    "image_qos": Param("reliable", "camera subscriptions: reliable, or best_effort (sensor-data cameras)"),
    "environment_state_topic": Param("", "std_msgs/Float64MultiArray of the object state, for policies that "
                                         "read observation.environment_state (sim: /sim_robot/environment_state)"),
    "gripper_closed_position": Param(0.8, "robots with one gripper joint (a Robotiq knuckle): its position when "
                                          "closed (0: open)"),
    "estop_topic": Param("/estop", "std_msgs/Bool; true latches the e-stop (cleared by ~/reset)"),
    "step_on_state": Param(False, "tick on each new joint state (lockstep with sim_robot_node) instead of a timer"),
    "start_enabled": Param(False, "enable at start (simulation only: a real arm starts disabled)"),
    "sync_to_states": Param(True, "timer mode: answer each joint state as it arrives when they come at about the "
                                  "control rate (the timer re-phases to them); false: the timer alone, reading the "
                                  "newest state up to a period late"),
    "status_rate_hz": Param(2.0, "~/status messages per second (also one on every enable, e-stop, reset)"),
    "timing_window": Param(500, "ticks the ~/status timing figures cover (the latest ones)"),
    "velocity_scale": Param(1.0, "fraction of the joint velocity limits a command may use (0, 1]"),
    "max_obs_age_s": Param(0.0, "watchdog: hold when the newest joint state is older than this, s; 0: 1.5 periods"),
    "watchdog_action": Param("hold", "hold: hold while states are stale; stop: also latch the e-stop"),
    "workspace_lo": Param([], "lower corner of the TCP box, m (x, y, z); empty: the robot's default", float),
    "workspace_hi": Param([], "upper corner of the TCP box, m; empty: the robot's default", float),
    "trace": Param(True, "run the policy's chunk predictor as a frozen TorchScript trace: the same actions as "
                         "eager, about 2x quicker predicting ticks on a CPU, a few seconds at start-up"),
    "prefetch": Param(0, "> 0: predict each next action chunk on a worker thread this many ticks before the current "
                         "one runs out (for a policy whose chunk takes longer than a control period, e.g. diffusion "
                         "on a CPU; chunks are then planned from observations that many ticks old); 0: off"),
    "torch_threads": Param(1, "torch intra-op threads of the policy on the CPU; 0: torch's default (one per core)"),
    "executor": Param("events", "rclpy executor: events (rclpy.experimental.EventsExecutor) or single "
                                "(SingleThreadedExecutor)"),
}
# sync_to_states, in control periods: a state arriving this close before a timer tick is answered at once, in its
# place; a timer tick finding a state older than this re-phases the timer
ALIGN_TOLERANCE = 0.1
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")  # reasons are counted by kind: their numbers become '#'



class PolicyNode(Node):
    def __init__(self):
        super().__init__("policy")
        p = self.p = declare_parameters(self, PARAMETERS)
        if p.command_interface not in ("position", "trajectory"):
            raise ParameterError(f"parameter 'command_interface' must be position or trajectory, got "
                                 f"{p.command_interface!r}")
        if not p.checkpoint:
            raise ParameterError("parameter 'checkpoint' is not set; pass the policy, e.g. "
                                 "-p checkpoint:=runs/bc/lift_mlp/checkpoints/last")
        if p.executor not in EXECUTORS:
            raise ParameterError(f"parameter 'executor' must be one of {', '.join(EXECUTORS)}, got {p.executor!r}")
        if p.timing_window < 2 or p.torch_threads < 0:
            raise ParameterError(f"parameter 'timing_window' must be at least 2 ticks (got {p.timing_window}) and "
                                 f"'torch_threads' >= 0 (got {p.torch_threads})")
        self.executor_kind = p.executor
        if p.torch_threads:
            import torch

            torch.set_num_threads(p.torch_threads)
        safety = SafetyConfig(workspace_lo=list(p.workspace_lo), workspace_hi=list(p.workspace_hi),
                              velocity_scale=p.velocity_scale, max_obs_age_s=p.max_obs_age_s,
                              watchdog_action=p.watchdog_action)
        self.loop = ControlLoop(ControlConfig(policy=p.checkpoint, robot=p.hardware, rate_hz=p.rate_hz,
                                              device=p.device, safety=safety, task=p.task, trace=p.trace,
                                              prefetch=p.prefetch))
        spec = self.spec = self.loop.robot_spec
        self.cache = JointStateCache(spec.joint_names, spec.gripper_joint_names)
        self.images: dict[str, tuple[int, np.ndarray]] = {}  # camera -> (stamp ns, image)
        self.env_state: tuple[int | None, np.ndarray] | None = None
        self.state_received = 0.0  # monotonic time the newest arm joint state arrived
        self.state_period = 0.0  # mean interval between arm joint states, s
        self.answered = -1  # stamp (ns) of the joint state the last tick answered
        self.due = False  # sync_to_states: a timer tick is waiting for a new joint state
        self.taken = False  # sync_to_states: the coming timer tick was taken early, as its state arrived
        self.realign = False  # sync_to_states: restart the timer as the next joint state arrives

        qos = reliable_qos()
        self.create_subscription(JointState, p.joint_state_topic or spec.topics["joint_state_topic"], self.on_joints,
                                 qos)
        cam_topics = self._camera_topics()
        for cam in self.loop.required_cameras:
            self.create_subscription(Image, cam_topics[cam], lambda m, c=cam: self.on_image(c, m),
                                     image_qos(p.image_qos))
        if self.loop.needs_environment_state:
            if not p.environment_state_topic:
                raise ParameterError("the policy reads observation.environment_state; set parameter "
                                     "'environment_state_topic' to a std_msgs/Float64MultiArray topic of the object "
                                     "state (sim_robot_node publishes /sim_robot/environment_state)")
            self.create_subscription(Float64MultiArray, p.environment_state_topic, self.on_env_state, qos)
        self.create_subscription(Bool, p.estop_topic, self.on_estop, qos)
        self.gripper_pub = self.create_publisher(Float64MultiArray, gripper_topic(spec, p.gripper_command_topic), qos)
        if p.command_interface == "position":
            self.command_topic = p.position_command_topic or spec.topics["position_command_topic"]
            self.command_pub = self.create_publisher(Float64MultiArray, self.command_topic, qos)
        else:
            self.command_topic = p.trajectory_command_topic or spec.topics["trajectory_command_topic"]
            self.command_pub = self.create_publisher(JointTrajectory, self.command_topic, qos)
        self.status_pub = self.create_publisher(String, "~/status", latched_qos())
        self.create_service(SetBool, "~/enable", self.on_enable)
        self.create_service(Trigger, "~/reset", self.on_reset)

        self.ticks = self.sent = self.holds = 0
        self.reasons: Counter[str] = Counter()
        self.last: dict = {"held": None, "reasons": []}
        self.compute_s: deque[float] = deque(maxlen=p.timing_window)
        self.latency_s: deque[float] = deque(maxlen=p.timing_window)
        self.wakes: deque[float] = deque(maxlen=p.timing_window)
        wall = Clock(clock_type=ClockType.STEADY_TIME)  # status keeps coming under use_sim_time too
        self.timer = None if p.step_on_state else self.create_timer(self.loop.control_dt, self.on_timer, clock=wall)
        if p.status_rate_hz > 0:
            self.create_timer(1.0 / p.status_rate_hz, self.publish_status, clock=wall)
        if p.start_enabled:
            self.loop.enable()
        self.get_logger().info(
            f"policy {p.checkpoint} on {spec.name} ({self.loop.action_mode}, {self.loop.rate_hz:g} Hz, "
            f"{'on each state' if p.step_on_state else 'timer'}) -> {self.command_topic}; cameras "
            f"{self.loop.required_cameras or 'none'}; {'ENABLED' if self.loop.enabled else 'disabled: call ~/enable'}")
        self.publish_status()

    def _camera_topics(self) -> dict[str, str]:
        out = {cam: self.p.camera_topic_format.format(camera=cam) for cam in self.loop.required_cameras}
        for item in self.p.camera_topics:
            cam, sep, topic = item.partition("=")
            if not sep or not cam or not topic:
                raise ParameterError(f"parameter 'camera_topics': {item!r} must be written camera=topic")
            out[cam] = topic
        return out

    # ---- inputs -------------------------------------------------------------------------------------
    def on_joints(self, msg: JointState) -> None:
        if self.cache.update(msg):
            now = time.monotonic()
            if self.state_received:
                interval = now - self.state_received
                self.state_period += 0.1 * (interval - self.state_period) if self.state_period else interval
            self.state_received = now
            if self.due or self.realign or (not self.taken and self.timer_near()):
                if self.realign:  # the next timer tick one period from now, as the next state arrives
                    self.timer.reset()
                self.taken = not (self.due or self.realign)
                self.due = self.realign = False
                self.tick()
            self.maybe_step()

    def timer_near(self) -> bool:
        """sync_to_states: the next timer tick is due within ALIGN_TOLERANCE periods."""
        if self.timer is None or not self.p.sync_to_states:
            return False
        return (self.timer.time_until_next_call() or 0) < ALIGN_TOLERANCE * self.loop.control_dt * 1e9

    def on_image(self, cam: str, msg: Image) -> None:
        try:
            self.images[cam] = (stamp_ns(msg.header.stamp), image_to_array(msg))
        except ValueError as e:
            self.get_logger().error(f"camera {cam}: {e}", throttle_duration_sec=5.0)
            return
        self.maybe_step()

    def on_env_state(self, msg: Float64MultiArray) -> None:
        values, stamp = float_array(msg)
        self.env_state = (stamp, values)
        self.maybe_step()

    def on_estop(self, msg: Bool) -> None:
        if msg.data and not self.loop.filter.estopped:
            self.loop.estop(f"e-stop topic {self.p.estop_topic}")
            self.get_logger().warning("E-STOP latched: every command holds until ~/reset")
            self.publish_status()

    # ---- services -----------------------------------------------------------------------------------
    def on_enable(self, req, res):
        if req.data:
            self.loop.enable()
            self.answered = -1  # step_on_state: answer the state that came while disabled now
            self.maybe_step()
        else:
            self.loop.disable()
        res.success = True
        res.message = "enabled" if self.loop.enabled else "disabled"
        if self.loop.enabled and self.loop.filter.estopped:
            res.message += f" (e-stop latched: {self.loop.filter.estop_reason}; commands hold until ~/reset)"
        self.get_logger().info(res.message)
        self.publish_status()
        return res

    def on_reset(self, _req, res):
        was = self.loop.filter.estop_reason
        self.loop.clear_estop()
        self.loop.reset()
        self.answered = -1
        res.success = True
        res.message = "policy reset" + (f", e-stop cleared ({was})" if was else "")
        self.publish_status()
        return res

    # ---- one tick -----------------------------------------------------------------------------------
    def waiting_for(self) -> list[str]:
        """What the next tick lacks (empty: it has everything)."""
        out = [f"joint {n}" for n in self.cache.missing()]
        out += [f"camera {c}" for c in self.loop.required_cameras if c not in self.images]
        if self.loop.needs_environment_state and self.env_state is None:
            out.append("environment state")
        return out

    def maybe_step(self) -> None:
        """step_on_state: tick once per joint state, when its cameras and environment state are in."""
        if not self.p.step_on_state or not self.cache.complete:
            return
        stamp = self.cache.stamp_ns
        if stamp == self.answered:
            return  # a republished state we answered already
        if any(self.images.get(c, (None,))[0] != stamp for c in self.loop.required_cameras):
            return
        if self.loop.needs_environment_state and (self.env_state is None or self.env_state[0] not in (None, stamp)):
            return
        self.answered = stamp
        self.tick()

    def robot_state(self) -> RobotState | None:
        if not self.cache.complete:
            return None
        q, dq, joints = self.cache.arrays()
        fingers = fingers_from_joints(joints, self.spec.gripper_width_max, self.p.gripper_closed_position)
        env = self.env_state[1] if self.env_state is not None else None
        return RobotState(stamp=self.state_received, q=q, dq=dq, fingers=fingers,
                          images={c: img for c, (_, img) in self.images.items()}, environment_state=env)

    def on_timer(self) -> None:
        """The control clock (module doc): with sync_to_states, tick on a state not answered yet, else wait for one
        (on_joints ticks when it comes) until the next timer tick."""
        if not self.p.sync_to_states:
            self.tick()
            return
        if self.taken:  # on_joints answered this tick's state as it arrived
            self.taken = False
            return
        fresh = self.cache.stamp_ns != self.answered
        if not fresh and not self.due:
            self.due = True
            return
        self.due = not fresh  # a whole period without a new state: tick on the stale one, and keep waiting
        age = time.monotonic() - self.state_received
        self.tick()
        dt = self.loop.control_dt
        # the state came well before the tick while states come at about the control rate: the timer lags them
        if fresh and age > ALIGN_TOLERANCE * dt and self.state_period > 0.5 * dt:
            self.realign = True

    def tick(self) -> None:
        wake = time.monotonic()
        state = self.robot_state()
        if state is not None:
            self.answered = self.cache.stamp_ns
        cmd = self.loop.step(state, wake)
        self.ticks += 1
        self.reasons.update(_NUMBER.sub("#", r) for r in cmd.reasons)
        self.last = {"held": cmd.held, "reasons": list(cmd.reasons)}
        if self.loop.enabled and not cmd.empty:
            self.publish_command(cmd.q, cmd.gripper_width)
            self.sent += 1
            self.holds += cmd.held
            sent = time.monotonic()
            if state is not None:
                self.latency_s.append(sent - state.stamp)
        self.compute_s.append(time.monotonic() - wake)
        self.wakes.append(wake)

    def publish_command(self, q: np.ndarray, width: float) -> None:
        stamp = self.cache.stamp_ns  # the state this answers (see robolearn_ros.convert)
        # the arm's command first: a publish costs ~0.3 ms, which the arm need not wait for. In lockstep
        # (step_on_state) the gripper's goes first: sim_robot_node steps as the arm command arrives, with the
        # gripper command it has by then
        if self.p.step_on_state:
            self.gripper_pub.publish(float_array_msg([width], stamp, "width"))
        if self.p.command_interface == "position":
            self.command_pub.publish(float_array_msg(q, stamp, "positions"))
        else:
            self.command_pub.publish(trajectory_msg(list(self.spec.joint_names), q, self.loop.control_dt, stamp))
        if not self.p.step_on_state:
            self.gripper_pub.publish(float_array_msg([width], stamp, "width"))

    # ---- status -------------------------------------------------------------------------------------
    def status(self) -> dict:
        def ms(x, q) -> float | None:
            return round(float(np.percentile(x, q)) * 1e3, 3) if len(x) else None

        periods = np.diff(np.asarray(self.wakes))
        f = self.loop.filter
        return {
            "node": self.get_fully_qualified_name(),
            "enabled": self.loop.enabled,
            "estopped": f.estopped,
            "estop_reason": f.estop_reason,
            "held": self.last["held"],
            "reasons": self.last["reasons"],
            "reason_counts": dict(self.reasons),  # since start, numbers as '#'
            "waiting_for": self.waiting_for(),
            "ticks": self.ticks,
            "commands_sent": self.sent,
            "holds_sent": self.holds,
            "rate_hz": self.loop.rate_hz,
            "mode": "step_on_state" if self.p.step_on_state else "timer",
            "state_age_ms": round((time.monotonic() - self.state_received) * 1e3, 3) if self.state_received else None,
            "timing": {
                "window": len(self.compute_s),
                "compute_ms_p50": ms(self.compute_s, 50), "compute_ms_p99": ms(self.compute_s, 99),
                "compute_ms_max": round(max(self.compute_s) * 1e3, 3) if self.compute_s else None,
                "period_ms_mean": round(float(periods.mean()) * 1e3, 3) if len(periods) else None,
                "period_jitter_ms_p99": ms(np.abs(periods - self.loop.control_dt), 99) if len(periods) else None,
                "latency_ms_p50": ms(self.latency_s, 50), "latency_ms_p99": ms(self.latency_s, 99),
            },
        }

    def publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.status())))


def main(args: list[str] | None = None) -> None:
    raise SystemExit(spin_node(PolicyNode, "policy", args))


if __name__ == "__main__":
    main()
