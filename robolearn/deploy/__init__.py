"""ROS-free deployment runtime: the `Robot` interface, arm kinematics, the safety filter and the
fixed-rate control loop. The ROS 2 nodes in ros_ws/ are thin adapters over these (robolearn never
imports rclpy).

    loop = ControlLoop(ControlConfig(policy="runs/bc/lift_mlp", robot="panda"))
    loop.enable()
    stats = loop.run(SimRobot("lift"), duration_s=10)
"""

from robolearn.deploy.kinematics import ArmKinematics
from robolearn.deploy.loop import ControlConfig, ControlLoop
from robolearn.deploy.robot import (
    Command,
    Robot,
    RobotState,
    StateError,
    action_from_width,
    check_state,
    width_from_action,
)
from robolearn.deploy.safety import SafetyConfig, SafetyFilter
from robolearn.deploy.sim_robot import SimRobot

__all__ = ["ArmKinematics", "Command", "ControlConfig", "ControlLoop", "Robot", "RobotState", "SafetyConfig",
           "SafetyFilter", "SimRobot", "StateError", "action_from_width", "check_state", "width_from_action"]
