"""sim_robot_node: a robolearn sim task behind the topics of a ros2_control arm (our `use_mock_hardware`).

Publishes what a real arm's driver publishes, and reads the commands a real arm's controllers read:

  joint_states (sensor_msgs/JointState)            arm and finger joints, in the hardware file's names
  cameras (sensor_msgs/Image rgb8)                 `camera_topic_format` per camera, e.g. /cameras/front/image_raw
  <- position commands (std_msgs/Float64MultiArray) the forward position controller's topic
  <- trajectories (trajectory_msgs/JointTrajectory)  the joint trajectory controller's topic (last point)
  <- gripper command (std_msgs/Float64MultiArray)    [width, m]

plus what only a simulation knows, for tests and recording: `~/success` (std_msgs/Bool), `~/stage`
(std_msgs/Int32), `~/environment_state` (std_msgs/Float64MultiArray, stamped as robolearn_ros.convert
says) and `~/episode` (std_msgs/String, JSON: episode, step, stamp_ns, stage, success, done; the first
step of an episode adds task, description, seed, stage_names, environment_state_names, max_episode_steps).
Every message of a step carries the stamp of its joint state, which is sim time: the node's start time
plus its control periods (a reset takes one), however fast lockstep runs.

Two clocks:
- lockstep:=true (tests): the sim advances one control period only when the command answering its
  latest joint state arrives (a stamped Float64MultiArray must carry that state's stamp; a trajectory
  answers whatever state is current). Without an answer it republishes the state every `resend_s` (a
  message lost to discovery costs time, not the episode) and after `lockstep_timeout_s` steps once
  holding position. So a run is as fast as the policy and exactly reproducible.
- lockstep:=false: free-running in real time at the control rate, applying the newest command (holding
  before the first one), as a real arm would.

Episodes: `~/reset` (std_srvs/Trigger) starts a new one. Episodes continue the random stream of the
`seed` parameter (episode k of seed s is the same in every run, and the same as episode k of
`robolearn eval seed=s num_envs=1`); setting `seed` (ros2 param set) restarts the stream at the next
reset. An episode ends when the task succeeds (terminate_on_success) or after max_episode_steps; its last
state is not published as a joint state (nothing will answer it), only on ~/episode with done=true.
With auto_reset the next one starts by itself, after calling `policy_reset_service` (the policy starts
each episode afresh, in step with the sim); with episodes:=N the node exits after N episodes.

    ros2 run robolearn_ros sim_robot_node --ros-args -p task:=lift -p lockstep:=false
"""

from __future__ import annotations

import json
import time

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int32, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robolearn.deploy import Command, SimRobot
from robolearn.errors import ConfigError
from robolearn_ros.common import Param, ParameterError, declare_parameters, reliable_qos, spin_node
from robolearn_ros.convert import (
    array_to_image,
    float_array,
    float_array_msg,
    joint_state_msg,
    trajectory_stamp,
    trajectory_target,
)

PARAMETERS = {
    "task": Param("lift", "registered native task (`robolearn tasks`)"),
    "robot": Param("panda", "robot name (hardware/robots/<name>.yaml) or path to a hardware YAML file"),
    "policy": Param("", "optional policy checkpoint: render the cameras it reads at its image size (overrides "
                        "cameras and image_size)"),
    "seed": Param(0, "seed of the episode stream (changing it restarts the stream at the next reset)"),
    "cameras": Param([], "cameras to render and publish (e.g. [front])", str),
    "image_size": Param([84, 84], "(height, width) of the camera images, pixels"),
    "rate_hz": Param(0.0, "control rate, Hz; 0: the task's"),
    "max_episode_steps": Param(0, "time limit in control steps; 0: the task's"),
    "terminate_on_success": Param(True, "end the episode at the first successful step"),
    "lockstep": Param(True, "advance only when the command answering the latest state arrives (tests); false: "
                            "free-running at the control rate"),
    "lockstep_timeout_s": Param(2.0, "lockstep: step once holding position after this long without an answer, s"),
    "resend_s": Param(0.25, "lockstep: republish the unanswered state this often, s"),
    "autostart": Param(True, "start the first episode by itself (lockstep: once a subscriber and a commander are "
                             "discovered)"),
    "auto_reset": Param(False, "start the next episode when one ends"),
    "episodes": Param(0, "with auto_reset: exit after this many episodes; 0: never"),
    "policy_reset_service": Param("", "std_srvs/Trigger called before each episode starts (e.g. /policy/reset)"),
    "joint_state_topic": Param("", "empty: the hardware file's joint_state_topic"),
    "position_command_topic": Param("", "empty: the hardware file's position_command_topic"),
    "trajectory_command_topic": Param("", "empty: the hardware file's trajectory_command_topic"),
    "gripper_command_topic": Param("", "std_msgs/Float64MultiArray [width, m]; empty: the hardware file's "
                                       "gripper_command_topic, else /gripper_controller/commands"),
    "camera_topic_format": Param("/cameras/{camera}/image_raw", "topic of each camera ({camera}: its name)"),
}
DEFAULT_GRIPPER_TOPIC = "/gripper_controller/commands"
EXIT_DELAY_S = 1.0  # after the last episode, for the recorder to receive its end
GRIPPER_WAIT_S = 0.05  # lockstep: how long an answered arm command waits for the same step's gripper command
RESET_WAIT_S = 5.0  # how long an episode waits for policy_reset_service's answer


def gripper_topic(spec, override: str) -> str:
    """The gripper command topic: the parameter, else the hardware file's, else the ros2_control default."""
    return override or spec.topics.get("gripper_command_topic") or DEFAULT_GRIPPER_TOPIC


class SimRobotNode(Node):
    def __init__(self):
        super().__init__("sim_robot")
        p = self.p = declare_parameters(self, PARAMETERS)
        cameras, size = list(p.cameras), tuple(p.image_size)
        if p.policy:
            cameras, size = _policy_cameras(p.policy, cameras, size)
        if len(size) != 2 or min(size) < 8 or any(s % 2 for s in size):
            raise ParameterError(f"parameter 'image_size' must be [height, width], even and at least 8, got {size}")
        for name in ("lockstep_timeout_s", "resend_s"):
            if not getattr(p, name) > 0:
                raise ParameterError(f"parameter {name!r} must be positive seconds, got {getattr(p, name)}")
        self.robot = SimRobot(p.task, seed=p.seed, robot=p.robot, cameras=cameras, control_hz=p.rate_hz or None,
                              image_size=size, max_episode_steps=p.max_episode_steps)
        spec = self.spec = self.robot.robot_spec
        self.joint_names = list(spec.joint_names) + list(spec.gripper_joint_names)
        task = self.robot.env.task
        self.static_info = {"task": p.task, "description": task.description, "stage_names": self.robot.stage_names,
                            "environment_state_names": list(task.environment_state_names),
                            "max_episode_steps": self.robot.max_episode_steps, "control_dt": self.robot.control_dt,
                            "cameras": cameras, "robot": spec.name}
        self.seed_used = p.seed
        self.fresh = True  # SimRobot reset itself into episode 0 of `seed`

        qos = reliable_qos()
        self.js_pub = self.create_publisher(JointState, p.joint_state_topic or spec.topics["joint_state_topic"], qos)
        self.cam_pubs = {c: self.create_publisher(Image, p.camera_topic_format.format(camera=c), reliable_qos(2))
                         for c in cameras}
        self.env_pub = self.create_publisher(Float64MultiArray, "~/environment_state", qos)
        self.stage_pub = self.create_publisher(Int32, "~/stage", qos)
        self.success_pub = self.create_publisher(Bool, "~/success", qos)
        self.episode_pub = self.create_publisher(String, "~/episode", qos)
        # the gripper first: when both are waiting, the executor takes them in creation order
        self.create_subscription(Float64MultiArray, gripper_topic(spec, p.gripper_command_topic), self.on_gripper, qos)
        self.pos_topic = p.position_command_topic or spec.topics["position_command_topic"]
        self.traj_topic = p.trajectory_command_topic or spec.topics["trajectory_command_topic"]
        self.create_subscription(Float64MultiArray, self.pos_topic, self.on_position, qos)
        self.create_subscription(JointTrajectory, self.traj_topic, self.on_trajectory, qos)
        self.create_service(Trigger, "~/reset", self.on_reset)
        self.reset_client = self.create_client(Trigger, p.policy_reset_service) if p.policy_reset_service else None
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.episode = -1
        self.running = False  # an episode is under way
        self.starting: float | None = None  # since when the next episode waits for the policy's reset
        self.k = 0  # episode number within the stream of seed_used
        self.t0_ns = self.get_clock().now().nanoseconds
        self.dt_ns = round(self.robot.control_dt * 1e9)
        self.ticks = 0  # control periods since start (a reset takes one): the stamps are sim time
        self.stamp = 0  # ns, stamp of the state last published (the one to answer)
        self.published_at = 0.0  # monotonic time of that state's (re)publication
        self.sent_at = 0.0  # monotonic time it was first published
        self.arm: tuple[np.ndarray, float] | None = None  # answering arm command (q, arrival)
        self.latest_q: np.ndarray | None = None  # free-running: the newest arm command
        self.width = float(self.robot.read().gripper_width)
        self.width_stamp: int | None = None
        self.counts = {"timeouts": 0, "resends": 0, "stale_commands": 0, "bad_commands": 0}
        self.outcomes: list[bool] = []  # success of each finished episode, for the summary
        self.finished = False  # spin_node stops spinning
        self.done_at: float | None = None  # when the last episode ended
        period = self.robot.control_dt if not p.lockstep else 0.01
        self.timer = self.create_timer(period, self.on_timer)
        self.get_logger().info(
            f"{p.task} on {spec.name}, {'lockstep' if p.lockstep else 'real time'} at {1 / self.robot.control_dt:g} Hz"
            f", cameras {cameras or 'none'}; commands on {self.pos_topic} / {self.traj_topic}")

    # ---- parameters ---------------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        for prm in params:
            if prm.name != "seed" or not isinstance(prm.value, int) or isinstance(prm.value, bool):
                return SetParametersResult(successful=False, reason="only 'seed' (an integer) can change at run "
                                                                    "time; restart the node for the others")
        return SetParametersResult(successful=True)

    # ---- episodes -----------------------------------------------------------------------------------
    def on_reset(self, _req, res):
        self.request_episode()
        res.success, res.message = True, f"episode {self.episode + 1} starting"
        return res

    def request_episode(self) -> None:
        """Start the next episode, after the policy's reset when a reset service is set."""
        self.running = False
        if self.reset_client is None:
            self.start_episode()
            return
        self.starting = time.monotonic()
        if not self.reset_client.service_is_ready():
            self.get_logger().warning(f"{self.p.policy_reset_service} is not available; starting without it")
            self.start_episode()
            return
        self.reset_client.call_async(Trigger.Request()).add_done_callback(lambda _f: self.start_episode())

    def start_episode(self) -> None:
        if self.running:
            return  # the reset's answer came after RESET_WAIT_S; the episode started without it
        self.starting = None
        seed = self.get_parameter("seed").value
        if seed != self.seed_used:
            self.robot.reset(seed)
            self.seed_used, self.k = seed, 0
        elif self.fresh:
            self.k = 0
        else:
            self.robot.reset()
            self.k += 1
        if self.episode >= 0:
            self.ticks += 1  # a reset takes a control period, so no stamp is used twice
        self.fresh = False
        self.episode += 1
        self.running = True
        self.arm, self.latest_q = None, None  # no command of the last episode drives this one
        self.width, self.width_stamp = float(self.robot.read().gripper_width), None
        self.counts = dict.fromkeys(self.counts, 0)
        self.publish_state(first=True)

    def end_episode(self) -> None:
        self.running = False
        msg = {"episode": self.episode, "step": self.robot.elapsed_steps, "stamp_ns": self.sim_ns(),
               "stage": self.robot.stage, "success": bool(self.robot.success), "done": True, **self.counts}
        self.publish_extras(msg)
        self.outcomes.append(bool(self.robot.success))
        self.get_logger().info(f"episode {self.episode} (seed {self.seed_used} #{self.k}): "
                               f"{'success' if self.robot.success else 'failure'} after {self.robot.elapsed_steps} "
                               f"steps" + (f", {self.counts}" if any(self.counts.values()) else ""))
        if self.p.auto_reset:
            if self.p.episodes and self.episode + 1 >= self.p.episodes:
                self.finish()
            else:
                self.request_episode()

    def finish(self) -> None:
        """The last episode is done: leave (after a moment, so subscribers receive the last messages)."""
        from robolearn.stats import wilson_interval

        n, k = len(self.outcomes), sum(self.outcomes)
        lo, hi = wilson_interval(k, n)
        self.get_logger().info(f"{self.p.episodes} episodes done: success {k}/{n} = {k / max(n, 1):.0%} "
                               f"(95% CI {lo:.0%}-{hi:.0%}); exiting")
        self.done_at = time.monotonic()

    # ---- publishing ---------------------------------------------------------------------------------
    def sim_ns(self) -> int:
        """Sim time: the node's start time plus its control periods, ns (a recorder decimating by stamp keeps
        every step, however fast lockstep runs)."""
        return self.t0_ns + self.ticks * self.dt_ns

    def publish_state(self, first: bool = False) -> None:
        """Publish the current step's messages under a new stamp; the joint state last."""
        self.stamp = self.sim_ns()
        self.published_at = self.sent_at = time.monotonic()
        info = {"episode": self.episode, "step": self.robot.elapsed_steps, "stamp_ns": self.stamp,
                "stage": self.robot.stage, "success": bool(self.robot.success), "done": False}
        if first:
            info.update(self.static_info, seed=self.seed_used, seed_episode=self.k)
        self.publish_extras(info)
        self._publish_sensors()

    def _publish_sensors(self) -> None:
        state = self.robot.read()
        for cam, pub in self.cam_pubs.items():
            pub.publish(array_to_image(state.images[cam], self.stamp, cam))
        self.env_pub.publish(float_array_msg(state.environment_state, self.stamp, "environment_state"))
        self.js_pub.publish(joint_state_msg(self.joint_names, np.concatenate([state.q, state.fingers]),
                                            np.concatenate([state.dq, np.zeros(len(state.fingers))]), self.stamp))

    def publish_extras(self, info: dict) -> None:
        self.stage_pub.publish(Int32(data=int(info["stage"])))
        self.success_pub.publish(Bool(data=bool(info["success"])))
        self.episode_pub.publish(String(data=json.dumps(info)))

    # ---- commands -----------------------------------------------------------------------------------
    def on_gripper(self, msg: Float64MultiArray) -> None:
        values, stamp = float_array(msg)
        if values.shape != (1,) or not np.isfinite(values[0]):
            self.counts["bad_commands"] += 1
            return
        self.width, self.width_stamp = float(values[0]), stamp
        self.try_step()

    def on_position(self, msg: Float64MultiArray) -> None:
        q, stamp = float_array(msg)
        if q.shape != (self.spec.dof,) or not np.all(np.isfinite(q)):
            self.counts["bad_commands"] += 1
            self.get_logger().warning(f"{self.pos_topic}: ignored a command of {q.size} values (expected "
                                      f"{self.spec.dof} finite joint positions)", throttle_duration_sec=5.0)
            return
        self.on_arm(q, stamp)

    def on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            q = trajectory_target(msg, list(self.spec.joint_names))
        except ValueError as e:
            self.counts["bad_commands"] += 1
            self.get_logger().warning(f"{self.traj_topic}: ignored: {e}", throttle_duration_sec=5.0)
            return
        self.on_arm(q, trajectory_stamp(msg))

    def on_arm(self, q: np.ndarray, stamp: int | None) -> None:
        self.latest_q = q
        if not self.p.lockstep or not self.running:
            return
        if stamp is not None and stamp != self.stamp:
            self.counts["stale_commands"] += 1  # answers a state we have moved on from
            return
        self.arm = (q, time.monotonic())
        self.try_step()

    def try_step(self) -> None:
        """Lockstep: step when the answering arm command is in, with its gripper command (or after a wait)."""
        if not (self.p.lockstep and self.running and self.arm is not None):
            return
        gripper_answered = self.width_stamp is None or self.width_stamp == self.stamp
        if not gripper_answered and time.monotonic() - self.arm[1] < GRIPPER_WAIT_S:
            return  # on_timer comes back
        self.step(self.arm[0])

    def step(self, q: np.ndarray | None) -> None:
        """One control period towards q (None: hold), then publish the new state or end the episode."""
        self.arm = None
        cmd = (Command(q=np.empty(0), gripper_width=float("nan"), reasons=["hold"], held=True, stamp=float("nan"))
               if q is None else Command(q=q, gripper_width=self.width, reasons=[], held=False, stamp=float("nan")))
        self.robot.command(cmd)
        self.ticks += 1
        done = self.robot.success if self.p.terminate_on_success else False
        if done or self.robot.elapsed_steps >= self.robot.max_episode_steps:
            self.end_episode()
        else:
            self.publish_state()

    # ---- the clock ----------------------------------------------------------------------------------
    def on_timer(self) -> None:
        if self.done_at is not None:
            self.finished = time.monotonic() - self.done_at > EXIT_DELAY_S
            return
        if not self.running:
            if self.starting is not None and time.monotonic() - self.starting > RESET_WAIT_S:
                self.get_logger().warning(f"{self.p.policy_reset_service} did not answer within {RESET_WAIT_S} s; "
                                          "starting the episode without it")
                self.start_episode()
            elif self.episode < 0 and self.p.autostart and self.starting is None and self.ready():
                self.request_episode()
            return
        if not self.p.lockstep:
            self.step(self.latest_q)
            return
        now = time.monotonic()
        if self.arm is not None:
            self.try_step()
        elif now - self.sent_at >= self.p.lockstep_timeout_s:
            self.counts["timeouts"] += 1
            self.get_logger().warning(f"no command answered the state of step {self.robot.elapsed_steps} within "
                                      f"{self.p.lockstep_timeout_s} s; holding position", throttle_duration_sec=5.0)
            self.step(None)
        elif now - self.published_at >= self.p.resend_s:
            self.counts["resends"] += 1
            self.published_at = now
            self._publish_sensors()  # the same stamp: an answer to either copy is the answer

    def ready(self) -> bool:
        """Lockstep: someone reads the joint states and someone commands (discovery has happened)."""
        if not self.p.lockstep:
            return True
        commanders = self.count_publishers(self.pos_topic) + self.count_publishers(self.traj_topic)
        service = self.reset_client is None or self.reset_client.service_is_ready()
        return self.js_pub.get_subscription_count() > 0 and commanders > 0 and service

    def close(self) -> None:
        self.robot.close()


def _policy_cameras(policy: str, cameras: list[str], size: tuple[int, int]) -> tuple[list[str], tuple[int, int]]:
    """The cameras a policy reads (added to `cameras`) and their image size."""
    from robolearn.eval.sim import policy_env_overrides
    from robolearn.policies import load_policy

    try:
        over = policy_env_overrides(load_policy(policy).features)
    except ConfigError as e:
        raise ParameterError(f"parameter 'policy': {e}") from None
    cams = list(dict.fromkeys(cameras + list(over["cameras"])))
    return cams, tuple(over.get("image_size", size))


def main(args: list[str] | None = None) -> None:
    raise SystemExit(spin_node(SimRobotNode, "sim_robot", args))


if __name__ == "__main__":
    main()
