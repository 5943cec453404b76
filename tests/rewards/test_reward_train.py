"""`robolearn train reward` (run dir, logs, resume, refusals) and RA-BC in `robolearn train bc`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robolearn.data import DatasetReader, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.format import DatasetError
from robolearn.errors import ConfigError
from robolearn.rewards import load_reward_model
from robolearn.rewards.train import TrainRewardConfig, run, split_episodes


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_logs_and_tensorboard(reward_run, pp_dataset):
    """The session's reward run: 20 steps, save/val every 10, log every 5, one validation episode."""
    out = reward_run
    assert (out / "checkpoints" / "last").resolve().name == "step_000020"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000010", "step_000020"]
    for f in ("config.json", "model.safetensors", "stats.json", "training_state.json"):
        assert (out / "checkpoints" / "last" / f).is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    rows = _log(out)
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [5, 10, 15, 20]
    assert all(np.isfinite(r["loss"]) and "stage_loss" in r and "stage_accuracy" in r for r in losses)
    vals = [r for r in rows if any(k.startswith("val_") for k in r)]
    assert [r["step"] for r in vals] == [10, 20]
    for r in vals:
        assert -1 <= r["val_voc"] <= 1 and 0 <= r["val_stage_accuracy"] <= 1 and r["val_progress_mae"] >= 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["step"] == 20 and summary["resumed_from"] == 0 and summary["wall_time_s"] > 0
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["dataset"] == str(pp_dataset.resolve()) and cfg["steps"] == 20
    model = load_reward_model(out)
    train_eps, val_eps = model.metadata["train_episodes"], model.metadata["val_episodes"]
    assert sorted(train_eps + val_eps) == list(range(6)) and len(val_eps) == 1
    assert model.metadata["dataset"] == str(pp_dataset.resolve())
    assert model.stage_names == ["reach", "grasp", "lift", "transport", "place"]
    assert model.priors.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_split_episodes():
    tr, va = split_episodes(np.arange(10), 0.2, 0)
    assert len(va) == 2 and len(tr) == 8 and sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    tr2, va2 = split_episodes(np.arange(10), 0.2, 0)
    np.testing.assert_array_equal(va, va2)  # seeded
    tr, va = split_episodes(np.arange(1), 0.5, 0)
    assert tr.tolist() == [0] and va.tolist() == []  # always a training episode
    tr, va = split_episodes(np.arange(4), 0.0, 3)
    assert tr.tolist() == [0, 1, 2, 3] and va.size == 0


def test_resume_continues_to_the_same_weights(pp_dataset, tmp_path, make_train_config, capsys):
    """10 steps, then the same command with steps=20, ends where a straight 20-step run ends (the default
    warm-up of 100 steps covers both runs, so the LR schedule does not depend on the total steps)."""
    kw = dict(val_fraction=0.0, save_every=5, log_every=1)
    straight = run(make_train_config(pp_dataset, tmp_path / "straight", steps=20, **kw))
    cut = tmp_path / "cut"
    run(make_train_config(pp_dataset, cut, steps=10, **kw))
    assert (cut / "checkpoints" / "last").resolve().name == "step_000010"
    capsys.readouterr()
    run(make_train_config(pp_dataset, cut, steps=20, **kw))
    assert f"resuming {cut} from step 10" in capsys.readouterr().out
    assert (cut / "checkpoints" / "last").resolve().name == "step_000020"
    a = load_reward_model(straight).state_dict()
    b = load_reward_model(cut).state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k
    la = {r["step"]: r["loss"] for r in _log(straight) if "loss" in r}
    lb = {r["step"]: r["loss"] for r in _log(cut) if "loss" in r}
    assert sorted(lb) == list(range(1, 21))  # every step logged once
    np.testing.assert_allclose([lb[s] for s in range(1, 21)], [la[s] for s in range(1, 21)], rtol=1e-5)
    # a third run of the finished config resumes at 20 and trains nothing more
    run(make_train_config(pp_dataset, cut, steps=20, **kw))
    assert "from step 20" in capsys.readouterr().out
    c = load_reward_model(cut).state_dict()
    assert all(torch.equal(c[k], b[k]) for k in b)


def test_other_model_options_in_the_same_run_dir_are_refused(pp_dataset, tmp_path, make_train_config,
                                                               small_options):
    out = tmp_path / "r"
    run(make_train_config(pp_dataset, out, steps=2, val_fraction=0.0))
    with pytest.raises(ConfigError, match="different model_options"):
        run(make_train_config(pp_dataset, out, steps=2, val_fraction=0.0,
                              model_options={**small_options, "head": "frame_index"}))


def test_frame_index_baseline_trains(pp_dataset, tmp_path, make_train_config, small_options):
    out = run(make_train_config(pp_dataset, tmp_path / "fi", steps=3, val_every=3, save_every=3,
                                model_options={**small_options, "head": "frame_index", "failure_aware": False}))
    model = load_reward_model(out)
    assert not model.has_stages and model.config.head == "frame_index"
    vals = [r for r in _log(out) if "val_progress_mae" in r]
    assert vals and "val_stage_accuracy" not in vals[0]
    # its plot has progress and the annotated stages, no stage probabilities
    from robolearn.rewards.plot import PlotConfig, episode_curves
    from robolearn.rewards.plot import run as plot

    (curve,) = episode_curves(model, DatasetReader(pp_dataset), [4], device="cpu")
    assert set(curve) == {"reward", "progress", "label_stage"}
    png = plot(PlotConfig(reward=str(out), dataset=str(pp_dataset), episode=4, out=str(tmp_path / "fi.png"),
                          device="cpu"))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_dataset_without_stage_annotations(tmp_path, make_train_config):
    root = tmp_path / "plain"
    feats = {"observation.state": Feature("float32", (4,)), "action": Feature("float32", (2,))}
    rng = np.random.default_rng(0)
    with DatasetWriter.create(root, feats, 10, fsync=False) as w:
        for t in (8, 9):
            w.add_episode({"observation.state": rng.normal(size=(t, 4)).astype(np.float32),
                           "action": rng.normal(size=(t, 2)).astype(np.float32)}, EpisodeRecord("t"))
    with pytest.raises(DatasetError, match="robolearn annotate"):
        run(make_train_config(root, tmp_path / "out", steps=2))
    assert not (tmp_path / "out").exists()


def test_bad_train_config(pp_dataset, tmp_path, make_train_config):
    with pytest.raises(ConfigError, match="name the dataset"):
        run(TrainRewardConfig())
    for kw, match in (({"steps": 0}, "steps"), ({"val_fraction": 1.0}, "val_fraction"), ({"ema": 1.0}, "ema"),
                      ({"batch_size": 0}, "batch_size")):
        with pytest.raises(ConfigError, match=match):
            run(make_train_config(pp_dataset, tmp_path / "x", **kw))
    with pytest.raises(DatasetError, match=r"episodes \[7\] do not exist"):
        run(make_train_config(pp_dataset, tmp_path / "x", episodes=[0, 7]))
    with pytest.raises(ConfigError, match="n_frames"):
        run(make_train_config(pp_dataset, tmp_path / "x", model_options={"n_frames": 0}))


# ---- RA-BC -------------------------------------------------------------------------------------

def test_train_bc_with_progress_weighting(pp_dataset, reader, reward_run, tmp_path):
    from robolearn.inference.engine import InferenceEngine
    from robolearn.policies import load_policy
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc
    from robolearn.rewards.frames import EpisodeFrames
    from robolearn.rewards.rabc import rabc_weights

    out = train_bc(TrainBCConfig(dataset=str(pp_dataset), policy="mlp", out=str(tmp_path / "bc"), steps=4,
                                 batch_size=16, log_every=2, eval_episodes=0, progress=False, device="cpu",
                                 sample_weighting="progress", reward=str(reward_run), rabc_kappa=0.01,
                                 policy_options={"obs_keys": ["observation.state"], "hidden": [16]}))
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
    assert load_policy(out).config.obs_keys == ["observation.state"]
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    summary = json.loads((out / "rabc_weights.json").read_text())
    policy_cfg = load_policy(out).config
    delta = policy_cfg.horizon + policy_cfg.action_offset  # rabc_delta=0: the policy's chunk
    assert summary["rabc_delta_frames"] == delta
    npz = np.load(out / "rabc_weights.npz")
    w, deltas, offsets = npz["weights"], npz["deltas"], npz["episode_offsets"]
    assert w.shape == deltas.shape == (int(reader.lengths.sum()),)
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum(reader.lengths)[:-1]]))
    assert np.all((w >= 0) & (w <= 1))
    np.testing.assert_allclose(w, rabc_weights(deltas, 0.01), atol=1e-6)
    assert summary["rabc_mean_weight"] == pytest.approx(float(w.mean()), abs=1e-6)
    assert summary["rabc_full_weight_share"] == pytest.approx(float((w >= 1).mean()), abs=1e-6)
    # the deltas are the progress model's progress D frames ahead minus now; past the end 1 after a success
    model = load_reward_model(reward_run)
    table = EpisodeFrames(reader, model.config.obs_keys, np.arange(reader.num_episodes))
    scores = InferenceEngine(model, device="cpu").score_episodes(table)
    for ep, s in enumerate(scores):
        p = s["progress"].astype(np.float64)
        tail = 1.0 if reader.meta.success(ep) else p[-1]
        fut = np.array([p[t + delta] if t + delta < len(p) else tail for t in range(len(p))])
        np.testing.assert_allclose(deltas[offsets[ep]:offsets[ep] + len(p)], fut - p, atol=1e-5)


def test_progress_weighting_needs_a_reward_model(pp_dataset, tmp_path):
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc

    with pytest.raises(ConfigError, match="needs a reward model"):
        train_bc(TrainBCConfig(dataset=str(pp_dataset), policy="mlp", out=str(tmp_path / "bc"), steps=2,
                               eval_episodes=0, progress=False, sample_weighting="progress"))
    with pytest.raises(ConfigError, match="sample_weighting"):
        TrainBCConfig(dataset=str(pp_dataset), sample_weighting="reward").validate()
    with pytest.raises(ConfigError, match="rabc_delta"):
        TrainBCConfig(dataset=str(pp_dataset), rabc_delta=-1).validate()
    assert not (tmp_path / "bc").exists()


def test_progress_weighting_with_a_policy_checkpoint_as_reward(pp_dataset, reader, tmp_path):
    from robolearn.policies import make_policy
    from robolearn.policies.base import CheckpointError
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train_bc

    pol = make_policy("mlp", reader.features, reader.meta.stats, {"obs_keys": ["observation.state"],
                                                                  "hidden": [8]}).save(tmp_path / "pol")
    with pytest.raises(CheckpointError, match="not a reward model"):
        train_bc(TrainBCConfig(dataset=str(pp_dataset), policy="mlp", out=str(tmp_path / "bc"), steps=2,
                               batch_size=8, eval_episodes=0, progress=False, device="cpu",
                               sample_weighting="progress", reward=str(pol),
                               policy_options={"obs_keys": ["observation.state"], "hidden": [8]}))


def test_rerun_with_another_ema_is_refused(pp_dataset, tmp_path, make_train_config):
    out = tmp_path / "r"
    run(make_train_config(pp_dataset, out, steps=2, val_fraction=0.0))
    with pytest.raises(ConfigError, match="different ema"):
        run(make_train_config(pp_dataset, out, steps=4, val_fraction=0.0, ema=0.9))
