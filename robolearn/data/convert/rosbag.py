"""`robolearn convert rosbag`: a rosbag2 recording -> a LeRobot v3 dataset, every topic on one clock.

A mapping YAML (`hardware/rosbag/<robot>.yaml`) says which topic becomes which feature:

    robot: panda                  # hardware/robots/<robot>.yaml: joint names and their order
    fps: 20                       # output frame rate (default: the robot's control.rate_hz)
    task: pick up the cube        # task string of every episode
    topics:                       # topic -> feature; see `load_mapping` for the defaults when omitted
      /joint_states: {feature: observation.state, fields: [position, velocity]}
      /camera/front/image_raw: {feature: observation.images.front, resize: [240, 320]}
      /forward_position_controller/commands: {feature: action}
    episode_split: null           # a std_msgs Bool (or integer) topic: true starts an episode, false ends it

Message types, one `_Source` class each (a new type is a new class with `@_register`):
  sensor_msgs/msg/JointState            float32 (F*J,): the `fields` (position, velocity, effort) of
                                        the `joints` (default: arm + gripper), field-major, by name
  std_msgs/msg/Float64MultiArray        float32 (J,): one value per joint of `joints` (default: arm)
  trajectory_msgs/msg/JointTrajectory   float32 (J,): the first point's positions, by joint name
  sensor_msgs/msg/Image                 video (H, W, 3) RGB: rgb8, bgr8, rgba8, bgra8, mono8
  sensor_msgs/msg/CompressedImage       video (H, W, 3) RGB: jpeg or png
`joints` is `all` (arm + gripper), `arm`, `gripper` or a list of joint names; camera features are
`observation.images.<name>` with even H and W (or a `resize: [H, W]`).

Resampling is a zero-order hold: ticks t0 + k/fps, from t0 = the first time every mapped topic has
delivered a message up to the last message; at each tick a feature takes the latest message at or
before it. With episode_split, an episode starts at its true message (or once every topic has
spoken) and may hold messages from before it. A message's time is its header stamp
(`time_source=header`; messages without a header, or with a zero stamp, use the receive time) or the
time the recorder received it (`time_source=receive`). The age of the held message is the feature's
staleness: each episode's info keeps its maximum, and a hold longer than `stale_periods` periods
logs a warning (a dropout or a dead topic).

Two passes over the bag keep memory at one episode's output: the first decodes every numeric message
and only the times of camera messages; the second decodes, episode by episode, just the camera
messages that some tick holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import yaml

from robolearn.data import DatasetError, DatasetWriter, EpisodeRecord, Feature, VideoOptions
from robolearn.data.format import DEFAULT_FEATURES
from robolearn.errors import RobolearnError, did_you_mean
from robolearn.hardware import HARDWARE_DIR, RobotSpec, load_robot

NS = 1_000_000_000
REPO_ROOT = HARDWARE_DIR.parent
MAPPING_KEYS = ("robot", "fps", "task", "topics", "episode_split")
ENTRY_KEYS = ("feature", "fields", "joints", "resize")
JOINT_FIELDS = ("position", "velocity", "effort")
CAMERA_PREFIX = "observation.images."
log = logging.getLogger(__name__)
SPLIT_TYPES = tuple(f"std_msgs/msg/{t}" for t in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16",
                                                   "UInt32", "UInt64"))


@dataclass
class RosbagConvertConfig:
    """What `robolearn convert rosbag` converts, and how."""

    bag: str = ""
    """rosbag2 directory, the one holding metadata.yaml (MCAP or sqlite3 storage)"""
    out: str = ""
    """output dataset directory (must not exist, or be empty)"""
    config: str = "hardware/rosbag/panda.yaml"
    """topic mapping YAML: which topic becomes which feature (a relative path also resolves from the repo root)"""
    time_source: Literal["header", "receive"] = "header"
    """message time: header stamp (receive time when a message has none, or a zero one), or receive time"""
    fps: int | None = None
    """output frame rate; None takes the mapping's"""
    task: str | None = None
    """task string of the episodes; None takes the mapping's"""
    stale_periods: float = 3.0
    """warn when a feature holds a message older than this many periods (its topic's, or 1/fps if longer)"""
    video: VideoOptions = field(default_factory=VideoOptions)
    """how camera streams are encoded"""


# ---- the mapping file ----------------------------------------------------------------------------
@dataclass
class TopicMap:
    """One `topics:` entry of the mapping file, joints resolved against the robot."""

    topic: str
    feature: str
    fields: tuple[str, ...] | None = None  # JointState only: which arrays, in this order
    joints: tuple[str, ...] | None = None  # None: the message type's default
    resize: tuple[int, int] | None = None  # cameras only: (H, W)


@dataclass
class Mapping:
    """A parsed mapping file."""

    path: Path
    robot: RobotSpec
    fps: int
    task: str
    topics: list[TopicMap]
    episode_split: str | None


def mapping_path(config: str | Path) -> Path:
    """The mapping file: `config` as given, else relative to the repository root."""
    if not str(config):
        raise DatasetError("no topic mapping given; pass config=<mapping YAML> (see hardware/rosbag/panda.yaml)")
    p = Path(config)
    if not p.is_file() and not p.is_absolute() and (REPO_ROOT / p).is_file():
        p = REPO_ROOT / p
    if not p.is_file():
        raise DatasetError(f"topic mapping {config} does not exist; pass config=<mapping YAML> "
                           "(hardware/rosbag/panda.yaml is an example)")
    return p


def _joint_set(spec: Any, robot: RobotSpec, where: str) -> tuple[str, ...]:
    every = robot.joint_names + robot.gripper_joint_names
    named = {"all": every, "arm": robot.joint_names, "gripper": robot.gripper_joint_names}
    if isinstance(spec, str) and spec in named:
        return named[spec]
    if isinstance(spec, list) and spec and all(isinstance(j, str) for j in spec):
        unknown = [j for j in spec if j not in every]
        if unknown:
            raise DatasetError(f"{where}: joints {unknown} are not joints of robot {robot.name!r} ({robot.path}: "
                               f"{', '.join(every)}).{did_you_mean(unknown[0], every)}")
        if len(set(spec)) != len(spec):
            raise DatasetError(f"{where}: joints {spec} lists a joint twice")
        return tuple(spec)
    raise DatasetError(f"{where}: joints must be all, arm, gripper or a list of joint names; got {spec!r}")


def _entry(topic: str, raw: Any, robot: RobotSpec, path: Path) -> TopicMap:
    where = f"{path}: topics.{topic}"
    if isinstance(raw, str):
        raw = {"feature": raw}
    if not isinstance(raw, dict):
        raise DatasetError(f"{where} must be a feature name or a mapping like {{feature: observation.state}}; "
                           f"got {raw!r}")
    for key in raw:
        if key not in ENTRY_KEYS:
            raise DatasetError(f"{where}: unknown key {key!r}; an entry has {', '.join(ENTRY_KEYS)}."
                               + did_you_mean(str(key), ENTRY_KEYS))
    feature = raw.get("feature")
    if not isinstance(feature, str) or not feature or "/" in feature or feature in DEFAULT_FEATURES:
        raise DatasetError(f"{where}: 'feature' must be a feature name such as observation.state, action or "
                           f"observation.images.front (no '/', none of {', '.join(DEFAULT_FEATURES)}); "
                           f"got {feature!r}")
    fields = raw.get("fields")
    if fields is not None:
        if isinstance(fields, str):
            fields = [fields]
        if not isinstance(fields, list) or not fields or any(f not in JOINT_FIELDS for f in fields) \
                or len(set(fields)) != len(fields):
            raise DatasetError(f"{where}: fields must be a list drawn from {list(JOINT_FIELDS)} without repeats; "
                               f"got {raw['fields']!r}")
        fields = tuple(fields)
    joints = _joint_set(raw["joints"], robot, f"{where}.joints") if "joints" in raw else None
    resize = raw.get("resize")
    if resize is not None:
        ok = isinstance(resize, list) and len(resize) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 and v % 2 == 0 for v in resize)
        if not ok:
            raise DatasetError(f"{where}: resize must be [height, width], two even positive ints; got {resize!r}")
        resize = (resize[0], resize[1])
    return TopicMap(topic, feature, fields, joints, resize)


def _camera_name(topic: str) -> str:
    """`/camera/front/image_raw` -> `front`: the last namespace that is not a driver's image suffix."""
    generic = {"camera", "image", "image_raw", "image_rect", "image_rect_raw", "image_color", "image_rect_color",
               "compressed", "color", "rgb"}
    parts = [p for p in topic.split("/") if p and p not in generic]
    return parts[-1] if parts else "camera"


def _default_topics(robot: RobotSpec, bag_types: dict[str, str], path: Path) -> list[TopicMap]:
    """No `topics:` in the mapping: the robot file's joint-state and command topics, and every camera."""
    out = []
    state = robot.topics.get("joint_state_topic")
    if state in bag_types:
        out.append(TopicMap(state, "observation.state"))
    for key in ("position_command_topic", "trajectory_command_topic"):
        if robot.topics.get(key) in bag_types:
            out.append(TopicMap(robot.topics[key], "action"))
            break
    seen: dict[str, str] = {}
    for topic, msgtype in sorted(bag_types.items()):
        if msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
            feature = CAMERA_PREFIX + _camera_name(topic)
            if feature in seen:
                raise DatasetError(f"{path}: no 'topics' given, and cameras {seen[feature]} and {topic} would both "
                                   f"become {feature}; list the topics to convert under 'topics:'")
            seen[feature] = topic
            out.append(TopicMap(topic, feature))
    if not out:
        raise DatasetError(f"{path}: no 'topics' given, and the bag has none of robot {robot.name}'s control topics "
                           f"({', '.join(sorted(robot.topics.values()))}) and no camera; list the topics to convert "
                           f"under 'topics:'. The bag has: {', '.join(sorted(bag_types))}")
    return out


def load_mapping(config: str | Path, bag_types: dict[str, str], fps: int | None = None,
                 task: str | None = None) -> Mapping:
    """Parse and check a mapping file. `bag_types` ({topic: message type}) fills in the defaults when the
    file has no `topics:` (the robot's joint-state topic -> observation.state, its position or trajectory
    command topic -> action, every Image/CompressedImage topic -> observation.images.<name>).
    `fps`/`task`, when given, override the file's."""
    path = mapping_path(config)
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DatasetError(f"topic mapping {path} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"topic mapping {path} must be a YAML mapping with {', '.join(MAPPING_KEYS)}; "
                           f"got {type(raw).__name__}. See hardware/rosbag/panda.yaml")
    for key in raw:
        if key not in MAPPING_KEYS:
            raise DatasetError(f"{path}: unknown key {key!r}; a topic mapping has {', '.join(MAPPING_KEYS)}."
                               + did_you_mean(str(key), MAPPING_KEYS))
    if not isinstance(raw.get("robot"), str):
        raise DatasetError(f"{path}: 'robot' must name a robot (hardware/robots/<robot>.yaml) or a robot YAML "
                           f"path; got {raw.get('robot')!r}")
    robot_file = raw["robot"]
    if robot_file.endswith((".yaml", ".yml")) and not Path(robot_file).is_absolute():
        robot_file = str(path.parent / robot_file)
    try:
        robot = load_robot(robot_file)
    except RobolearnError as e:
        raise DatasetError(f"{path}: robot: {e}") from None

    if fps is None:
        fps = raw.get("fps", robot.control_rate_hz)
    if isinstance(fps, float) and fps.is_integer():
        fps = int(fps)
    if not isinstance(fps, int) or isinstance(fps, bool) or fps <= 0:
        raise DatasetError(f"{path}: fps (or the fps= option) must be a positive whole number, the dataset's "
                           f"frame rate; got {fps!r}")
    task = raw.get("task") if task is None else task
    if not isinstance(task, str) or not task.strip():
        raise DatasetError(f"{path}: 'task' must be the task string of the episodes, e.g. \"pick up the cube\" "
                           f"(or pass task=...); got {task!r}")

    topics_raw = raw.get("topics")
    if topics_raw is None:
        topics = _default_topics(robot, bag_types, path)
    elif isinstance(topics_raw, dict) and topics_raw:
        topics = [_entry(str(t), v, robot, path) for t, v in topics_raw.items()]
    else:
        raise DatasetError(f"{path}: 'topics' must map topic names to features, e.g. "
                           f"{{/joint_states: {{feature: observation.state}}}}; got {topics_raw!r}")
    by_feature: dict[str, str] = {}
    for tm in topics:
        if tm.feature in by_feature:
            raise DatasetError(f"{path}: topics {by_feature[tm.feature]} and {tm.topic} both map to feature "
                               f"{tm.feature!r}; give each its own feature")
        by_feature[tm.feature] = tm.topic
    split = raw.get("episode_split")
    if split is not None and not (isinstance(split, str) and split.startswith("/")):
        raise DatasetError(f"{path}: episode_split must be null or a topic name such as /recording; got {split!r}")
    return Mapping(path, robot, int(fps), task, topics, split)


# ---- message types -------------------------------------------------------------------------------
SOURCES: dict[str, type[_Source]] = {}


def _at(i: int, t_s: float) -> str:
    return f"message {i} ({t_s:.3f}s into the bag)"


def _register(cls: type[_Source]) -> type[_Source]:
    for t in cls.msgtypes:
        SOURCES[t] = cls
    return cls


class _Source:
    """How messages of one type become one feature's per-frame value."""

    msgtypes: ClassVar[tuple[str, ...]]
    is_video: ClassVar[bool] = False
    default_joints: ClassVar[str] = "arm"
    keys: ClassVar[tuple[str, ...]] = ("feature", "joints")  # entry keys that mean something here
    skip_reason: ClassVar[str] = ""  # which messages `decode` returns None for, and why

    def __init__(self, tm: TopicMap, robot: RobotSpec, msgtype: str, mapping: Path):
        self.tm, self.topic, self.robot, self.msgtype, self.mapping = tm, tm.topic, robot, msgtype, mapping
        self.where = f"topic {tm.topic} ({msgtype})"
        for key, value in (("fields", tm.fields), ("joints", tm.joints), ("resize", tm.resize)):
            if value is not None and key not in self.keys:
                raise DatasetError(f"{mapping}: topics.{tm.topic}: {key!r} does not apply to {msgtype}; "
                                   f"remove it (this type takes {', '.join(self.keys)})")
        if tm.feature.startswith(CAMERA_PREFIX) != self.is_video:
            need = ("a camera feature, observation.images.<name>" if self.is_video
                    else "a numeric feature (observation.images.* is for Image and CompressedImage topics)")
            raise DatasetError(f"{mapping}: topics.{tm.topic}: a {msgtype} becomes {need}, not {tm.feature!r}")
        self.joints = tm.joints or _joint_set(self.default_joints, robot, "")

    def names(self) -> list[str]:
        """Per-dimension names of the numeric feature."""
        return [f"{j}.position" for j in self.joints]

    def decode(self, msg: Any, i: int, t_s: float) -> np.ndarray | None:
        """One message -> (D,) float64, or (H, W, 3) uint8 RGB for cameras, or None for a message that
        carries no value (skipped: the previous one stays held). `i`: the message's place in its topic,
        `t_s`: its time into the bag, both for error messages."""
        raise NotImplementedError

    def _by_name(self, names: list[str], values: Any, i: int, t_s: float, what: str) -> np.ndarray:
        pos = {n: k for k, n in enumerate(names)}
        missing = [j for j in self.joints if j not in pos]
        if missing:
            raise DatasetError(
                f"{self.where}: {_at(i, t_s)} has no joint {', '.join(missing)}; it names "
                f"{names}, and {self.robot.path} lists {'it' if len(missing) == 1 else 'them'}. If the bag records "
                f"only some joints, set joints: (arm, gripper or a list) in the topics.{self.topic} entry of "
                f"{self.mapping}")
        values = np.asarray(values, np.float64)
        if len(values) != len(names):
            raise DatasetError(f"{self.where}: {_at(i, t_s)} has {len(values)} {what} values for "
                               f"{len(names)} joint names; the publisher sends a malformed message")
        return values[[pos[j] for j in self.joints]]

    def check_finite(self, value: np.ndarray, i: int, t_s: float) -> None:
        if not np.isfinite(value).all():
            bad = self.names()[int(np.flatnonzero(~np.isfinite(value))[0])]
            raise DatasetError(f"{self.where}: {_at(i, t_s)} has NaN or inf in {bad}; drop that "
                               f"part of the bag or fix the publisher (a joint without that reading can be left "
                               f"out with joints: or fields: in {self.mapping})")


@_register
class _JointStateSource(_Source):
    msgtypes = ("sensor_msgs/msg/JointState",)
    default_joints = "all"
    keys = ("feature", "fields", "joints")

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.fields = self.tm.fields or ("position",)

    def names(self) -> list[str]:
        return [f"{j}.{f}" for f in self.fields for j in self.joints]

    def decode(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        names = list(msg.name)
        parts = []
        for f in self.fields:
            values = getattr(msg, f)
            if len(values) == 0 and len(names):
                raise DatasetError(f"{self.where}: {_at(i, t_s)} carries no {f} values; remove {f!r} "
                                   f"from fields: in the topics.{self.topic} entry of {self.mapping}")
            parts.append(self._by_name(names, values, i, t_s, f))
        value = np.concatenate(parts)
        self.check_finite(value, i, t_s)
        return value


@_register
class _ArraySource(_Source):
    msgtypes = ("std_msgs/msg/Float64MultiArray", "std_msgs/msg/Float32MultiArray")

    def decode(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        value = np.asarray(msg.data, np.float64)
        if value.shape != (len(self.joints),):
            raise DatasetError(
                f"{self.where}: {_at(i, t_s)} has {value.size} values, but the feature expects one per "
                f"joint of {list(self.joints)}; set joints: (all, arm, gripper or the list in the controller's "
                f"order) in the topics.{self.topic} entry of {self.mapping}")
        self.check_finite(value, i, t_s)
        return value


@_register
class _TrajectorySource(_Source):
    msgtypes = ("trajectory_msgs/msg/JointTrajectory",)

    skip_reason = "trajectories without points, which stop the controller"

    def decode(self, msg: Any, i: int, t_s: float) -> np.ndarray | None:
        if not msg.points:
            return None
        if len(msg.points[0].positions) == 0:
            raise DatasetError(f"{self.where}: {_at(i, t_s)} has a first point without positions; "
                               "only position trajectories become an action")
        value = self._by_name(list(msg.joint_names), msg.points[0].positions, i, t_s, "position")
        self.check_finite(value, i, t_s)
        return value


class _CameraSource(_Source):
    is_video = True
    keys = ("feature", "resize")

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.shape: tuple[int, int] | None = self.tm.resize

    def names(self) -> list[str]:
        return ["height", "width", "channels"]

    def to_rgb(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        raise NotImplementedError

    def decode(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        import cv2

        img = self.to_rgb(msg, i, t_s)
        h, w = img.shape[:2]
        if self.tm.resize is not None:
            if (h, w) != self.tm.resize:
                img = cv2.resize(img, self.tm.resize[::-1], interpolation=cv2.INTER_AREA)
            return img
        if self.shape is None:
            if h % 2 or w % 2:
                raise DatasetError(
                    f"{self.where}: images are {h}x{w} (height x width); video needs an even height and width. "
                    f"Add resize: [{h + h % 2}, {w + w % 2}] to the topics.{self.topic} entry of {self.mapping}")
            self.shape = (h, w)
        elif (h, w) != self.shape:
            raise DatasetError(
                f"{self.where}: {_at(i, t_s)} is {h}x{w}, earlier ones {self.shape[0]}x{self.shape[1]}; "
                f"a camera feature has one size. Add resize: [H, W] to the topics.{self.topic} entry of "
                f"{self.mapping}")
        return img


@_register
class _ImageSource(_CameraSource):
    msgtypes = ("sensor_msgs/msg/Image",)
    # encoding -> (channels, cv2 conversion to RGB or None)
    ENCODINGS: ClassVar[dict[str, tuple[int, str | None]]] = {
        "rgb8": (3, None), "bgr8": (3, "COLOR_BGR2RGB"), "rgba8": (4, "COLOR_RGBA2RGB"),
        "bgra8": (4, "COLOR_BGRA2RGB"), "mono8": (1, "COLOR_GRAY2RGB"),
    }

    def to_rgb(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        import cv2

        enc = msg.encoding.lower()
        if enc not in self.ENCODINGS:
            raise DatasetError(f"{self.where}: image encoding {msg.encoding!r} of {_at(i, t_s)} is not supported; "
                               f"supported: {', '.join(self.ENCODINGS)}. Record the camera in one of those (or as "
                               "a jpeg/png CompressedImage) or convert the topic first")
        c, conversion = self.ENCODINGS[enc]
        h, w, step = int(msg.height), int(msg.width), int(msg.step)
        data = np.asarray(msg.data, np.uint8)
        if h == 0 or w == 0 or step < w * c or data.size < h * step:
            raise DatasetError(f"{self.where}: {_at(i, t_s)} is malformed: {h}x{w} {enc} with step "
                               f"{step} needs {h * max(step, w * c)} bytes, it has {data.size}")
        img = data[:h * step].reshape(h, step)[:, :w * c].reshape(h, w, c)
        if conversion is None:
            return np.ascontiguousarray(img)
        return cv2.cvtColor(img[..., 0] if c == 1 else img, getattr(cv2, conversion))


@_register
class _CompressedImageSource(_CameraSource):
    msgtypes = ("sensor_msgs/msg/CompressedImage",)

    def to_rgb(self, msg: Any, i: int, t_s: float) -> np.ndarray:
        import cv2

        fmt = str(msg.format).lower()
        if "compresseddepth" in fmt:
            raise DatasetError(f"{self.where}: format {msg.format!r} is a depth image; only colour images (jpeg, "
                               "png) become camera features")
        bgr = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise DatasetError(f"{self.where}: {_at(i, t_s)} (format {msg.format!r}) is not a decodable jpeg or "
                               "png image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # image_transport compresses bgr8, imdecode returns BGR


# ---- reading the bag -----------------------------------------------------------------------------
@dataclass
class _Track:
    """Messages of one mapped topic, in time order after `finish`."""

    topic: str
    source: _Source | None  # None: the episode_split topic
    connections: list
    typestore: Any
    times: Any = field(default_factory=list)  # ns, the message time used for resampling
    recv: Any = field(default_factory=list)  # ns, receive time (to find camera messages again)
    dup: Any = field(default_factory=list)  # earlier messages of the topic with the same receive time
    values: Any = field(default_factory=list)  # numeric sources and the split topic; nothing for cameras
    ordinal: Any = field(default_factory=list)  # place of the message in its topic (for error messages)
    count: int = 0  # messages read, kept or not
    skipped: int = 0  # messages the source had no value for
    period_s: float = 0.0

    def finish(self) -> None:
        order = np.argsort(np.asarray(self.times, np.int64), kind="stable")  # header stamps need not be sorted
        self.times = np.asarray(self.times, np.int64)[order]
        self.recv = np.asarray(self.recv, np.int64)[order]
        self.dup = np.asarray(self.dup, np.int64)[order]
        self.ordinal = np.asarray(self.ordinal, np.int64)[order]
        if self.values:
            self.values = np.stack(self.values)[order]
        gaps = np.diff(self.times)
        self.period_s = float(np.median(gaps[gaps > 0])) / NS if (gaps > 0).any() else 0.0


def _open_bag(bag: str) -> tuple[Any, str]:
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    if not bag:
        raise DatasetError("no bag given; pass bag=<rosbag2 directory> (the folder holding metadata.yaml)")
    path = Path(bag)
    if not path.exists():
        raise DatasetError(f"bag {path} does not exist; pass bag=<rosbag2 directory> (the folder holding "
                           "metadata.yaml)")
    if not path.is_dir() or not (path / "metadata.yaml").is_file():
        hint = (f" (it sits inside one: pass bag={path.parent})" if (path.parent / "metadata.yaml").is_file()
                else "; ROS 1 .bag files need `rosbags-convert` to rosbag2 first")
        raise DatasetError(f"{path} is not a rosbag2 recording: a rosbag2 bag is a directory with a metadata.yaml"
                           + hint)
    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        storage = str(info["storage_identifier"])
    except (yaml.YAMLError, TypeError, KeyError) as e:
        raise DatasetError(f"{path / 'metadata.yaml'} is not rosbag2 metadata ({type(e).__name__}: {e}); the bag "
                           "is damaged (`ros2 bag reindex` rebuilds it)") from None
    reader = Reader(path)
    try:
        reader.open()
    except ReaderError as e:
        raise DatasetError(f"bag {path} cannot be read: {e}") from None
    return reader, storage


def _typestore(connection: Any, fallback: Any) -> Any:
    """The bag's own message definitions when it carries them, else the ROS 2 distribution's."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

    md = connection.msgdef
    try:
        if md.format == MessageDefinitionFormat.MSG:
            types = get_types_from_msg(md.data, connection.msgtype)
        elif md.format == MessageDefinitionFormat.IDL:  # one IDL, or several under "IDL: <type>" separators
            sep = "=" * 80 + "\n"
            parts = ([p.split("\n", 1)[1] for p in md.data.split(sep)[1:]] if md.data.startswith(sep + "IDL: ")
                     else [md.data])
            types = {}
            for part in parts:
                types.update(get_types_from_idl(part))
        else:
            return fallback
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        return store
    except Exception:  # a definition rosbags cannot parse: the distribution's types may still read the data
        return fallback


def _distro_store(ros_distro: str | None) -> Any:
    from rosbags.typesys import Stores, get_typestore

    store = getattr(Stores, f"ROS2_{(ros_distro or '').upper()}", Stores.ROS2_KILTED)
    return get_typestore(store)


def _header_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None:
        return None
    ns = int(stamp.sec) * NS + int(stamp.nanosec)
    return ns or None  # a zero stamp means "not set" (e.g. JointTrajectory's "start now")


def _read(reader: Any, tracks: dict[str, _Track], time_source: str, bag_t0: int) -> None:
    """Pass 1: every message of the mapped topics; numeric values decoded, cameras kept as times only."""
    from rosbags.rosbag2.errors import ReaderError
    from tqdm import tqdm

    conns = [c for tr in tracks.values() for c in tr.connections]
    last_recv: dict[str, tuple[int, int]] = {}
    try:
        for conn, recv, raw in tqdm(reader.messages(connections=conns), total=sum(c.msgcount for c in conns),
                                    desc="read bag", unit="msg", leave=False):
            tr = tracks[conn.topic]
            i, tr.count = tr.count, tr.count + 1
            try:
                msg = tr.typestore.deserialize_cdr(raw, conn.msgtype)
            except Exception as e:
                raise DatasetError(f"topic {conn.topic}: message {i} cannot be read as {conn.msgtype} "
                                   f"({type(e).__name__}: {e}); the bag's type definition does not match its data"
                                   ) from None
            t = recv if time_source == "receive" else (_header_ns(msg) or recv)
            prev = last_recv.get(conn.topic)
            dup = prev[1] + 1 if prev is not None and prev[0] == recv else 0
            last_recv[conn.topic] = (recv, dup)
            if tr.source is None:
                if not isinstance(msg.data, bool | int | np.integer | np.bool_):
                    raise DatasetError(f"episode_split topic {conn.topic}: {conn.msgtype} has no boolean or integer "
                                       "'data' field")
                tr.values.append(bool(msg.data))
            elif not tr.source.is_video:
                value = tr.source.decode(msg, i, (t - bag_t0) / NS)
                if value is None:
                    tr.skipped += 1
                    continue
                tr.values.append(value)
            tr.times.append(t)
            tr.recv.append(recv)
            tr.dup.append(dup)
            tr.ordinal.append(i)
    except ReaderError as e:
        raise DatasetError(f"bag {reader.path}: reading failed ({e}); the bag is damaged") from None
    for tr in tracks.values():
        tr.finish()
        if tr.skipped:
            log.warning(f"topic {tr.topic}: {tr.skipped} of {tr.count} messages carry no value "
                        f"({tr.source.skip_reason}) and were skipped; the previous message stays held over them")


def _camera_frames(reader: Any, tr: _Track, held: np.ndarray, bag_t0: int) -> np.ndarray:
    """Pass 2, one episode of one camera: (T, H, W, 3) uint8 frames of the held messages `held`
    (indices into the track, one per tick)."""
    need = np.unique(held)
    keys = {(int(tr.recv[k]), int(tr.dup[k])): k for k in need}
    lo, hi = int(tr.recv[need].min()), int(tr.recv[need].max())
    decoded: dict[int, np.ndarray] = {}
    last: tuple[int, int] | None = None
    for conn, recv, raw in reader.messages(connections=tr.connections, start=lo, stop=hi + 1):
        dup = last[1] + 1 if last is not None and last[0] == recv else 0
        last = (recv, dup)
        k = keys.get((recv, dup))
        if k is not None:
            msg = tr.typestore.deserialize_cdr(raw, conn.msgtype)
            decoded[k] = tr.source.decode(msg, int(tr.ordinal[k]), (tr.times[k] - bag_t0) / NS)
    missing = [k for k in need if k not in decoded]
    if missing:
        raise DatasetError(f"topic {tr.topic}: {len(missing)} messages seen in the first pass were not found "
                           "again; the bag changed while it was being converted")
    return np.stack([decoded[k] for k in held])


# ---- episodes and resampling ---------------------------------------------------------------------
def _episode_spans(tracks: dict[str, _Track], split: str | None, t_all: int, t_end: int,
                   where: Path) -> list[tuple[int, int, bool]]:
    """(start_ns, end_ns, end_inclusive) of each episode."""
    if split is None:
        return [(t_all, t_end, True)]
    tr = tracks[split]
    spans, start = [], None
    for t, on in zip(tr.times.tolist(), tr.values.tolist()):
        if on and start is None:
            start = t
        elif not on and start is not None:
            spans.append((max(start, t_all), t, False))
            start = None
    if start is not None:
        spans.append((max(start, t_all), t_end, True))
    if not spans:
        raise DatasetError(f"{where}: episode_split topic {split} never turns true, so there is no episode; "
                           "check the topic, or set episode_split: null to convert the whole bag as one episode")
    return spans


def _ticks(start: int, end: int, inclusive: bool, fps: int) -> np.ndarray:
    span = end - start
    if span < 0 or (span == 0 and not inclusive):
        return np.zeros(0, np.int64)
    n = span * fps // NS + 1 if inclusive else -(-span * fps // NS)
    return start + (np.arange(n, dtype=np.int64) * NS) // fps


def run(cfg: RosbagConvertConfig) -> Path:
    """Convert `cfg.bag` into a LeRobot v3 dataset at `cfg.out`; returns the dataset directory.

    Frames: one per tick of the output clock (see the module docstring), {feature: (T, D) float32} for
    joint states and commands, {observation.images.<name>: (T, H, W, 3) uint8 RGB} for cameras."""
    from tqdm import tqdm

    if not cfg.out:
        raise DatasetError("no output directory given; pass out=<dataset directory>")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty; choose another output directory")
    if cfg.time_source not in ("header", "receive"):
        raise DatasetError(f"time_source={cfg.time_source!r}: expected 'header' or 'receive'")
    if not cfg.stale_periods > 0:
        raise DatasetError(f"stale_periods={cfg.stale_periods}: must be a positive number of periods")
    reader, storage = _open_bag(cfg.bag)
    try:
        mapping = load_mapping(cfg.config, {t: i.msgtype or "<several types>" for t, i in reader.topics.items()},
                               cfg.fps, cfg.task)
        tracks = _tracks(reader, mapping, cfg.bag)
        bag_t0 = int(reader.start_time)
        _read(reader, tracks, cfg.time_source, bag_t0)
        features = {tr.source.tm.feature: tr for tr in tracks.values() if tr.source is not None}
        t_all, t_end = _overlap(features, cfg.bag, bag_t0)
        spans = _episode_spans(tracks, mapping.episode_split, t_all, t_end, mapping.path)
        writer = None
        try:
            for e, (start, end, inclusive) in enumerate(tqdm(spans, desc="write episodes", unit="ep", leave=False)):
                ticks = _ticks(start, end, inclusive, mapping.fps)
                if len(ticks) == 0:
                    log.warning(f"episode {e} of {cfg.bag} ({(start - bag_t0) / NS:.3f}..{(end - bag_t0) / NS:.3f}s "
                                "into the bag) holds no output frame (too short, or before every mapped topic has "
                                "delivered a message); skipped")
                    continue
                frames, info = _episode(reader, features, ticks, cfg, mapping.fps, bag_t0, e)
                if writer is None:  # camera sizes are known once the first frames are decoded
                    feats = {f: Feature("video", frames[f].shape[1:]) if tr.source.is_video
                             else Feature("float32", frames[f].shape[1:], tr.source.names())
                             for f, tr in features.items()}
                    writer = DatasetWriter.create(out, feats, mapping.fps, robot_type=mapping.robot.name,
                                                  video=cfg.video, extra_meta=_meta(cfg, mapping, storage, reader,
                                                                                    tracks))
                writer.add_episode(frames, EpisodeRecord(task=mapping.task, info=info))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise DatasetError(f"bag {cfg.bag}: no episode holds an output frame; nothing was written")
    finally:
        reader.close()
    return out


def _tracks(reader: Any, mapping: Mapping, bag: str) -> dict[str, _Track]:
    """One empty track per mapped topic (and the episode_split topic), each checked against the bag."""
    topics = reader.topics
    listing = ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(topics.items())) or "none"
    fallback = _distro_store(reader.ros_distro)
    wanted: list[tuple[str, TopicMap | None]] = [(tm.topic, tm) for tm in mapping.topics]
    if mapping.episode_split is not None:
        wanted.append((mapping.episode_split, None))
    tracks = {}
    for topic, tm in wanted:
        what = "episode_split topic" if tm is None else "mapped topic"
        if topic not in topics:
            raise DatasetError(f"{mapping.path}: {what} {topic} is not in bag {bag}."
                               f"{did_you_mean(topic, list(topics))} The bag's topics: {listing}")
        info = topics[topic]
        if info.msgtype is None:
            raise DatasetError(f"bag {bag}: topic {topic} was recorded with several message types "
                               f"({sorted({c.msgtype for c in info.connections})}); it cannot be one feature")
        source = None
        if tm is None:
            if info.msgtype not in SPLIT_TYPES:
                raise DatasetError(f"{mapping.path}: episode_split topic {topic} is a {info.msgtype}; it must be one "
                                   f"of {', '.join(SPLIT_TYPES)} (true or nonzero while an episode is recorded)")
        elif info.msgtype not in SOURCES:
            raise DatasetError(f"{mapping.path}: topic {topic} is a {info.msgtype}, which cannot become feature "
                               f"{tm.feature!r}; supported message types: {', '.join(SOURCES)}")
        else:
            source = SOURCES[info.msgtype](tm, mapping.robot, info.msgtype, mapping.path)
        if info.msgcount == 0:
            raise DatasetError(f"bag {bag}: {what} {topic} has no messages; record it, or remove it from "
                               f"{mapping.path}")
        tracks[topic] = _Track(topic, source, list(info.connections), _typestore(info.connections[0], fallback))
    return tracks


def _overlap(features: dict[str, _Track], bag: str, bag_t0: int) -> tuple[int, int]:
    """(t_all, t_end): the first time every feature's topic has spoken, and the last message of any."""
    for tr in features.values():
        if len(tr.times) == 0:
            raise DatasetError(f"bag {bag}: topic {tr.topic} has no messages to convert; record it, or remove it "
                               "from the mapping")
    first = {f: int(tr.times[0]) for f, tr in features.items()}
    last = {f: int(tr.times[-1]) for f, tr in features.items()}
    t_all, t_end = max(first.values()), max(last.values())
    if t_all > min(last.values()):
        spans = "; ".join(f"{tr.topic}: {(first[f] - bag_t0) / NS:.3f}..{(last[f] - bag_t0) / NS:.3f}s"
                          for f, tr in features.items())
        raise DatasetError(f"bag {bag}: the mapped topics never all have a message at the same time ({spans}, into "
                           "the bag); when header stamps and receive times come from different clocks (simulated "
                           "time), use time_source=receive")
    return t_all, t_end


def _episode(reader: Any, feature_tracks: dict[str, _Track], ticks: np.ndarray, cfg: RosbagConvertConfig,
             fps: int, bag_t0: int, e: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Frames and info of one episode: every feature zero-order held at `ticks` (ns)."""
    frames, staleness, stale_frames, periods = {}, {}, {}, {}
    for f, tr in feature_tracks.items():
        held = np.searchsorted(tr.times, ticks, side="right") - 1  # >= 0: ticks start once every topic spoke
        age = (ticks - tr.times[held]) / NS
        if tr.source.is_video:
            frames[f] = _camera_frames(reader, tr, held, bag_t0)
        else:
            frames[f] = tr.values[held].astype(np.float32)
        limit = cfg.stale_periods * max(tr.period_s, 1.0 / fps)
        staleness[f], stale_frames[f], periods[f] = float(age.max()), int((age > limit).sum()), tr.period_s
        if age.max() > limit:
            k = int(np.argmax(age))
            log.warning(f"topic {tr.topic} -> {f}: episode {e} holds a {age[k]:.3f}s old message at frame {k} "
                        f"({(ticks[k] - bag_t0) / NS:.3f}s into the bag); its period is {tr.period_s:.3f}s, so the "
                        f"topic dropped out there or stopped early ({stale_frames[f]} frames older than {limit:.3f}s)")
    info = {
        "start_time_ns": int(ticks[0]),
        "end_time_ns": int(ticks[-1]),
        "start_time": datetime.fromtimestamp(int(ticks[0]) / NS, tz=UTC).isoformat(),
        "bag_offset_s": (int(ticks[0]) - bag_t0) / NS,
        "time_source": cfg.time_source,
        "max_staleness_s": staleness,
        "stale_frames": stale_frames,
        "topic_period_s": periods,
    }
    return frames, info


def _meta(cfg: RosbagConvertConfig, mapping: Mapping, storage: str, reader: Any,
          tracks: dict[str, _Track]) -> dict[str, Any]:
    """What meta/robolearn.json records about the source."""
    topics = {}
    for topic, tr in tracks.items():
        if tr.source is None:
            continue
        src = tr.source
        entry: dict[str, Any] = {"feature": src.tm.feature, "msgtype": src.msgtype}
        if isinstance(src, _JointStateSource):
            entry["fields"] = list(src.fields)
        if not src.is_video:
            entry["joints"] = list(src.joints)
        if src.tm.resize is not None:
            entry["resize"] = list(src.tm.resize)
        topics[topic] = entry
    robot = mapping.robot
    return {
        "source": "rosbag2",
        "bag": str(Path(cfg.bag).resolve()),
        "storage": storage,
        "ros_distro": reader.ros_distro,
        "time_source": cfg.time_source,
        "mapping_file": str(mapping.path.resolve()),
        "mapping": {"robot": robot.name, "fps": mapping.fps, "task": mapping.task, "topics": topics,
                    "episode_split": mapping.episode_split},
        "robot": robot.name,
        "joint_names": list(robot.joint_names + robot.gripper_joint_names),
    }
