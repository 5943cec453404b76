"""recorder_node: episodes from the live topics into a robolearn dataset (LeRobot v3 layout, robolearn.data).

Each frame is one joint state (decimated to `fps`) with what goes with it:
  observation.state              q, dq, TCP position and quaternion (FK, robolearn.deploy.ArmKinematics),
                                 fingers: what the sim and every robolearn policy read
  observation.environment_state  from `environment_state_topic`, when set
  observation.images.<camera>    each camera of `cameras`
  action                         the command answering the frame's state: joint targets and the gripper as
                                 the sim's joint_pos action (names: joints + "gripper"), so the dataset
                                 trains a joint_pos policy as it is
Messages are put next to a joint state by their stamp (robolearn_ros.convert): a camera frame or an
environment state belongs to the newest joint state not after it, a command to the first state it
answers; an unstamped message takes the stamp of the newest joint state when it arrived.

Episodes start and stop with `~/start` and `~/stop` (std_srvs/Trigger), or by themselves with
`episode_topic` (sim_robot_node's ~/episode): one dataset episode per sim episode, with the sim's success
label, seed, and stage labels (the task's stages per frame, as `robolearn collect` writes them). Without
the sim, `success_topic` (std_msgs/Bool, the last value before ~/stop) labels success and `stage_topic`
(std_msgs/Int32 with `stage_names`) the stages. Episode info carries `policy` (what `robolearn judge`
groups by).

Finished episodes are written by a background thread through robolearn.data.writer.DatasetWriter: an
episode that has been written survives any later crash, and `resume:=true` appends to the dataset after
one. An episode still being recorded when the node is stopped is dropped. `~/status` (std_msgs/String,
JSON, latched) says whether it records, how many episodes it has written, and the last problem.

    ros2 run robolearn_ros recorder_node --ros-args -p dataset:=data/real_lift -p cameras:="[front]"
"""

from __future__ import annotations

import bisect
import json
import queue
import threading
from pathlib import Path

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, Int32, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from robolearn.data.format import INFO_PATH, DatasetError, Feature
from robolearn.data.stages import StageAnnotation
from robolearn.data.writer import DatasetWriter, EpisodeRecord
from robolearn.deploy import ArmKinematics, action_from_width
from robolearn.deploy.kinematics import state_names as state_names_of
from robolearn.hardware import load_robot
from robolearn_ros.common import (
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
    image_to_array,
    stamp_ns,
    trajectory_stamp,
    trajectory_target,
)
from robolearn_ros.sim_robot_node import gripper_topic

PARAMETERS = {
    "dataset": Param("", "dataset directory (LeRobot v3 layout), created at the first episode"),
    "resume": Param(False, "append to the dataset at `dataset` (e.g. after a crash) instead of requiring a new one"),
    "hardware": Param("panda", "robot name (hardware/robots/<name>.yaml) or path to a hardware YAML file"),
    "fps": Param(0, "frames per second; 0: the hardware file's control rate"),
    "task": Param("", "task description of the episodes; empty: the sim's, else 'robot episode'"),
    "policy": Param("", "name of the policy acting (episode info 'policy': what `robolearn judge` groups by)"),
    "cameras": Param([], "cameras recorded as observation.images.<camera>", str),
    "camera_topic_format": Param("/cameras/{camera}/image_raw", "topic of each camera"),
    "camera_topics": Param([], "per-camera topics overriding camera_topic_format, as camera=topic", str),
    "image_qos": Param("reliable", "camera subscriptions: reliable, or best_effort (sensor-data cameras)"),
    "environment_state_topic": Param("", "record observation.environment_state from this "
                                         "std_msgs/Float64MultiArray topic (sim: /sim_robot/environment_state)"),
    "joint_state_topic": Param("", "empty: the hardware file's joint_state_topic"),
    "command_interface": Param("position", "the commands recorded as actions: position (Float64MultiArray) or "
                                           "trajectory (JointTrajectory)"),
    "position_command_topic": Param("", "empty: the hardware file's position_command_topic"),
    "trajectory_command_topic": Param("", "empty: the hardware file's trajectory_command_topic"),
    "gripper_command_topic": Param("", "empty: the hardware file's gripper_command_topic, else "
                                       "/gripper_controller/commands"),
    "gripper_closed_position": Param(0.8, "robots with one gripper joint: its position when closed (0: open)"),
    "episode_topic": Param("", "sim_robot_node's ~/episode (e.g. /sim_robot/episode): record every sim episode "
                               "by itself, with its success and stage labels"),
    "success_topic": Param("", "std_msgs/Bool: the success label is its last value before ~/stop"),
    "stage_topic": Param("", "std_msgs/Int32 stage id of each frame (its newest value)"),
    "stage_names": Param([], "names of the stage ids; empty: the sim's (from episode_topic)", str),
    "base_pos": Param([0.0, 0.0, 0.0], "arm base in the world frame of the TCP pose in observation.state, m"),
    "fsync": Param(True, "flush every written file to disk (survives power loss, not only a crash)"),
}
KEEP_IDLE_S = 2.0  # stamped messages kept while not recording: an episode may start with what came just before
FINALIZE_DELAY_S = 0.3  # after an episode ends, for the commands answering its last state to arrive


class _Stream:
    """Stamped messages of one topic in arrival order: (key stamp ns, value)."""

    def __init__(self):
        self.keys: list[int] = []
        self.values: list = []

    def add(self, key: int, value) -> None:
        i = bisect.bisect_right(self.keys, key)  # nearly always the end
        self.keys.insert(i, key)
        self.values.insert(i, value)

    def trim_before(self, key: int) -> None:
        i = bisect.bisect_left(self.keys, key)
        if i > 1:  # keep one before: the value in force at `key`
            del self.keys[: i - 1], self.values[: i - 1]

    def at_or_before(self, key: int):
        """The newest value stamped at or before `key` (else the oldest after it; None when empty)."""
        i = bisect.bisect_right(self.keys, key)
        if i:
            return self.values[i - 1]
        return self.values[0] if self.values else None

    def answering(self, key: int, next_key: int | None):
        """The first value stamped in [key, next_key) (a command answering the state at `key`), else the newest
        one before `key` (still in force), else None."""
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and (next_key is None or self.keys[i] < next_key):
            return self.values[i]
        return self.values[i - 1] if i else None


class RecorderNode(Node):
    def __init__(self):
        super().__init__("recorder")
        p = self.p = declare_parameters(self, PARAMETERS)
        if not p.dataset:
            raise ParameterError("parameter 'dataset' is not set; name the output directory, e.g. "
                                 "-p dataset:=data/real_lift")
        if p.command_interface not in ("position", "trajectory"):
            raise ParameterError(f"parameter 'command_interface' must be position or trajectory, got "
                                 f"{p.command_interface!r}")
        root = Path(p.dataset)
        if (root / INFO_PATH).exists() and not p.resume:
            raise ParameterError(f"{root} already holds a dataset; append to it with -p resume:=true, or choose "
                                 "another 'dataset'")
        if root.exists() and any(root.iterdir()) and not (root / INFO_PATH).exists():
            raise ParameterError(f"{root} exists and is not empty (and holds no dataset); choose another 'dataset'")
        spec = self.spec = load_robot(p.hardware)
        self.kin = ArmKinematics(spec, p.base_pos)
        self.fps = int(p.fps or round(spec.control_rate_hz))
        if self.fps <= 0:
            raise ParameterError(f"parameter 'fps' must be a positive whole number of frames per second, got {p.fps}")
        self.period_ns = int(1e9 / self.fps)
        self.cache = JointStateCache(spec.joint_names, spec.gripper_joint_names)
        self.frames = _Stream()  # key: joint state stamp; value: (q, dq, fingers)
        self.streams = {"arm": _Stream(), "gripper": _Stream(), "env": _Stream(), "stage": _Stream(),
                        **{f"cam:{c}": _Stream() for c in p.cameras}}
        self.sim_info: dict = {}  # the sim's first-step info of the episode under way
        self.success: bool | None = None
        self.recording = False
        self.start_key = 0
        self.pending: list[tuple] = []  # ended episodes waiting FINALIZE_DELAY_S: (start, end, sim info, success)
        self.written = 0
        self.problem = ""

        qos = reliable_qos()
        self.create_subscription(JointState, p.joint_state_topic or spec.topics["joint_state_topic"], self.on_joints,
                                 qos)
        topics = {c: p.camera_topic_format.format(camera=c) for c in p.cameras}
        for item in p.camera_topics:
            cam, sep, topic = item.partition("=")
            if not sep or cam not in topics:
                raise ParameterError(f"parameter 'camera_topics': {item!r} must be camera=topic for a camera of "
                                     f"'cameras' ({', '.join(p.cameras) or 'none'})")
            topics[cam] = topic
        for cam, topic in topics.items():
            self.create_subscription(Image, topic, lambda m, c=cam: self.on_image(c, m), image_qos(p.image_qos))
        if p.environment_state_topic:
            self.create_subscription(Float64MultiArray, p.environment_state_topic, self.on_env, qos)
        if p.command_interface == "position":
            self.create_subscription(Float64MultiArray, p.position_command_topic or
                                     spec.topics["position_command_topic"], self.on_position, qos)
        else:
            self.create_subscription(JointTrajectory, p.trajectory_command_topic or
                                     spec.topics["trajectory_command_topic"], self.on_trajectory, qos)
        self.create_subscription(Float64MultiArray, gripper_topic(spec, p.gripper_command_topic), self.on_gripper, qos)
        if p.episode_topic:
            self.create_subscription(String, p.episode_topic, self.on_episode, qos)
        if p.success_topic:
            self.create_subscription(Bool, p.success_topic, lambda m: setattr(self, "success", bool(m.data)), qos)
        if p.stage_topic:
            self.create_subscription(Int32, p.stage_topic, self.on_stage, qos)
        self.create_service(Trigger, "~/start", self.on_start)
        self.create_service(Trigger, "~/stop", self.on_stop)
        self.status_pub = self.create_publisher(String, "~/status", latched_qos())

        self.writer: DatasetWriter | None = None
        self.jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._write_loop, name="recorder-writer", daemon=True)
        self.thread.start()
        self.get_logger().info(f"recording into {root} at {self.fps} fps: cameras {list(p.cameras) or 'none'}; "
                               + (f"episodes from {p.episode_topic}" if p.episode_topic else "call ~/start, ~/stop"))
        self.publish_status()

    # ---- inputs -------------------------------------------------------------------------------------
    @property
    def now_key(self) -> int:
        """The stamp an unstamped message takes: the newest joint state's."""
        return self.cache.stamp_ns

    def on_joints(self, msg: JointState) -> None:
        if not self.cache.update(msg) or not self.cache.complete:
            return
        key = self.cache.stamp_ns
        if not self._due(self.frames, key):
            return  # decimated to fps (and republished states are the same frame)
        q, dq, joints = self.cache.arrays()
        fingers = fingers_from_joints(joints, self.spec.gripper_width_max, self.p.gripper_closed_position)
        self.frames.add(key, (q, dq, fingers))
        if not self.recording:
            self._trim(key - int(KEEP_IDLE_S * 1e9))

    def _due(self, stream: _Stream, key: int) -> bool:
        """Whether a message stamped `key` starts a new frame period of `stream` (decimation to fps: a camera
        faster than fps keeps about fps images, not all of them, while the episode is held in memory)."""
        last = stream.keys[-1] if stream.keys else None
        return last is None or key - last >= self.period_ns - min(self.period_ns // 10, 2_000_000)

    def _trim(self, key: int) -> None:
        """Forget what is older than `key`, but nothing an episode waiting to be assembled needs."""
        key = min([key] + [start for start, *_ in self.pending])
        self.frames.trim_before(key)
        for s in self.streams.values():
            s.trim_before(key)

    def on_image(self, cam: str, msg: Image) -> None:
        stream, key = self.streams[f"cam:{cam}"], stamp_ns(msg.header.stamp)
        if not self._due(stream, key):
            return
        try:
            stream.add(key, image_to_array(msg))
        except ValueError as e:
            self.get_logger().error(f"camera {cam}: {e}", throttle_duration_sec=5.0)

    def on_env(self, msg: Float64MultiArray) -> None:
        values, stamp = float_array(msg)
        self.streams["env"].add(self.now_key if stamp is None else stamp, values)

    def on_position(self, msg: Float64MultiArray) -> None:
        q, stamp = float_array(msg)
        if q.shape == (self.spec.dof,):
            self.streams["arm"].add(self.now_key if stamp is None else stamp, q)

    def on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            stamp = trajectory_stamp(msg)
            self.streams["arm"].add(self.now_key if stamp is None else stamp,
                                    trajectory_target(msg, list(self.spec.joint_names)))
        except ValueError:
            pass

    def on_gripper(self, msg: Float64MultiArray) -> None:
        values, stamp = float_array(msg)
        if values.shape == (1,):
            self.streams["gripper"].add(self.now_key if stamp is None else stamp, float(values[0]))

    def on_stage(self, msg: Int32) -> None:
        self.streams["stage"].add(self.now_key, int(msg.data))

    def on_episode(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
            key = int(info["stamp_ns"])
        except (ValueError, KeyError, TypeError):
            self.get_logger().error(f"{self.p.episode_topic}: not sim_robot_node's episode JSON: {msg.data[:80]!r}")
            return
        if info.get("step") == 0 and not info.get("done"):
            if self.recording:
                self.problem = f"episode {self.sim_info.get('episode')} never ended; dropped"
                self.get_logger().warning(self.problem)
            self.sim_info = info
            self.success = None
            self.start(key)
        if "stage" in info and self.recording:
            self.streams["stage"].add(key, int(info["stage"]))
        if info.get("done") and self.recording:
            self.success = bool(info.get("success"))
            self.stop(key)

    # ---- episodes -----------------------------------------------------------------------------------
    def on_start(self, _req, res):
        if self.recording:
            res.success, res.message = False, "already recording an episode; call ~/stop first"
            return res
        self.sim_info, self.success = {}, None
        self.start(self.cache.stamp_ns + 1)  # from the next joint state on
        res.success, res.message = True, f"recording episode {self.written + self.jobs.qsize()}"
        return res

    def on_stop(self, _req, res):
        if not self.recording:
            res.success, res.message = False, "not recording; call ~/start first"
            return res
        self.stop(self.cache.stamp_ns + 1)
        res.success, res.message = True, "episode stopped; it is written in the background (see ~/status)"
        return res

    def start(self, key: int) -> None:
        self.recording = True
        self.start_key = key
        self._trim(key)
        self.publish_status()

    def stop(self, end_key: int) -> None:
        """End the episode at `end_key` (exclusive); frames are assembled once late commands are in."""
        self.recording = False
        job = (self.start_key, end_key, dict(self.sim_info), self.success)
        self.pending.append(job)
        timer = None

        def finalize():
            self.destroy_timer(timer)
            if job in self.pending:
                self.pending.remove(job)
                self._queue_episode(*job)

        timer = self.create_timer(FINALIZE_DELAY_S, finalize)

    def _queue_episode(self, start: int, end: int, sim_info: dict, success: bool | None) -> None:
        i0, i1 = bisect.bisect_left(self.frames.keys, start), bisect.bisect_left(self.frames.keys, end)
        keys = self.frames.keys[i0:i1]
        if not keys:
            self.problem = "an episode had no joint states; nothing written"
            self.get_logger().warning(self.problem)
            self.publish_status()
            return
        try:
            frames = self._assemble(keys, [self.frames.values[i] for i in range(i0, i1)], end)
        except DatasetError as e:
            self.problem = f"episode dropped: {e}"
            self.get_logger().error(self.problem)
            self.publish_status()
            return
        stage_names = list(self.p.stage_names) or list(sim_info.get("stage_names") or [])
        stages = None
        if stage_names and self.streams["stage"].values:
            ids = np.array([self.streams["stage"].at_or_before(k) for k in keys], np.int64)
            if ids.min() >= 0 and ids.max() < len(stage_names):
                stages = StageAnnotation.from_stage_ids(ids, stage_names, "sim" if sim_info else "user")
        info = {"source": "robolearn_ros recorder_node", "policy": self.p.policy or None,
                "start_stamp_ns": int(keys[0]), "end_stamp_ns": int(end)}
        for k in ("episode", "seed", "seed_episode", "task"):
            if k in sim_info:
                info["sim_" + k if k in ("episode", "task") else k] = sim_info[k]
        task = self.p.task or sim_info.get("description") or "robot episode"
        meta = {"stages": stage_names} if stage_names else {}
        env_names = sim_info.get("environment_state_names")
        self.jobs.put((frames, EpisodeRecord(task, stages, success, info), meta, env_names))
        self.publish_status()

    def _assemble(self, keys: list[int], joints: list[tuple], end: int) -> dict[str, np.ndarray]:
        """The episode's frames: {feature: (T, ...)} (see the module docstring for what goes where)."""
        spec, s = self.spec, self.streams
        state, action = [], []
        env = [] if self.p.environment_state_topic else None
        cams = {c: [] for c in self.p.cameras}
        prev_cmd = None
        for i, (key, (q, dq, fingers)) in enumerate(zip(keys, joints)):
            nxt = keys[i + 1] if i + 1 < len(keys) else end
            state.append(self.kin.proprio(q, dq, fingers))
            q_cmd = s["arm"].answering(key, nxt)
            width = s["gripper"].answering(key, nxt)
            if q_cmd is None:  # nothing commanded yet: the arm holds where it is
                q_cmd = prev_cmd[0] if prev_cmd else q
            if width is None:
                width = prev_cmd[1] if prev_cmd else float(fingers[0] - fingers[1])
            prev_cmd = (q_cmd, width)
            action.append(np.append(q_cmd, action_from_width(width, spec.gripper_width_max)))
            if env is not None:
                v = s["env"].at_or_before(key)
                if v is None:
                    raise DatasetError(f"no environment state arrived on {self.p.environment_state_topic}")
                env.append(v)
            for c in cams:
                img = s[f"cam:{c}"].at_or_before(key)
                if img is None:
                    raise DatasetError(f"no image arrived from camera {c!r}")
                cams[c].append(img)
        out = {"observation.state": np.asarray(state, np.float32), "action": np.asarray(action, np.float32)}
        if env is not None:
            if len({len(v) for v in env}) != 1:
                raise DatasetError("the environment state changed size within the episode")
            out["observation.environment_state"] = np.asarray(env, np.float32)
        for c, imgs in cams.items():
            if len({im.shape for im in imgs}) != 1:
                raise DatasetError(f"camera {c!r} changed image size within the episode")
            out[f"observation.images.{c}"] = np.stack(imgs)
        return out

    # ---- writing ------------------------------------------------------------------------------------
    def _features(self, frames: dict[str, np.ndarray], env_names: list[str] | None) -> dict[str, Feature]:
        spec = self.spec
        joints = list(spec.joint_names)
        state_names = state_names_of(spec.dof)
        feats = {"observation.state": Feature("float32", (len(state_names),), state_names)}
        if "observation.environment_state" in frames:
            n = frames["observation.environment_state"].shape[1]
            names = env_names if env_names and len(env_names) == n else [f"env_{i}" for i in range(n)]
            feats["observation.environment_state"] = Feature("float32", (n,), list(names))
        for c in self.p.cameras:
            feats[f"observation.images.{c}"] = Feature("video", frames[f"observation.images.{c}"].shape[1:])
        feats["action"] = Feature("float32", (spec.dof + 1,), joints + ["gripper"])
        return feats

    def _write_loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                break
            frames, record, meta, env_names = job
            try:
                if self.writer is None:
                    self.writer = self._open_writer(frames, meta, env_names)
                ep = self.writer.add_episode(frames, record)
                self.written += 1
                self.get_logger().info(f"episode {ep} written ({len(frames['action'])} frames, success "
                                       f"{record.success})")
            except (DatasetError, OSError) as e:
                self.problem = f"episode not written: {e}"
                self.get_logger().error(self.problem)
            finally:
                self.jobs.task_done()
            self.publish_status()

    def _open_writer(self, frames, meta: dict, env_names) -> DatasetWriter:
        root = Path(self.p.dataset)
        feats = self._features(frames, env_names)
        if (root / INFO_PATH).exists():
            writer = DatasetWriter.open(root, fsync=self.p.fsync)
            if set(writer.features) != set(feats) or any(tuple(writer.features[k].shape) != tuple(f.shape)
                                                         for k, f in feats.items()):
                raise DatasetError(f"{root} holds features {sorted(writer.features)}; these episodes have "
                                   f"{sorted(feats)} (or other shapes). Record into another dataset")
            return writer
        extra = {"source": "robolearn_ros recorder_node", "robot": self.spec.name, **meta}
        return DatasetWriter.create(root, feats, self.fps, robot_type=self.spec.name, extra_meta=extra,
                                    fsync=self.p.fsync)

    def status(self) -> dict:
        return {"recording": self.recording, "episodes_written": self.written, "episodes_queued": self.jobs.qsize(),
                "dataset": self.p.dataset, "fps": self.fps, "problem": self.problem}

    def publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.status())))

    def close(self) -> None:
        """Finish writing the queued episodes and pack the dataset; an episode still recording is dropped."""
        if self.recording:
            self.get_logger().warning("stopped while recording: the episode under way is dropped")
        while self.pending:  # ended, waiting for late commands: there will be none now
            self._queue_episode(*self.pending.pop(0))
        self.jobs.put(None)
        self.thread.join()
        if self.writer is not None:
            self.writer.close()


def main(args: list[str] | None = None) -> None:
    raise SystemExit(spin_node(RecorderNode, "recorder", args))


if __name__ == "__main__":
    main()
