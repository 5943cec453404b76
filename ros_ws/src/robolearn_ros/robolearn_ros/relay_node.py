"""relay_node: joint states in, the same positions out as a position command. No policy, no safety filter.

The floor of the deployment benchmark: what one rclpy hop (subscription callback -> publish) costs, to
compare policy_node's loop against. Each command carries the stamp of the joint state it answers (see
robolearn_ros.convert), so the sender can time the round trip.

    ros2 run robolearn_ros relay_node --ros-args -p robot:=panda
"""

from __future__ import annotations

from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from robolearn.hardware import load_robot
from robolearn_ros.common import EXECUTORS, Param, ParameterError, declare_parameters, reliable_qos, spin_node
from robolearn_ros.convert import JointStateCache, float_array_msg

PARAMETERS = {
    "robot": Param("panda", "robot name (hardware/robots/<name>.yaml) or path to a hardware YAML file"),
    "joint_state_topic": Param("", "sensor_msgs/JointState in; empty: the hardware file's joint_state_topic"),
    "command_topic": Param("", "std_msgs/Float64MultiArray out; empty: the hardware file's position_command_topic"),
    "executor": Param("events", "rclpy executor: events (rclpy.experimental.EventsExecutor) or single "
                                "(SingleThreadedExecutor); the same as policy_node's for a fair floor"),
}


class RelayNode(Node):
    def __init__(self):
        super().__init__("relay")
        p = declare_parameters(self, PARAMETERS)
        if p.executor not in EXECUTORS:
            raise ParameterError(f"parameter 'executor' must be one of {', '.join(EXECUTORS)}, got {p.executor!r}")
        self.executor_kind = p.executor
        spec = load_robot(p.robot)
        self.cache = JointStateCache(spec.joint_names, ())
        state_topic = p.joint_state_topic or spec.topics["joint_state_topic"]
        command_topic = p.command_topic or spec.topics["position_command_topic"]
        self.pub = self.create_publisher(Float64MultiArray, command_topic, reliable_qos())
        self.create_subscription(JointState, state_topic, self.on_state, reliable_qos())
        self.get_logger().info(f"relaying {state_topic} -> {command_topic}")

    def on_state(self, msg: JointState) -> None:
        if self.cache.update(msg) and self.cache.complete:
            q, _, _ = self.cache.arrays()
            self.pub.publish(float_array_msg(q, self.cache.stamp_ns, "positions"))


def main(args: list[str] | None = None) -> None:
    raise SystemExit(spin_node(RelayNode, "relay", args))


if __name__ == "__main__":
    main()
