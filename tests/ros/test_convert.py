"""Message conversions (robolearn_ros.convert) and parameter typing (robolearn_ros.common): no DDS."""

from __future__ import annotations

import numpy as np
import pytest
from robolearn_ros.common import Param, ParameterError
from robolearn_ros.convert import (
    JointStateCache,
    array_to_image,
    fingers_from_joints,
    float_array,
    float_array_msg,
    image_to_array,
    joint_state_msg,
    stamp_ns,
    to_stamp,
    trajectory_msg,
    trajectory_stamp,
    trajectory_target,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

pytestmark = pytest.mark.ros


def test_stamps_round_trip():
    for ns in (0, 1, 1_999_999_999, 1_795_284_501_682_919_142):
        assert stamp_ns(to_stamp(ns)) == ns


def test_images_in_every_encoding():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    msg = array_to_image(rgb, 123, "front")
    assert (msg.encoding, msg.height, msg.width, msg.step, stamp_ns(msg.header.stamp)) == ("rgb8", 6, 4, 12, 123)
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    bgra = np.concatenate([rgb[..., ::-1], np.full((6, 4, 1), 255, np.uint8)], axis=2)
    padded = np.zeros((6, 20), np.uint8)  # rows padded past width * channels
    padded[:, :16] = bgra.reshape(6, 16)
    msg.encoding, msg.step, msg.data = "bgra8", 20, padded.tobytes()
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    msg.encoding, msg.step, msg.data = "mono8", 4, rgb[..., 0].tobytes()
    np.testing.assert_array_equal(image_to_array(msg), np.repeat(rgb[..., :1], 3, axis=2))
    msg.encoding = "16UC1"
    with pytest.raises(ValueError, match="encoding '16UC1' is not supported"):
        image_to_array(msg)
    msg.encoding, msg.data = "rgb8", b"\0" * 5
    with pytest.raises(ValueError, match="do not hold the image"):
        image_to_array(msg)


def test_stamped_float_arrays():
    values, stamp = float_array(float_array_msg([1.0, 2.5], 77, "positions"))
    assert values.tolist() == [1.0, 2.5] and stamp == 77
    values, stamp = float_array(float_array_msg([3], None))
    assert values.tolist() == [3.0] and stamp is None
    assert float_array(Float64MultiArray(data=[1.0]))[1] is None  # a plain message from any other publisher


def test_joint_states_merge_by_name():
    cache = JointStateCache(["j1", "j2"], ["f1", "f2"])
    assert not cache.complete and cache.missing() == ["j1", "j2", "f1", "f2"]
    gripper = JointState(name=["f2", "f1"], position=[0.03, 0.01])
    assert not cache.update(gripper)  # no arm joint: not a new arm state
    arm = joint_state_msg(["other", "j2", "j1"], np.array([9.0, 0.2, 0.1]), np.array([0.0, 2.0, 1.0]), 5)
    assert cache.update(arm) and cache.complete and cache.stamp_ns == 5
    q, dq, fingers = cache.arrays()
    assert q.tolist() == [0.1, 0.2] and dq.tolist() == [1.0, 2.0] and fingers.tolist() == [0.01, 0.03]
    cache.update(JointState(name=["j1"], position=[0.5]))  # no velocities: zero
    assert cache.arrays()[0].tolist() == [0.5, 0.2] and cache.arrays()[1].tolist() == [0.0, 2.0]


def test_fingers_as_the_sim_reports_them():
    # the simulated Panda (second finger negative) and franka_ros2 (both positive) give the same fingers
    for joints in ([0.03, -0.03], [0.03, 0.03]):
        assert fingers_from_joints(np.array(joints), 0.08).tolist() == [0.03, -0.03]
    # a Robotiq knuckle: 0 open, 0.8 closed
    assert fingers_from_joints(np.array([0.0]), 0.085).tolist() == [0.0425, -0.0425]
    assert fingers_from_joints(np.array([0.8]), 0.085).tolist() == [0.0, -0.0]
    assert fingers_from_joints(np.array([0.4]), 0.08, 0.8) == pytest.approx([0.02, -0.02])


def test_trajectories():
    msg = trajectory_msg(["a", "b"], np.array([0.1, 0.2]), 0.05)
    assert msg.points[0].time_from_start.nanosec == 50_000_000 and msg.header.stamp.sec == 0
    msg.joint_names = ["b", "a"]  # any joint order
    assert trajectory_target(msg, ["b", "a"]).tolist() == [0.1, 0.2]
    with pytest.raises(ValueError, match=r"lacks joints \['c'\]"):
        trajectory_target(msg, ["a", "c"])
    assert trajectory_stamp(msg) is None  # no stamp given: not matched to a state
    stamped = trajectory_msg(["a", "b"], np.array([0.1, 0.2]), 0.05, stamp=1_234_567_890_123)
    assert trajectory_stamp(stamped) == 1_234_567_890_123 and stamped.header.stamp.sec == 0


def test_parameter_typing():
    assert Param(0.0, "").coerce("rate_hz", 20) == 20.0  # a YAML int for a float parameter
    assert Param(0, "").coerce("fps", 20) == 20
    assert Param("", "").coerce("checkpoint", 123) == "123"  # a directory named by a number
    assert Param([], "", str).coerce("cameras", None) == []  # rcl reads [] as not set
    assert Param([], "", str).coerce("cameras", "front, wrist") == ["front", "wrist"]  # from a launch file
    assert Param([], "", str).coerce("cameras", "") == []
    assert Param([84, 84], "").coerce("image_size", [32, 32]) == [32, 32]
    assert Param([], "", float).coerce("workspace_lo", [0, 1, 2]) == [0.0, 1.0, 2.0]
    with pytest.raises(ParameterError, match="parameter 'lockstep' must be true or false, got 'yes'"):
        Param(True, "").coerce("lockstep", "yes")
    with pytest.raises(ParameterError, match="parameter 'fps' must be an integer, got 2.5"):
        Param(0, "").coerce("fps", 2.5)
    with pytest.raises(ParameterError, match=r"parameter 'image_size\[1\]' must be an integer"):
        Param([84, 84], "").coerce("image_size", [84, "x"])
