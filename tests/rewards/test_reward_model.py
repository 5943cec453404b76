"""The stage-aware progress model and its frame-index baseline: EpisodeFrames windows, output shapes and
formula, refused inputs, checkpoints (round trip and every refusal), and stage checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.stages import StageAnnotation
from robolearn.errors import ConfigError, UnknownNameError
from robolearn.policies import load_policy, make_policy
from robolearn.policies.base import CheckpointError, ObservationError
from robolearn.rewards import (
    check_stages,
    get_reward_model_class,
    load_reward_model,
    make_reward_model,
    reward_model_names,
)
from robolearn.rewards.frames import EpisodeFrames

CAM, STATE, ENV_STATE = "observation.images.front", "observation.state", "observation.environment_state"
STAGES = ["reach", "grasp", "lift", "transport", "place"]


def _model(reader, options=None, **kw):
    torch.manual_seed(0)
    kw.setdefault("stage_names", reader.meta.stage_names)
    return make_reward_model("stage_progress", reader.features, reader.meta.stats, options, **kw).eval()


@pytest.fixture(scope="module")
def table(reader):
    """Episodes 1, 3 and 0 (in that order) with camera and state."""
    return EpisodeFrames(reader, [CAM, STATE], [1, 3, 0])


# ---- EpisodeFrames -----------------------------------------------------------------------------

def test_episode_frames_layout(reader, table):
    lengths = reader.lengths[[1, 3, 0]]
    assert len(table) == lengths.sum()
    np.testing.assert_array_equal(table.lengths, lengths)
    np.testing.assert_array_equal(table.starts, [0, lengths[0], lengths[0] + lengths[1]])
    np.testing.assert_array_equal(table.episode, np.repeat([1, 3, 0], lengths))
    np.testing.assert_array_equal(table.frame, np.concatenate([np.arange(n) for n in lengths]))
    assert table.data[CAM].dtype == np.uint8 and table.data[CAM].shape == (len(table), 32, 32, 3)
    ep3 = reader.episode(3, [CAM, STATE])
    rows = table.rows_of(1)
    np.testing.assert_array_equal(table.data[CAM][rows], ep3[CAM])
    np.testing.assert_array_equal(table.data[STATE][rows], ep3[STATE])
    assert table.video_keys == [CAM]


def test_window_rows_never_cross_episode_edges(table):
    n, stride = 4, 3
    rows = np.arange(len(table))
    win = table.window_rows(rows, n, stride)
    assert win.shape == (len(table), n)
    np.testing.assert_array_equal(win[:, -1], rows)  # newest last
    assert np.all(np.diff(win, axis=1) >= 0)  # oldest first
    # every frame of a window is in the window's own episode, at frame - k * stride (clamped to 0)
    assert np.all(table.first[win] == table.first[rows][:, None])
    want = np.maximum(table.frame[:, None] - np.arange(n)[::-1] * stride, 0)
    np.testing.assert_array_equal(table.frame[win], want)
    # the second and third episode's first windows repeat their own first frame, never earlier rows
    for i in (1, 2):
        first = table.starts[i]
        np.testing.assert_array_equal(win[first], [first] * n)
        np.testing.assert_array_equal(win[first + 4], [first, first, first + 1, first + 4])
        assert win[first:first + 10].min() == first


def test_frames_and_windows_tensors(table):
    rows = np.array([[0, 5, 7], [60, 61, 62]])
    f = table.frames(rows)
    cam = f[CAM]
    assert cam.shape == (2, 3, 3, 32, 32) and cam.dtype == torch.float32
    assert float(cam.min()) >= 0.0 and float(cam.max()) <= 1.0
    want = torch.from_numpy(table.data[CAM][rows.reshape(-1)]).permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(cam.reshape(-1, 3, 32, 32), want)
    assert f[STATE].shape == (2, 3, 23)
    torch.testing.assert_close(f[STATE].reshape(-1, 23), torch.from_numpy(table.data[STATE][rows.reshape(-1)]))
    w = table.windows(np.array([0, 10, 100]), 3, 4)
    assert w[CAM].shape == (3, 3, 3, 32, 32) and w[STATE].shape == (3, 3, 23)
    torch.testing.assert_close(w[STATE][0], torch.from_numpy(table.data[STATE][[0, 0, 0]]))


def test_episode_frames_memory_guard(reader):
    with pytest.raises(ConfigError, match="max_memory_gb"):
        EpisodeFrames(reader, [CAM, STATE], [0, 1], max_memory_gb=1e-6)


# ---- the model ---------------------------------------------------------------------------------

def test_registry():
    assert "stage_progress" in reward_model_names()
    assert get_reward_model_class("stage_progress").name == "stage_progress"
    with pytest.raises(UnknownNameError, match="stage_progres"):
        get_reward_model_class("stage_progres")


def test_outputs_shapes_and_progress_formula(reader, table, small_options):
    priors = [1.0, 1.0, 1.0, 1.0, 2.0]
    model = _model(reader, small_options, stage_priors=priors)
    assert model.has_stages and model.has_progress
    assert model.config.obs_keys == [CAM, STATE]  # default: every camera plus observation.state
    np.testing.assert_allclose(model.priors.numpy(), np.array(priors) / 6, rtol=1e-6)
    np.testing.assert_allclose(model.cum_priors.numpy(), [0, 1 / 6, 2 / 6, 3 / 6, 4 / 6], rtol=1e-6, atol=1e-7)
    batch = table.windows(np.array([0, 3, 30, 70, 100, 150]), model.config.n_frames, model.config.frame_stride)
    with torch.no_grad():
        out = model.outputs(batch)
        p, stage, probs = out["progress"], out["stage"], out["stage_probs"]
        assert p.shape == (6,) and stage.shape == (6,) and probs.shape == (6, 5)
        assert stage.dtype == torch.long
        assert torch.all((p >= 0) & (p <= 1))
        torch.testing.assert_close(probs.sum(1), torch.ones(6))
        torch.testing.assert_close(stage, probs.argmax(1))
        torch.testing.assert_close(out["reward"], p)
        want = (probs * (model.cum_priors + out["tau"] * model.priors)).sum(1)
        torch.testing.assert_close(p, want)
        torch.testing.assert_close(model.progress(batch), p)
        torch.testing.assert_close(model.compute_reward(batch), p)
        torch.testing.assert_close(model.stage(batch), stage)


def test_frame_index_head_has_no_stages(reader, table, small_options):
    model = _model(reader, {**small_options, "head": "frame_index"})
    assert not model.has_stages and model.has_progress
    batch = table.windows(np.array([0, 50, 120]), model.config.n_frames, model.config.frame_stride)
    with torch.no_grad():
        out = model.outputs(batch)
    assert set(out) == {"reward", "progress"}
    assert out["progress"].shape == (3,) and torch.all((out["progress"] >= 0) & (out["progress"] <= 1))
    with pytest.raises(ConfigError, match="no stages"):
        model.stage(batch)
    check_stages(model, ["anything", "else"], "dataset x")  # a model without stages fits any data


def test_privileged_reads_environment_state(reader, small_options):
    model = _model(reader, {**small_options, "privileged": True})
    assert model.config.obs_keys == [CAM, STATE, ENV_STATE]
    state_only = _model(reader, {**small_options, "obs_keys": [STATE]})
    assert state_only.image_keys == [] and len(state_only.cameras) == 0


@pytest.mark.parametrize("options, kw, match", [
    ({}, {"stage_priors": [0.5, 0.5]}, "stage_priors"),
    ({}, {"stage_priors": [0.2, 0.2, 0.2, 0.2, -0.2]}, "stage_priors"),
    ({}, {"stage_priors": [0.2, 0.2, float("nan"), 0.2, 0.2]}, "stage_priors"),
    ({}, {"stage_names": []}, "stage names"),
    ({"head": "bogus"}, {}, "head"),
    ({"n_frames": 0}, {}, "n_frames"),
    ({"frame_stride": 0}, {}, "frame_stride"),
    ({"dropout": 1.0}, {}, "dropout"),
    ({"channels": []}, {}, "channels"),
    ({"obs_keys": ["observation.images.wrist"]}, {}, "not features"),
    ({"hiden": [8]}, {}, "hiden"),
])
def test_bad_model_config_raises(reader, small_options, options, kw, match):
    with pytest.raises(ConfigError, match=match):
        _model(reader, {**small_options, **options}, **kw)


def test_check_batch_names_the_bad_key(reader, table, small_options):
    model = _model(reader, small_options)
    n = model.config.n_frames
    good = table.windows(np.array([0, 1]), n, model.config.frame_stride)
    model.check_batch(good)
    with pytest.raises(ObservationError, match=STATE):
        model.outputs({CAM: good[CAM]})
    with pytest.raises(ObservationError, match=CAM):  # channel-last camera
        model.outputs({**good, CAM: good[CAM].permute(0, 1, 3, 4, 2)})
    with pytest.raises(ObservationError, match=STATE):  # wrong state size
        model.outputs({**good, STATE: good[STATE][..., :20]})
    with pytest.raises(ObservationError, match=rf"{STATE}.*\(B, {n}, 23\)"):  # wrong number of frames
        model.outputs({**good, STATE: good[STATE][:, :1]})
    bad = good[STATE].clone()
    bad[1, 0, 3] = float("nan")
    with pytest.raises(ObservationError, match=rf"{STATE}.*NaN"):
        model.outputs({**good, STATE: bad})
    cam = good[CAM].clone()
    cam[0, 0, 0, 0, 0] = float("inf")
    with pytest.raises(ObservationError, match=rf"{CAM}.*NaN or inf"):
        model.outputs({**good, CAM: cam})
    with pytest.raises(ObservationError, match=rf"{CAM}.*dtype"):
        model.outputs({**good, CAM: (good[CAM] * 255).to(torch.uint8)})


# ---- checkpoints -------------------------------------------------------------------------------

def test_save_load_round_trip(reader, table, small_options, tmp_path):
    model = _model(reader, {**small_options, "n_frames": 2, "frame_stride": 3},
                   stage_priors=[0.3, 0.1, 0.1, 0.2, 0.3])
    model.metadata = {"dataset": "somewhere", "stage_mean_frames": [1.0, 2.0, 3.0, 4.0, 5.0]}
    path = model.save(tmp_path / "ckpt")
    raw = json.loads((path / "config.json").read_text())
    assert raw["kind"] == "reward_model" and raw["type"] == "stage_progress"
    assert raw["stage_names"] == STAGES and len(raw["stage_priors"]) == 5
    loaded = load_reward_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.stage_names == STAGES and loaded.metadata == model.metadata
    torch.testing.assert_close(loaded.priors, model.priors, rtol=0, atol=0)
    batch = table.windows(np.arange(0, len(table), 17), 2, 3)
    with torch.no_grad():
        a, b = model.outputs(batch), loaded.outputs(batch)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    # frame-index baseline too: no priors saved, still no stages after loading
    fi = _model(reader, {**small_options, "head": "frame_index"})
    fi_loaded = load_reward_model(fi.save(tmp_path / "fi"))
    assert not fi_loaded.has_stages
    batch = table.windows(np.arange(5), 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(fi_loaded.outputs(batch)["progress"], fi.outputs(batch)["progress"], rtol=0, atol=0)


def test_load_accepts_a_run_directory(reward_run):
    a = load_reward_model(reward_run)
    b = load_reward_model(reward_run / "checkpoints" / "last")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert a.metadata["stage_mean_frames"] and len(a.metadata["train_episodes"]) == 5


def test_loading_a_policy_as_a_reward_model_and_back(reader, reward_run, tmp_path):
    policy = make_policy("mlp", reader.features, reader.meta.stats, {"obs_keys": [STATE], "hidden": [8]})
    pol = policy.save(tmp_path / "policy")
    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(pol)
    with pytest.raises(CheckpointError, match="reward model checkpoint, not a policy"):
        load_policy(reward_run / "checkpoints" / "last")
    with pytest.raises(CheckpointError, match="not a policy"):
        load_policy(reward_run)  # a run directory resolves to its checkpoint first


def _copy_ckpt(reward_run, dst):
    shutil.copytree((reward_run / "checkpoints" / "last").resolve(), dst)
    return dst


def _edit_config(path, **changes):
    raw = json.loads((path / "config.json").read_text())
    raw.update(changes)
    (path / "config.json").write_text(json.dumps(raw))
    return raw


def test_damaged_checkpoints_are_refused(reward_run, tmp_path):
    p = _copy_ckpt(reward_run, tmp_path / "version")
    _edit_config(p, format_version=99)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "priors")
    _edit_config(p, stage_priors=[0.5, 0.5])
    with pytest.raises(CheckpointError, match="stage_priors"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "shape")
    raw = json.loads((p / "config.json").read_text())
    _edit_config(p, config={**raw["config"], "hidden": [32]})
    with pytest.raises(CheckpointError, match="shape"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "layers")
    _edit_config(p, config={**raw["config"], "hidden": [64, 64]})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "unknown")
    _edit_config(p, config={**raw["config"], "bogus_field": 1})
    with pytest.raises(CheckpointError, match="bogus_field"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "weights")
    (p / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_reward_model(p)

    p = _copy_ckpt(reward_run, tmp_path / "json")
    (p / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_reward_model(p)

    with pytest.raises(CheckpointError, match="no such checkpoint directory .a reward model checkpoint"):
        load_reward_model(tmp_path / "nothing_here")


# ---- stage checks ------------------------------------------------------------------------------

def test_check_stages(reward_model):
    check_stages(reward_model, STAGES, "dataset d")
    with pytest.raises(ConfigError) as e:
        check_stages(reward_model, ["reach", "grasp", "lift"], "task 'lift'")
    msg = str(e.value)
    assert "reach > grasp > lift > transport > place" in msg and "has stages reach > grasp > lift," in msg
    with pytest.raises(ConfigError, match=r"\(none\)"):
        check_stages(reward_model, [], "dataset d")
    with pytest.raises(ConfigError, match="place > transport"):  # order matters
        check_stages(reward_model, ["reach", "grasp", "lift", "place", "transport"], "dataset d")


@pytest.fixture(scope="module")
def other_stages_dataset(tmp_path_factory):
    """Two episodes with the same features as pp_dataset's model inputs, annotated with other stages."""
    root = tmp_path_factory.mktemp("other") / "d"
    feats = {STATE: Feature("float32", (23,)), CAM: Feature("video", (32, 32, 3)), "action": Feature("float32", (7,))}
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, feats, 10, fsync=False) as w:
        for t in (20, 24):
            frames = {STATE: rng.normal(size=(t, 23)).astype(np.float32),
                      CAM: rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8),
                      "action": rng.uniform(-1, 1, (t, 7)).astype(np.float32)}
            w.add_episode(frames, EpisodeRecord("push", StageAnnotation(["approach", "push"], [0, 10], [9, t - 1]),
                                                True))
    return root


def test_other_stages_dataset_is_refused_by_plot_and_rabc(reward_run, other_stages_dataset, tmp_path):
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc
    from robolearn.rewards.plot import PlotConfig
    from robolearn.rewards.plot import run as plot

    assert DatasetReader(other_stages_dataset).meta.stage_names == ["approach", "push"]
    with pytest.raises(ConfigError) as e:
        plot(PlotConfig(reward=str(reward_run), dataset=str(other_stages_dataset), out=str(tmp_path / "p.png"),
                        device="cpu"))
    assert "approach > push" in str(e.value) and "reach > grasp > lift > transport > place" in str(e.value)
    assert not (tmp_path / "p.png").exists()
    with pytest.raises(ConfigError) as e:
        train_bc(TrainBCConfig(dataset=str(other_stages_dataset), policy="mlp", out=str(tmp_path / "bc"), steps=2,
                               batch_size=4, eval_episodes=0, progress=False, device="cpu",
                               sample_weighting="progress", reward=str(reward_run),
                               policy_options={"obs_keys": [STATE], "hidden": [8]}))
    assert "approach > push" in str(e.value) and "reach > grasp > lift > transport > place" in str(e.value)
