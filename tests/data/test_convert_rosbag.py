"""`robolearn convert rosbag`: small rosbag2 recordings (MCAP and sqlite3), written here with rosbags,
converted and read back; every bad input is one DatasetError naming the file or topic."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_typestore

from robolearn.data import DatasetError, DatasetReader
from robolearn.data.convert.rosbag import SOURCES, RosbagConvertConfig, TopicMap, _typestore, run
from robolearn.hardware import load_robot

NS = 1_000_000_000
BASE = 1_700_000_000 * NS  # an ordinary wall-clock epoch
TS = get_typestore(Stores.ROS2_KILTED)
M = TS.types
ROBOT = load_robot("panda")
JOINTS = ROBOT.joint_names + ROBOT.gripper_joint_names
ARM = ROBOT.joint_names
MS = 1_000_000
H, W = 24, 32


# ---- messages ------------------------------------------------------------------------------------
def _header(ns: int):
    return M["std_msgs/msg/Header"](stamp=M["builtin_interfaces/msg/Time"](sec=ns // NS, nanosec=ns % NS),
                                    frame_id="")


def joint_state(ns: int, names, position, velocity=()):
    return M["sensor_msgs/msg/JointState"](header=_header(ns), name=list(names),
                                           position=np.asarray(position, np.float64),
                                           velocity=np.asarray(velocity, np.float64), effort=np.zeros(0))


def image(ns: int, rgb: np.ndarray, encoding: str = "rgb8"):
    data = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., :1]}.get(encoding, rgb)
    data = np.ascontiguousarray(data)
    h, w = data.shape[:2]
    return M["sensor_msgs/msg/Image"](header=_header(ns), height=h, width=w, encoding=encoding, is_bigendian=0,
                                      step=data.strides[0], data=data.reshape(-1))


def compressed(ns: int, rgb: np.ndarray):
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    return M["sensor_msgs/msg/CompressedImage"](header=_header(ns), format="rgb8; png compressed bgr8",
                                                data=png.reshape(-1))


def float_array(values):
    return M["std_msgs/msg/Float64MultiArray"](layout=M["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                               data=np.asarray(values, np.float64))


def trajectory(ns: int, names, positions):
    point = M["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(positions, np.float64), velocities=np.zeros(0), accelerations=np.zeros(0),
        effort=np.zeros(0), time_from_start=M["builtin_interfaces/msg/Duration"](sec=0, nanosec=0))
    return M["trajectory_msgs/msg/JointTrajectory"](header=_header(ns), joint_names=list(names), points=[point])


def gradient(j: int) -> np.ndarray:
    """(H, W, 3) uint8, smooth (it must survive H.264) and different enough per message j that the
    nearest source image of a decoded frame identifies the message."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([2 * x + 7 * j, 6 * y + 60, 230 - 7 * j - x], -1).clip(0, 255).astype(np.uint8)


def write_bag(path, storage: str, topics: dict[str, tuple[str, list[tuple[int, object]]]]) -> None:
    """topics: {topic: (msgtype, [(receive ns, message)])}; written in receive-time order."""
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as w:
        rows = []
        for topic, (msgtype, msgs) in topics.items():
            conn = w.add_connection(topic, msgtype, typestore=TS)
            rows += [(recv, k, conn, TS.serialize_cdr(m, msgtype)) for k, (recv, m) in enumerate(msgs)]
        for recv, _, conn, raw in sorted(rows, key=lambda r: (r[0], r[1], r[2].id)):
            w.write(conn, recv, raw)


def write_mapping(path, topics=None, **top) -> str:
    doc = {"robot": "panda", "fps": 20, "task": "pick up the cube", **top}
    if topics is not None:
        doc["topics"] = topics
    path.write_text(yaml.safe_dump(doc))
    return str(path)


# ---- the standard recording: 2 s of joint states, two cameras and commands -----------------------
def recording(n_images: int = 30) -> dict:
    """Joint states at 100 Hz (names shuffled, two orders alternating; header 2 ms before receipt), an
    rgb8 and a bgr8 camera at 15 Hz (header 30 ms before receipt), Float64MultiArray commands at 20 Hz
    (no header). Returns the topics for `write_bag` and, per topic, header and receive times and the
    expected values."""
    rng = np.random.default_rng(0)
    orders = [list(rng.permutation(JOINTS)), list(rng.permutation(JOINTS))]
    js, js_t, js_r, js_v = [], [], [], []
    for j in range(200):
        recv = BASE + 3 * MS + j * 10 * MS
        pos = {n: k + 0.001 * j for k, n in enumerate(JOINTS)}
        vel = {n: -k - 0.01 * j for k, n in enumerate(JOINTS)}
        order = orders[j % 2]
        js.append((recv, joint_state(recv - 2 * MS, order, [pos[n] for n in order], [vel[n] for n in order])))
        js_t.append(recv - 2 * MS)
        js_r.append(recv)
        js_v.append([pos[n] for n in JOINTS] + [vel[n] for n in JOINTS])
    cams = {"rgb8": [], "bgr8": []}
    im_t, im_r = [], []
    for j in range(n_images):
        recv = BASE + 40 * MS + (j * 200 * MS) // 3
        for enc in cams:
            cams[enc].append((recv, image(recv - 30 * MS, gradient(j), enc)))
        im_t.append(recv - 30 * MS)
        im_r.append(recv)
    cmd, cmd_t, cmd_v = [], [], []
    for j in range(40):
        recv = BASE + 25 * MS + j * 50 * MS
        values = [10 + k + 0.01 * j for k in range(7)]
        cmd.append((recv, float_array(values)))
        cmd_t.append(recv)
        cmd_v.append(values)
    return {
        "topics": {
            "/joint_states": ("sensor_msgs/msg/JointState", js),
            "/camera/front/image_raw": ("sensor_msgs/msg/Image", cams["rgb8"]),
            "/camera/wrist/image_raw": ("sensor_msgs/msg/Image", cams["bgr8"]),
            "/forward_position_controller/commands": ("std_msgs/msg/Float64MultiArray", cmd),
        },
        "header": {"state": js_t, "image": im_t, "action": cmd_t},
        "receive": {"state": js_r, "image": im_r, "action": cmd_t},
        "values": {"state": np.array(js_v), "action": np.array(cmd_v)},
    }


MAPPING = {
    "/joint_states": {"feature": "observation.state", "fields": ["position", "velocity"]},
    "/camera/front/image_raw": {"feature": "observation.images.front"},
    "/camera/wrist/image_raw": "observation.images.wrist",
    "/forward_position_controller/commands": {"feature": "action"},
}


def expected_ticks(times: dict[str, list[int]], fps: int = 20) -> list[int]:
    t0 = max(t[0] for t in times.values())
    end = max(t[-1] for t in times.values())
    return [t0 + k * NS // fps for k in range(1000) if t0 + k * NS // fps <= end]


def held(times: list[int], ticks: list[int]) -> list[int]:
    """Index of the latest message at or before each tick (times in any order)."""
    return [max((i for i, t in enumerate(times) if t <= tick), key=lambda i: times[i]) for tick in ticks]


def convert(tmp_path, storage="mcap", rec=None, topics=MAPPING, name="out", **cfg) -> tuple[DatasetReader, dict]:
    rec = rec or recording()
    bag = tmp_path / f"bag_{storage}_{name}"
    write_bag(bag, storage, rec["topics"])
    mapping = write_mapping(tmp_path / f"{name}.yaml", topics)
    out = run(RosbagConvertConfig(bag=str(bag), out=str(tmp_path / name), config=mapping, **cfg))
    return DatasetReader(out), rec


# ---- conversion ----------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_converts_a_recording_onto_one_clock(tmp_path, storage):
    ds, rec = convert(tmp_path, storage)
    names = [f"{j}.position" for j in JOINTS] + [f"{j}.velocity" for j in JOINTS]
    assert ds.features["observation.state"].dtype == "float32"
    assert ds.features["observation.state"].names == names
    assert ds.features["action"].names == [f"{j}.position" for j in ARM]
    assert ds.features["observation.images.front"].shape == (H, W, 3)
    assert ds.features["observation.images.wrist"].is_video
    assert ds.fps == 20 and ds.num_episodes == 1
    assert ds.meta.info["robot_type"] == "panda"

    ticks = expected_ticks(rec["header"])
    assert ticks[0] == BASE + 25 * MS  # the first command is the last topic to speak
    ep = ds.episode(0)
    assert len(ep["action"]) == len(ticks) == 40
    np.testing.assert_allclose(ds.numeric("timestamp", np.arange(len(ticks))), np.arange(len(ticks)) / 20,
                               atol=1e-6)
    # numeric features: exactly the held message, reordered by joint name
    state = rec["values"]["state"][held(rec["header"]["state"], ticks)]
    np.testing.assert_array_equal(ep["observation.state"], state.astype(np.float32))
    action = rec["values"]["action"][held(rec["header"]["action"], ticks)]
    np.testing.assert_array_equal(ep["action"], action.astype(np.float32))  # a tick on a message takes it
    # cameras: the held image, bgr8 turned into RGB; H.264 is lossy
    want = np.stack([gradient(j) for j in held(rec["header"]["image"], ticks)]).astype(float)
    for cam in ("front", "wrist"):
        got = ep[f"observation.images.{cam}"].astype(float)
        assert got.shape == (len(ticks), H, W, 3)
        assert np.abs(got - want).mean(axis=(1, 2, 3)).max() < 3
        nearest = [int(np.argmin([np.abs(g - gradient(j)).mean() for j in range(30)])) for g in got]
        assert nearest == held(rec["header"]["image"], ticks)

    meta = ds.meta.robolearn
    assert meta["source"] == "rosbag2" and meta["storage"] == storage
    assert meta["joint_names"] == list(JOINTS)
    assert meta["mapping"]["topics"]["/joint_states"]["fields"] == ["position", "velocity"]
    assert meta["mapping"]["topics"]["/camera/wrist/image_raw"]["feature"] == "observation.images.wrist"
    info = ds.meta.episode_info(0)
    assert info["start_time_ns"] == ticks[0] and info["end_time_ns"] == ticks[-1]
    assert info["time_source"] == "header"
    assert 0 < info["max_staleness_s"]["observation.state"] <= 0.010
    assert 0.050 - 1e-9 < info["max_staleness_s"]["observation.images.front"] <= 0.067
    assert info["stale_frames"] == {k: 0 for k in ds.features}
    assert ds.meta.task(0) == "pick up the cube"


def test_receive_time_source_holds_by_receipt(tmp_path):
    ds, rec = convert(tmp_path, "sqlite3", time_source="receive")
    ticks = expected_ticks(rec["receive"])
    ep = ds.episode(0)
    assert len(ep["action"]) == len(ticks)
    state = rec["values"]["state"][held(rec["receive"]["state"], ticks)]
    np.testing.assert_array_equal(ep["observation.state"], state.astype(np.float32))
    assert held(rec["receive"]["state"], ticks) != held(rec["header"]["state"], expected_ticks(rec["header"]))
    assert ds.meta.episode_info(0)["time_source"] == "receive"


def test_example_mapping_file(tmp_path, monkeypatch):
    """hardware/rosbag/panda.yaml (the config default) maps the standard recording, from any directory."""
    rec = recording()
    write_bag(tmp_path / "bag", "sqlite3", rec["topics"])
    monkeypatch.chdir(tmp_path)
    ds = DatasetReader(run(RosbagConvertConfig(bag="bag", out="out")))
    assert set(ds.features) == {"observation.state", "observation.images.front", "action"}
    assert ds.features["observation.state"].names[-1] == "panda_finger_joint2.velocity"
    assert ds.meta.robolearn["mapping_file"].endswith("hardware/rosbag/panda.yaml")
    assert ds.meta.task(0) == "pick up the cube" and ds.fps == 20


def test_defaults_from_robot_file_trajectory_and_compressed_images(tmp_path, caplog):
    """No `topics:`: /joint_states and the trajectory controller's topic from hardware/robots/panda.yaml,
    the camera found by type; JointTrajectory reordered by joint name; png CompressedImage decoded."""
    order = list(reversed(ARM))
    traj, js, cam = [], [], []
    for j in range(20):
        recv = BASE + j * 100 * MS
        traj.append((recv, trajectory(0, order, [-(ARM.index(n)) - 0.1 * j for n in order])))  # zero stamp
        js.append((recv + 5 * MS, joint_state(recv + 5 * MS, JOINTS, np.arange(9) + 0.5 * j)))
        cam.append((recv + 7 * MS, compressed(recv + 7 * MS, gradient(j))))
    stop = trajectory(0, order, [])
    stop.points = []  # a stop: skipped, the previous trajectory stays held
    traj.insert(6, (BASE + 550 * MS, stop))
    rec = {"topics": {
        "/joint_trajectory_controller/joint_trajectory": ("trajectory_msgs/msg/JointTrajectory", traj),
        "/joint_states": ("sensor_msgs/msg/JointState", js),
        "/camera/wrist/image_raw/compressed": ("sensor_msgs/msg/CompressedImage", cam),
    }}
    with caplog.at_level(logging.WARNING, logger="robolearn.data.convert.rosbag"):
        ds, _ = convert(tmp_path, "mcap", rec, topics=None, fps=10)
    assert "1 of 21 messages carry no value (trajectories without points" in caplog.text
    assert set(ds.features) == {"observation.state", "action", "observation.images.wrist"}
    assert ds.features["observation.state"].names == [f"{j}.position" for j in JOINTS]
    ep = ds.episode(0)
    # ticks every 100 ms from the first camera image (7 ms) to the last (1907 ms): each holds message j
    assert len(ep["action"]) == 20 and ds.fps == 10
    j = np.arange(20)[:, None]
    np.testing.assert_array_equal(ep["action"], (-np.arange(7)[None] - 0.1 * j).astype(np.float32))
    np.testing.assert_array_equal(ep["observation.state"], (np.arange(9)[None] + 0.5 * j).astype(np.float32))
    want = np.stack([gradient(k) for k in range(20)]).astype(float)
    assert np.abs(ep["observation.images.wrist"].astype(float) - want).mean(axis=(1, 2, 3)).max() < 3
    assert ds.meta.robolearn["mapping"]["topics"]["/joint_trajectory_controller/joint_trajectory"]["joints"] == \
        list(ARM)


def test_episode_split_and_resize(tmp_path):
    rec = recording()
    flags = [(BASE + 200 * MS, True), (BASE + 400 * MS, True), (BASE + 900 * MS, False), (BASE + 1200 * MS, True)]
    rec["topics"]["/recording"] = ("std_msgs/msg/Bool", [(t, M["std_msgs/msg/Bool"](data=on)) for t, on in flags])
    topics = {**MAPPING, "/camera/front/image_raw": {"feature": "observation.images.front", "resize": [12, 16]}}
    bag = tmp_path / "bag"
    write_bag(bag, "sqlite3", rec["topics"])
    out = run(RosbagConvertConfig(bag=str(bag), out=str(tmp_path / "out"),
                                  config=write_mapping(tmp_path / "m.yaml", topics, episode_split="/recording")))
    ds = DatasetReader(out)
    assert ds.num_episodes == 2
    assert ds.features["observation.images.front"].shape == (12, 16, 3)
    # [200 ms, 900 ms): 14 ticks; [1200 ms, last message at 1991 ms]: 16 ticks
    assert list(ds.lengths) == [14, 16]
    infos = [ds.meta.episode_info(e) for e in range(2)]
    assert [i["start_time_ns"] for i in infos] == [BASE + 200 * MS, BASE + 1200 * MS]
    ticks = [BASE + 1200 * MS + k * 50 * MS for k in range(16)]
    state = rec["values"]["state"][held(rec["header"]["state"], ticks)]
    np.testing.assert_array_equal(ds.episode(1)["observation.state"], state.astype(np.float32))
    small = ds.episode(1)["observation.images.front"].astype(float)
    shrunk = [cv2.resize(gradient(j), (16, 12), interpolation=cv2.INTER_AREA).astype(float) for j in range(30)]
    # halving the size doubles the gradients' slope, and yuv420p's 2x2 chroma blocks lose more of it
    want = np.stack([shrunk[j] for j in held(rec["header"]["image"], ticks)])
    assert np.abs(small - want).mean(axis=(1, 2, 3)).max() < 6
    nearest = [int(np.argmin([np.abs(g - s).mean() for s in shrunk])) for g in small]
    assert nearest == held(rec["header"]["image"], ticks)


def test_stale_topic_is_recorded_and_warned(tmp_path, caplog):
    rec = recording(n_images=12)  # the cameras stop at 0.74 s of 2 s
    with caplog.at_level(logging.WARNING, logger="robolearn.data.convert.rosbag"):
        ds, _ = convert(tmp_path, "mcap", rec)
    info = ds.meta.episode_info(0)
    assert info["max_staleness_s"]["observation.images.front"] > 1.0
    assert info["stale_frames"]["observation.images.front"] > 20
    assert info["stale_frames"]["observation.state"] == 0
    assert "topic /camera/front/image_raw -> observation.images.front" in caplog.text


@pytest.mark.parametrize("encoding,make", [
    ("rgba8", lambda rgb: np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], -1)),
    ("bgra8", lambda rgb: np.concatenate([rgb[..., ::-1], np.zeros(rgb.shape[:2] + (1,), np.uint8)], -1)),
    ("mono8", lambda rgb: rgb[..., :1]),
])
def test_image_encodings_become_rgb(encoding, make):
    rgb = gradient(3)
    data = np.ascontiguousarray(make(rgb))
    padded = np.zeros((H, data.shape[1] * data.shape[2] + 4), np.uint8)  # rows with padding: step > width
    padded[:, :data.shape[1] * data.shape[2]] = data.reshape(H, -1)
    msg = M["sensor_msgs/msg/Image"](header=_header(1), height=H, width=W, encoding=encoding, is_bigendian=0,
                                     step=padded.shape[1], data=padded.reshape(-1))
    src = SOURCES["sensor_msgs/msg/Image"](TopicMap("/cam", "observation.images.cam"), ROBOT,
                                           "sensor_msgs/msg/Image", "m.yaml")
    got = src.decode(msg, 0, 0.0)
    want = np.repeat(rgb[..., :1], 3, -1) if encoding == "mono8" else rgb
    np.testing.assert_array_equal(got, want)


def test_message_types_come_from_the_bag_else_the_distribution():
    from rosbags.interfaces import Connection, MessageDefinition, MessageDefinitionFormat

    msgdef, _ = TS.generate_msgdef("std_msgs/msg/Bool", ros_version=2)
    conn = Connection(1, "/b", "std_msgs/msg/Bool", MessageDefinition(MessageDefinitionFormat.MSG, msgdef), "", 0,
                      None, None)
    store = _typestore(conn, TS)
    assert store is not TS and "std_msgs/msg/Bool" in store.types
    assert _typestore(conn._replace(msgdef=MessageDefinition(MessageDefinitionFormat.NONE, "")), TS) is TS


# ---- bad input: one DatasetError each, naming the file, topic or field ---------------------------
def _small(edit=None) -> dict:
    """A short recording (0.5 s) for the error cases; `edit(topics)` changes it."""
    js = [(BASE + j * 10 * MS, joint_state(BASE + j * 10 * MS, JOINTS, np.arange(9.0))) for j in range(50)]
    cam = [(BASE + j * 100 * MS, image(BASE + j * 100 * MS, gradient(j))) for j in range(5)]
    cmd = [(BASE + j * 50 * MS, float_array(np.arange(7.0))) for j in range(10)]
    topics = {
        "/joint_states": ("sensor_msgs/msg/JointState", js),
        "/camera/front/image_raw": ("sensor_msgs/msg/Image", cam),
        "/forward_position_controller/commands": ("std_msgs/msg/Float64MultiArray", cmd),
    }
    if edit:
        edit(topics)
    return topics


SMALL_MAPPING = {"/joint_states": "observation.state", "/camera/front/image_raw": "observation.images.front",
                 "/forward_position_controller/commands": "action"}


def _bad(tmp_path, topics=None, mapping=None, raw_mapping=None, **cfg) -> str:
    """Convert a bag that `topics` (default: `_small()`) describes; return the DatasetError's message.
    Nothing may be written before the error."""
    bag = tmp_path / "bag"
    if not bag.exists():
        write_bag(bag, "mcap", topics if topics is not None else _small())
    path = tmp_path / "m.yaml"
    if raw_mapping is not None:
        path.write_text(raw_mapping)
    else:
        write_mapping(path, mapping or SMALL_MAPPING)
    args = {"bag": str(bag), "out": str(tmp_path / "out"), "config": str(path), **cfg}
    with pytest.raises(DatasetError) as e:
        run(RosbagConvertConfig(**args))
    if "out" not in cfg:
        assert not (tmp_path / "out").exists()
    return str(e.value)


def test_bad_bag_paths(tmp_path):
    msg = _bad(tmp_path, bag=str(tmp_path / "nope"))
    assert "nope does not exist" in msg and "rosbag2 directory" in msg
    (tmp_path / "plain").mkdir()
    assert "plain is not a rosbag2 recording" in _bad(tmp_path, bag=str(tmp_path / "plain"))
    msg = _bad(tmp_path, bag=str(next((tmp_path / "bag").glob("*.mcap"))))
    assert "not a rosbag2 recording" in msg and f"pass bag={tmp_path / 'bag'}" in msg
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert "full already exists and is not empty" in _bad(tmp_path, out=str(tmp_path / "full"))


def test_bad_mapping_files(tmp_path):
    msg = _bad(tmp_path, config=str(tmp_path / "missing.yaml"))
    assert "missing.yaml does not exist" in msg and "hardware/rosbag/panda.yaml" in msg
    assert "m.yaml is not valid YAML" in _bad(tmp_path, raw_mapping="robot: panda\ntopics: [unclosed\n")
    msg = _bad(tmp_path, raw_mapping="robot: panda\ntask: t\ntopic: {}\n")
    assert "unknown key 'topic'" in msg and "Did you mean 'topics'?" in msg
    assert "unknown robot 'pnda'" in _bad(tmp_path, raw_mapping="robot: pnda\ntask: t\n")
    msg = _bad(tmp_path, mapping={"/joint_states": {"feature": "observation.state", "fields": ["positions"]}})
    assert "topics./joint_states: fields" in msg
    msg = _bad(tmp_path, mapping={"/joint_states": {"feature": "observation.state", "joints": ["panda_joint8"]}})
    assert "panda_joint8" in msg and "Did you mean" in msg
    msg = _bad(tmp_path, mapping={"/camera/front/image_raw": {"feature": "observation.images.front",
                                                              "fields": ["position"]}})
    assert "topics./camera/front/image_raw: 'fields' does not apply to sensor_msgs/msg/Image" in msg


def test_mapped_topic_not_in_bag_suggests_the_close_one(tmp_path):
    msg = _bad(tmp_path, mapping={"/joint_state": "observation.state"})
    assert "mapped topic /joint_state is not in bag" in msg and "Did you mean '/joint_states'?" in msg
    assert "/forward_position_controller/commands (std_msgs/msg/Float64MultiArray)" in msg  # the bag's topics


def test_unsupported_message_types(tmp_path):
    def chatter(topics):
        topics["/chatter"] = ("std_msgs/msg/String", [(BASE, M["std_msgs/msg/String"](data="hi"))])

    msg = _bad(tmp_path, _small(chatter), {"/chatter": "observation.chatter"})
    assert "topic /chatter is a std_msgs/msg/String" in msg and "sensor_msgs/msg/JointState" in msg
    msg = _bad(tmp_path, mapping={"/camera/front/image_raw": "observation.state"})
    assert "topics./camera/front/image_raw" in msg and "observation.images.<name>" in msg
    msg = _bad(tmp_path, mapping={"/joint_states": "observation.images.front"})
    assert "topics./joint_states" in msg and "numeric feature" in msg


def test_joint_state_missing_a_joint(tmp_path):
    def drop(topics):
        names = [n for n in JOINTS if n != "panda_joint3"]
        topics["/joint_states"] = ("sensor_msgs/msg/JointState",
                                   [(BASE + j * 10 * MS, joint_state(BASE + j * 10 * MS, names, np.arange(8.0)))
                                    for j in range(50)])

    msg = _bad(tmp_path, _small(drop))
    assert "topic /joint_states" in msg and "has no joint panda_joint3" in msg and "joints:" in msg


def test_nan_in_joint_state(tmp_path):
    def nan(topics):
        recv, m = topics["/joint_states"][1][7]
        m.position[1] = np.nan

    msg = _bad(tmp_path, _small(nan))
    assert "topic /joint_states" in msg and "message 7" in msg and "panda_joint2.position" in msg


def test_unknown_image_encoding(tmp_path):
    def depth(topics):
        for _, m in topics["/camera/front/image_raw"][1]:
            m.encoding = "16UC1"

    msg = _bad(tmp_path, _small(depth))
    assert "topic /camera/front/image_raw" in msg and "encoding '16UC1' of message 0" in msg
    assert "not supported" in msg and "rgb8" in msg


def test_odd_image_size_asks_for_resize(tmp_path):
    def odd(topics):
        topics["/camera/front/image_raw"] = ("sensor_msgs/msg/Image", [
            (BASE + j * 100 * MS, image(BASE + j * 100 * MS, gradient(j)[:15])) for j in range(5)])

    msg = _bad(tmp_path, _small(odd))
    assert "topic /camera/front/image_raw" in msg and "15x32" in msg and "resize: [16, 32]" in msg


def test_mapped_topic_without_messages(tmp_path):
    def empty(topics):
        topics["/joint_states"] = ("sensor_msgs/msg/JointState", [])

    msg = _bad(tmp_path, _small(empty))
    assert "topic /joint_states has no messages" in msg


def test_command_of_the_wrong_length(tmp_path):
    def nine(topics):
        topics["/forward_position_controller/commands"] = ("std_msgs/msg/Float64MultiArray", [
            (BASE + j * 50 * MS, float_array(np.arange(9.0))) for j in range(10)])

    msg = _bad(tmp_path, _small(nine))
    assert "topic /forward_position_controller/commands" in msg and "has 9 values" in msg and "joints:" in msg


def test_episode_split_that_never_starts(tmp_path):
    def off(topics):
        topics["/recording"] = ("std_msgs/msg/Bool", [(BASE, M["std_msgs/msg/Bool"](data=False))])

    path = tmp_path / "split.yaml"
    write_mapping(path, SMALL_MAPPING, episode_split="/recording")
    msg = _bad(tmp_path, _small(off), config=str(path))
    assert "episode_split topic /recording never turns true" in msg
