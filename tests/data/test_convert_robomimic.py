"""`robolearn convert robomimic`: small robomimic and raw robosuite HDF5 files, built here with h5py,
converted and read back; every malformed input is one DatasetError naming the demo and the key."""

from __future__ import annotations

import json
import logging

import h5py
import numpy as np
import pytest

from robolearn.data import DatasetError, DatasetReader, DatasetWriter
from robolearn.data.convert import robomimic
from robolearn.data.convert.robomimic import RobomimicConvertConfig, run

# deliberately not in the file's alphabetical order: demo_10 sorts last
LENGTHS = {"demo_0": 12, "demo_2": 20, "demo_10": 15}
ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 10, "robots": ["Panda"]}}
H, W = 16, 32


def _image(t: int, k: int) -> np.ndarray:
    """(t, H, W, 3) uint8 smooth gradients that slide every frame (noise would not survive H.264)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    f = np.arange(t, dtype=np.float32)[:, None, None]
    r = 128 + 90 * np.sin((x + 2 * f) / 24 + k)
    g = 128 + 90 * np.cos((y - f) / 16 + k)
    b = 128 + 60 * np.sin((x + y + 3 * f) / 28)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def _demo_arrays(t: int, k: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(k)
    rewards = np.zeros(t)
    dones = np.zeros(t, np.int64)
    if k == 0:
        rewards[-3:] = 1.0  # success by reward
    elif k == 1:
        dones[-1] = 1  # a last done alone does not say success (robomimic sets it on every demo)
    return {
        "actions": rng.uniform(-1, 1, (t, 7)),
        "rewards": rewards,
        "dones": dones,
        "states": rng.normal(size=(t, 9)),
        "obs/robot0_joint_pos": rng.normal(size=(t, 7)),
        "obs/robot0_eef_pos": rng.normal(size=(t, 3)),
        "obs/robot0_gripper_qpos": rng.normal(size=(t, 2)),
        "obs/robot0_eef_quat": rng.normal(size=(t, 4)),
        "obs/object": rng.normal(size=(t, 10)),
        "obs/agentview_image": _image(t, k),
        "obs/robot0_eye_in_hand_image": _image(t, k + 5)[:, ::-1],
        "obs/agentview_depth": rng.uniform(size=(t, H, W, 1)).astype(np.float32),
    }


def make_robomimic(path, lengths=None, masks=None, edit=None, env_args=ENV_ARGS) -> dict[str, dict]:
    """Write a robomimic-style file; returns {demo: {dataset path: array}}. `edit(arrays)` changes the
    arrays of every demo before they are written (a value of None drops that dataset)."""
    lengths = lengths or LENGTHS
    out = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = env_args if isinstance(env_args, str) else json.dumps(env_args)
        data.attrs["total"] = sum(lengths.values())
        for k, (demo, t) in enumerate(lengths.items()):
            arrays = _demo_arrays(t, k)
            if edit:
                edit(demo, arrays)
            g = data.create_group(demo)
            g.attrs["num_samples"] = t
            g.attrs["model_file"] = "<mujoco/>"
            for key, v in arrays.items():
                if v is not None:
                    g.create_dataset(key, data=v)
            out[demo] = arrays
        for key, names in (masks or {}).items():
            f.create_dataset(f"mask/{key}", data=np.array([n.encode() for n in names], dtype="S"))
    return out


def convert(src, out, **kw):
    return run(RobomimicConvertConfig(file=str(src), out=str(out), **kw))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robomimic")
    arrays = make_robomimic(tmp / "lift.hdf5", masks={"train": ["demo_0", "demo_10"], "valid": ["demo_2"]})
    out = convert(tmp / "lift.hdf5", tmp / "ds")
    return arrays, DatasetReader(out)


def test_features_and_metadata(converted):
    _, reader = converted
    meta = reader.meta
    f = meta.features
    assert f["observation.state"].dtype == "float32" and f["observation.state"].shape == (16,)
    # the fixed order, not the file's alphabetical one
    want_keys = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "robot0_joint_pos"]
    assert meta.robolearn["state_keys"] == want_keys
    assert f["observation.state"].names[:4] == ["robot0_eef_pos.0", "robot0_eef_pos.1", "robot0_eef_pos.2",
                                                "robot0_eef_quat.0"]
    assert f["observation.environment_state"].shape == (10,)
    assert meta.robolearn["environment_state_keys"] == ["object"]
    assert f["observation.images.agentview"].is_video and f["observation.images.agentview"].shape == (H, W, 3)
    assert f["observation.images.robot0_eye_in_hand"].is_video
    assert not any("depth" in k for k in f)  # depth maps are skipped
    assert f["action"].shape == (7,) and f["action"].dtype == "float32"
    assert f["next.reward"].dtype == "float32" and f["next.reward"].shape == (1,)
    assert f["next.done"].dtype == "bool" and f["sim_state"].dtype == "float64" and f["sim_state"].shape == (9,)
    assert meta.fps == 10 and meta.info["robot_type"] == "panda"
    assert meta.robolearn["source"] == "robomimic" and meta.robolearn["env_args"] == ENV_ARGS
    assert meta.robolearn["demos"] == ["demo_0", "demo_2", "demo_10"] and meta.robolearn["num_demos"] == 3
    assert meta.robolearn["filter_keys"] == {"train": [0, 2], "valid": [1]}
    assert meta.num_episodes == 3 and [meta.task(i) for i in range(3)] == ["Lift"] * 3


def test_frames_round_trip(converted):
    arrays, reader = converted
    keys = reader.meta.robolearn["state_keys"]
    for ep, (demo, a) in enumerate(arrays.items()):
        got = reader.episode(ep)
        assert len(got["action"]) == LENGTHS[demo]
        assert reader.meta.episode_info(ep)["demo"] == demo
        np.testing.assert_array_equal(got["action"], a["actions"].astype(np.float32))
        state = np.concatenate([a[f"obs/{k}"] for k in keys], 1).astype(np.float32)
        np.testing.assert_array_equal(got["observation.state"], state)
        np.testing.assert_array_equal(got["observation.environment_state"], a["obs/object"].astype(np.float32))
        np.testing.assert_array_equal(got["next.reward"].reshape(-1), a["rewards"].astype(np.float32))
        np.testing.assert_array_equal(got["next.done"].reshape(-1), a["dones"] != 0)
        np.testing.assert_array_equal(got["sim_state"], a["states"])
        for cam in ("agentview", "robot0_eye_in_hand"):
            img = got[f"observation.images.{cam}"]
            assert img.shape == (LENGTHS[demo], H, W, 3) and img.dtype == np.uint8
            err = np.abs(img.astype(np.float32) - a[f"obs/{cam}_image"]).mean()
            assert err < 3, (demo, cam, err)


def test_success_flags(converted):
    _, reader = converted
    # demo_0: reward reaches 1; demo_2: last done set; demo_10: neither -> unknown
    assert [reader.meta.success(i) for i in range(3)] == [True, None, None]
    assert reader.meta.episode_info(0)["max_reward"] == 1.0
    assert reader.meta.episode_info(2) == {"demo": "demo_10", "num_samples": 15, "max_reward": 0.0,
                                           "last_done": False}


def test_filter_key_obs_keys_and_overrides(tmp_path):
    arrays = make_robomimic(tmp_path / "f.hdf5", masks={"train": ["demo_0", "demo_10"], "valid": ["demo_2"]})
    out = convert(tmp_path / "f.hdf5", tmp_path / "valid", filter_key="valid", task="lift the cube", fps=15,
                  obs_keys=["robot0_joint_pos", "robot0_eef_pos"], keep_model_file=True)
    r = DatasetReader(out)
    assert r.meta.num_episodes == 1 and r.meta.episode_info(0)["demo"] == "demo_2"
    assert r.meta.episode_info(0)["model_file"] == "<mujoco/>"
    assert r.meta.robolearn["filter_keys"] == {"train": [], "valid": [0]}
    assert r.meta.task(0) == "lift the cube" and r.meta.fps == 15
    assert r.meta.robolearn["state_keys"] == ["robot0_eef_pos", "robot0_joint_pos"]
    assert set(r.meta.features) == {"action", "observation.state", "next.reward", "next.done", "sim_state"}
    a = arrays["demo_2"]
    want = np.concatenate([a["obs/robot0_eef_pos"], a["obs/robot0_joint_pos"]], 1).astype(np.float32)
    np.testing.assert_array_equal(r.episode(0)["observation.state"], want)


def test_raw_robosuite_demos(tmp_path, caplog):
    src = tmp_path / "demo.hdf5"
    rng = np.random.default_rng(0)
    states = {"demo_1": rng.normal(size=(11, 32)), "demo_2": rng.normal(size=(9, 32))}
    actions = {d: rng.uniform(-1, 1, (len(s), 7)) for d, s in states.items()}
    with h5py.File(src, "w") as f:
        data = f.create_group("data")
        data.attrs["env"] = "Lift"
        data.attrs["env_info"] = json.dumps({"env_name": "Lift", "robots": "Sawyer"})
        for d in states:
            g = data.create_group(d)
            g.attrs["model_file"] = "<mujoco/>"
            g.create_dataset("states", data=states[d])
            g.create_dataset("actions", data=actions[d])
    with caplog.at_level(logging.WARNING):
        out = convert(src, tmp_path / "ds")
    assert "replaying the states" in caplog.text
    r = DatasetReader(out)
    assert set(r.meta.features) == {"action", "sim_state"}
    assert r.meta.robolearn["source"] == "robosuite" and r.meta.info["robot_type"] == "sawyer"
    assert r.meta.task(0) == "Lift" and r.meta.fps == 20 and r.meta.success(0) is None
    for ep, d in enumerate(states):
        np.testing.assert_array_equal(r.episode(ep)["sim_state"], states[d])
        np.testing.assert_array_equal(r.episode(ep)["action"], actions[d].astype(np.float32))


def test_failure_midway_reports_progress(tmp_path, monkeypatch):
    make_robomimic(tmp_path / "f.hdf5", edit=lambda d, a: a.update({"obs/agentview_image": None,
                                                                     "obs/robot0_eye_in_hand_image": None}))
    real = DatasetWriter.add_episode

    def add_episode(self, frames, record):
        if len(self.episodes) == 1:
            raise OSError(28, "No space left on device")
        return real(self, frames, record)

    monkeypatch.setattr(robomimic.DatasetWriter, "add_episode", add_episode)
    with pytest.raises(DatasetError, match=r"data/demo_2 failed.*No space left.*1 of 3 demos were converted"):
        convert(tmp_path / "f.hdf5", tmp_path / "ds")
    meta = DatasetReader(tmp_path / "ds").meta  # what was committed stays readable, and says it is partial
    assert meta.num_episodes == 1 and meta.robolearn["num_demos"] == 3


# ---- bad input: one DatasetError naming the file, the demo and the key, before anything is written --
def _set(key, value):
    def edit(demo, arrays):
        if demo == "demo_2":
            arrays[key] = value(arrays[key]) if callable(value) else value
    return edit


def _nan_at(frame, col=0, value=np.nan):
    def f(a):
        a = a.copy()
        a[frame, col] = value
        return a
    return f


BAD = {
    "no_actions": (dict(edit=_set("actions", None)), r"data/demo_2 has no 'actions'"),
    "obs_length": (dict(edit=_set("obs/object", lambda a: a[:-2])),
                   r"data/demo_2/obs/object has 18 frames but data/demo_2/actions has 20"),
    "nan_action": (dict(edit=_set("actions", _nan_at(4, 2))), r"data/demo_2/actions has nan at frame 4 \(column 2\)"),
    "inf_obs": (dict(edit=_set("obs/robot0_eef_pos", _nan_at(7, 1, np.inf))),
                r"data/demo_2/obs/robot0_eef_pos has inf at frame 7"),
    "float32_overflow": (dict(edit=_set("obs/object", _nan_at(3, 0, 1e300))),
                         r"data/demo_2/obs/object has inf at frame 3"),
    "missing_obs_key": (dict(edit=_set("obs/object", None)), r"data/demo_2 has no 'obs/object'"),
    "obs_shape": (dict(edit=_set("obs/robot0_eef_pos", lambda a: a[:, :2])),
                  r"data/demo_2/obs/robot0_eef_pos has frames of shape \(2,\); data/demo_0's are \(3,\)"),
    "env_args_json": (dict(env_args="{'env_name': 'Lift'"), r"data.attrs\['env_args'\] is not valid JSON"),
    "odd_image": (dict(edit=lambda d, a: a.update({"obs/agentview_image": a["obs/agentview_image"][:, :15]})),
                  r"data/demo_0/obs/agentview_image frames are 15x32; observation.images.agentview .*even"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_content(tmp_path, case):
    kw, pattern = BAD[case]
    src = tmp_path / "bad.hdf5"
    make_robomimic(src, **kw)
    with pytest.raises(DatasetError, match=pattern) as e:
        convert(src, tmp_path / "out")
    assert str(src) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_files_and_options(tmp_path):
    with pytest.raises(DatasetError, match=r"missing\.hdf5: no such file"):
        convert(tmp_path / "missing.hdf5", tmp_path / "out")
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match=r"text\.hdf5: not an HDF5 file"):
        convert(tmp_path / "text.hdf5", tmp_path / "out")
    with h5py.File(tmp_path / "nodata.hdf5", "w") as f:
        f.create_group("demos")
    with pytest.raises(DatasetError, match=r"nodata\.hdf5: no 'data' group.*\['demos'\]"):
        convert(tmp_path / "nodata.hdf5", tmp_path / "out")
    src = tmp_path / "ok.hdf5"
    make_robomimic(src, lengths={"demo_0": 4, "demo_1": 4}, masks={"train": ["demo_0"], "valid": ["demo_1"]})
    with pytest.raises(DatasetError, match=r"ok\.hdf5: unknown filter_key 'test'; available filter keys: train, "
                                           r"valid"):
        convert(src, tmp_path / "out", filter_key="test")
    with pytest.raises(DatasetError, match=r"data/demo_0/obs has no \['wrist_image'\]; it has \[.*'object'"):
        convert(src, tmp_path / "out", obs_keys=["wrist_image"])
    with pytest.raises(DatasetError, match=r"obs/agentview_depth cannot be converted \(depth maps"):
        convert(src, tmp_path / "out", obs_keys=["agentview_depth"])
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(DatasetError, match=r"taken already exists and is not an empty directory"):
        convert(src, tmp_path / "taken")
