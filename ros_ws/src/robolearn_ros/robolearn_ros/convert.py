"""Messages <-> numpy arrays (joint states, images, stamped float arrays, trajectories). No node logic here.

Stamps: every message a step produces carries the stamp of the robot state it belongs to, so that the
policy and the recorder can put a camera frame, the environment state and the answering command next to
the joint state they go with. Messages with a header carry it there; `std_msgs/Float64MultiArray` has none,
so the stamp goes into its layout's first dimension label (`"<name> stamp_ns=<int>"`), which
ros2_control's forward command controllers ignore (they read only `data`).
"""

from __future__ import annotations

import re

import numpy as np

_STAMP_RE = re.compile(r"stamp_ns=(-?\d+)")


# ---- time -------------------------------------------------------------------------------------------


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


# ---- joint states -----------------------------------------------------------------------------------


class JointStateCache:
    """Latest position and velocity of the joints we need, merged by name over `sensor_msgs/JointState`
    messages (drivers may publish the gripper in a message of its own, in any joint order)."""

    def __init__(self, joint_names: list[str] | tuple[str, ...], gripper_joint_names: list[str] | tuple[str, ...]):
        self.arm = list(joint_names)
        self.gripper = list(gripper_joint_names)
        names = self.arm + self.gripper
        self.index = {n: i for i, n in enumerate(names)}
        self.position = np.full(len(names), np.nan)
        self.velocity = np.zeros(len(names))
        self.seen = np.zeros(len(names), bool)
        self.stamp_ns = -1
        """stamp of the newest message that carried an arm joint"""

    def update(self, msg) -> bool:
        """Fold one JointState in; True when it carried an arm joint (a new arm state)."""
        arm_seen = False
        has_vel = len(msg.velocity) == len(msg.name)
        for k, name in enumerate(msg.name):
            i = self.index.get(name)
            if i is None or k >= len(msg.position):
                continue
            self.position[i] = msg.position[k]
            self.velocity[i] = msg.velocity[k] if has_vel else 0.0
            self.seen[i] = True
            arm_seen |= i < len(self.arm)
        if arm_seen:
            self.stamp_ns = stamp_ns(msg.header.stamp)
        return arm_seen

    @property
    def complete(self) -> bool:
        return bool(self.seen.all())

    def missing(self) -> list[str]:
        return [n for n, s in zip(self.arm + self.gripper, self.seen) if not s]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q (dof,), dq (dof,), fingers (n_gripper_joints,)), rad, rad/s, m."""
        n = len(self.arm)
        return self.position[:n].copy(), self.velocity[:n].copy(), self.position[n:].copy()


def fingers_from_joints(positions: np.ndarray, width_max: float, closed_position: float = 0.8) -> np.ndarray:
    """Gripper joint positions of a JointState -> RobotState.fingers (+width/2, -width/2), m, as the sim has them.

    Two joints (a Panda hand): each finger's opening, whatever its sign (franka_ros2 publishes both positive,
    the simulated Panda the second negative). One joint (a Robotiq 2F-85 knuckle): 0 open, `closed_position`
    closed, linear in between. None: closed."""
    p = np.abs(np.asarray(positions, np.float64).reshape(-1))
    if len(p) == 2:
        return np.array([p[0], -p[1]])
    if len(p) == 1:
        half = 0.5 * width_max * float(np.clip(1.0 - p[0] / closed_position, 0.0, 1.0))
        return np.array([half, -half])
    return np.zeros(2)


def joint_state_msg(names: list[str], position: np.ndarray, velocity: np.ndarray, stamp: int):
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = to_stamp(stamp)
    msg.name = list(names)
    msg.position = [float(x) for x in position]
    msg.velocity = [float(x) for x in velocity]
    return msg


# ---- images -----------------------------------------------------------------------------------------

_CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 RGB."""
    enc = msg.encoding.lower()
    if enc not in _CHANNELS:
        raise ValueError(f"image encoding {msg.encoding!r} is not supported; publish rgb8, bgr8, rgba8, bgra8 or "
                         "mono8")
    c = _CHANNELS[enc]
    h, w = int(msg.height), int(msg.width)
    try:
        buf = np.frombuffer(msg.data, np.uint8)  # bytes or array.array: no copy
    except TypeError:
        buf = np.asarray(msg.data, np.uint8)
    if int(msg.step) < w * c or len(buf) < h * int(msg.step):
        raise ValueError(f"image {w}x{h} {enc}: step {msg.step} and {len(buf)} bytes do not hold the image")
    img = buf[:h * int(msg.step)].reshape(h, int(msg.step))[:, :w * c].reshape(h, w, c)
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if enc.startswith("bgr"):
        img = img[..., 2::-1]
    return np.ascontiguousarray(img[..., :3])


def array_to_image(rgb: np.ndarray, stamp: int, frame_id: str = ""):
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    from sensor_msgs.msg import Image

    rgb = np.ascontiguousarray(rgb, np.uint8)
    msg = Image()
    msg.header.stamp = to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(rgb.shape[1]) * 3
    msg.data = rgb.tobytes()
    return msg


# ---- float arrays (commands, gripper, environment state) ---------------------------------------------


def float_array_msg(values, stamp: int | None = None, name: str = "data"):
    """std_msgs/Float64MultiArray with one dimension, labelled with `stamp` when given (module docstring)."""
    from std_msgs.msg import Float64MultiArray, MultiArrayDimension

    data = [float(x) for x in np.asarray(values, np.float64).reshape(-1)]
    msg = Float64MultiArray()
    label = name if stamp is None else f"{name} stamp_ns={int(stamp)}"
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(data), stride=len(data))]
    msg.data = data
    return msg


def float_array(msg) -> tuple[np.ndarray, int | None]:
    """(values, stamp or None) of a std_msgs/Float64MultiArray."""
    stamp = None
    if msg.layout.dim:
        m = _STAMP_RE.search(msg.layout.dim[0].label)
        stamp = int(m.group(1)) if m else None
    return np.asarray(msg.data, np.float64), stamp


# ---- joint trajectories -----------------------------------------------------------------------------


def trajectory_msg(joint_names: list[str], q: np.ndarray, time_from_start_s: float, stamp: int | None = None):
    """trajectory_msgs/JointTrajectory with one point reached `time_from_start_s` after it arrives. The header
    stamp stays zero (the joint trajectory controller starts it at once); the stamp of the state it answers,
    when given, goes into header.frame_id as `stamp_ns=<int>` (the controller ignores the frame of a joint
    trajectory), so the sim and the recorder match it to its state whatever order topics arrive in."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    ns = max(int(round(time_from_start_s * 1e9)), 1)
    point = JointTrajectoryPoint(positions=[float(x) for x in q],
                                 time_from_start=Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000))
    msg = JointTrajectory(joint_names=list(joint_names), points=[point])
    if stamp is not None:
        msg.header.frame_id = f"stamp_ns={int(stamp)}"
    return msg


def trajectory_stamp(msg) -> int | None:
    """The answered state's stamp a JointTrajectory carries in header.frame_id (None: not ours)."""
    m = _STAMP_RE.fullmatch(msg.header.frame_id)
    return int(m.group(1)) if m else None


def trajectory_target(msg, joint_names: list[str]) -> np.ndarray:
    """The last point's positions of a JointTrajectory, in `joint_names` order (ValueError when it lacks one)."""
    if not msg.points:
        raise ValueError("joint trajectory has no points")
    index = {n: i for i, n in enumerate(msg.joint_names)}
    missing = [n for n in joint_names if n not in index]
    if missing:
        raise ValueError(f"joint trajectory lacks joints {missing}")
    pos = msg.points[-1].positions
    return np.array([pos[index[n]] for n in joint_names], np.float64)
