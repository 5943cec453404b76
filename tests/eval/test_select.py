"""`robolearn select` on tiny lift datasets and briefly trained MLPs: the ood score, the ranking, the files
and report, the feature layer of every registered policy type, bad input, and the sim-to-sim check's
quick budget.

The policies are trained for a few dozen steps, so their sim success is ~0; what is checked is the
ood score (which needs only the encoder to be a fixed map) and the bookkeeping, not the skill."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from robolearn.errors import ConfigError
from robolearn.eval.select import (
    _FEATURE_LAYERS,
    SelectConfig,
    SelectError,
    combined_score,
    embed_dataset,
    format_result,
    run,
)
from robolearn.sim.config import PhysicsRandomization, RandomizationConfig

SHIFTED = RandomizationConfig(physics=PhysicsRandomization(actuator_gain_scale=(0.3, 0.5), mass_scale=(1.5, 2.0),
                                                           observation_noise_std=0.02))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Two state-only lift datasets (nominal, shifted) and an MLP trained on each (`train bc`)."""
    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.policies.train import TrainBCConfig
    from robolearn.policies.train import run as train

    tmp = tmp_path_factory.mktemp("select")
    out = {}
    for name, rand, seed in (("nominal", RandomizationConfig(), 0), ("shifted", SHIFTED, 50)):
        out[name] = collect(CollectConfig(task="lift", episodes=5, out=str(tmp / name), num_envs=5, cameras=[],
                                          seed=seed, randomization=rand, progress=False, fsync=False))
        out[f"policy_{name}"] = train(TrainBCConfig(
            dataset=str(out[name]), policy="mlp", out=str(tmp / f"bc_{name}"), steps=40, batch_size=64,
            save_every=40, eval_episodes=0, progress=False, device="cpu", policy_options={"hidden": [64, 64]}))
    return out


def _select(policies: list[Path], real: Path, out: Path, **kw) -> dict:
    opts = {"sim_episodes": 2, "num_envs": 2, "max_episode_steps": 10, "max_frames": 400, "device": "cpu",
            "progress": False, **kw}
    return run(SelectConfig(policies=[str(p) for p in policies], real_dataset=str(real), out=str(out), **opts))


@pytest.mark.parametrize("method", ["knn", "mahalanobis"])
def test_ood_near_zero_on_training_data_and_higher_when_shifted(data, tmp_path, method):
    same = _select([data["policy_nominal"]], data["nominal"], tmp_path / "same", ood_method=method)
    shifted = _select([data["policy_nominal"]], data["shifted"], tmp_path / "shifted", ood_method=method)
    ood_same, ood_shifted = same["policies"][0]["ood"], shifted["policies"][0]["ood"]
    # the training data itself is no farther from the reference than held-out training episodes are
    assert ood_same < 0.25, ood_same
    assert ood_shifted > ood_same + 0.5, (ood_same, ood_shifted)


def test_ranking_files_and_report(data, tmp_path):
    from robolearn.data.dataset import DatasetReader

    pols = [data["policy_nominal"], data["policy_shifted"]]
    r = _select(pols, data["shifted"], tmp_path / "sel", beta=2.0)
    out = tmp_path / "sel"
    assert json.loads((out / "selection.json").read_text()) == r
    rows = r["policies"]
    real_frames = DatasetReader(data["shifted"]).num_frames
    assert [p["rank"] for p in rows] == [1, 2] and r["ranking"] == [p["name"] for p in rows]
    assert sorted(r["ranking"]) == ["bc_nominal", "bc_shifted"] and r["selected"] == r["ranking"][0]
    by = {p["name"]: p for p in rows}
    # the policy trained on the shifted setting finds the "real" (shifted) data familiar; the nominal one does not
    assert by["bc_shifted"]["ood"] < by["bc_nominal"]["ood"]
    for p in rows:
        assert p["score"] == pytest.approx(combined_score(p["sim_success"], p["ood"], 2.0))
        assert p["score"] == pytest.approx(p["sim_success"] * math.exp(-2.0 * max(p["ood"], 0.0)))
        assert p["sim_episodes"] == 2 and 0 <= p["sim_ci95"][0] <= p["sim_success"] <= p["sim_ci95"][1] <= 1
        assert p["frames"]["real"] == min(400, real_frames) and p["feature_dim"] == 64
        assert p["training_dataset"] == str(data[p["name"].removeprefix("bc_")].resolve())
        assert "training randomization" in p["sim_randomization_source"]
        metrics = json.loads(Path(p["sim_metrics"]).read_text())  # `robolearn eval`'s own record of the episodes
        assert Path(p["sim_metrics"]) == out / "sim" / p["name"] / "metrics.json"
        assert metrics["success_rate"] == p["sim_success"] and metrics["episodes"] == 2
    assert by["bc_shifted"]["sim_randomization"]["physics"]["observation_noise_std"] == 0.02
    scores = [(p["score"], p["sim_success"], -p["ood"]) for p in rows]
    assert scores == sorted(scores, reverse=True)
    assert (out / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert table.startswith("| rank | policy | sim success") and "bc_nominal" in table and "bc_shifted" in table
    page = (out / "report.html").read_text()
    for part in ("bc_nominal", "bc_shifted", "data:image/png;base64,", "Definitions", "exp(-2", "VSDR"):
        assert part in page
    assert "src=\"http" not in page and "src='http" not in page  # self-contained
    text = format_result(r)
    assert "selected: " + r["selected"] in text and str(out / "report.html") in text

    # a sim randomization given in the config replaces each policy's own
    again = _select(pols, data["shifted"], tmp_path / "given", sim_randomization=SHIFTED)
    assert all(p["sim_randomization_source"] == "config sim_randomization" for p in again["policies"])
    assert all(p["sim_randomization"]["physics"]["mass_scale"] == [1.5, 2.0] for p in again["policies"])
    assert {p["name"]: p["ood"] for p in again["policies"]} == {p["name"]: p["ood"] for p in rows}  # same seed


@pytest.mark.parametrize("kind", sorted(_FEATURE_LAYERS))
def test_feature_layer_of_every_registered_policy(data, kind):
    import torch

    from robolearn.data.dataset import DatasetReader
    from robolearn.policies import make_policy

    reader = DatasetReader(data["nominal"])
    options = {"mlp": {"hidden": [24, 16]}, "diffusion": {"down_dims": [16, 32], "horizon": 8, "n_action_steps": 4,
                                                          "num_inference_steps": 2}}[kind]
    policy = make_policy(kind, reader.features, reader.meta.stats, options)
    feats = embed_dataset(policy, reader, [0, 1], 50, np.random.default_rng(0), torch.device("cpu"), batch_size=16)
    d_state = sum(reader.features[k].shape[0] for k in policy.config.obs_keys)
    assert feats.shape == (50, {"mlp": 16, "diffusion": policy.config.n_obs_steps * d_state}[kind])
    assert np.isfinite(feats).all() and feats.std(0).max() > 0
    # the same windows give the same features (eval mode: no dropout, no random crop)
    again = embed_dataset(policy, reader, [0, 1], 50, np.random.default_rng(0), torch.device("cpu"))
    np.testing.assert_allclose(feats, again, rtol=1e-5, atol=1e-6)
    assert policy.training  # left as it was found


def test_policy_without_training_dataset(data, tmp_path):
    from robolearn.data.dataset import DatasetReader
    from robolearn.policies import make_policy

    reader = DatasetReader(data["nominal"])
    bare = make_policy("mlp", reader.features, reader.meta.stats, {"hidden": [8]}).save(tmp_path / "bare")
    with pytest.raises(SelectError, match=r"no training dataset .*metadata\.dataset.*robolearn train bc"):
        _select([data["policy_nominal"], bare], data["nominal"], tmp_path / "o")


def test_real_dataset_missing_a_feature_the_policy_reads(data, tmp_path):
    from robolearn.data.dataset import DatasetReader
    from robolearn.data.format import Feature
    from robolearn.policies import make_policy

    reader = DatasetReader(data["nominal"])
    feats = {**reader.features, "observation.wrench": Feature("float32", (6,))}
    stats = {**reader.meta.stats, "observation.wrench": {"mean": np.zeros(6), "std": np.ones(6)}}
    policy = make_policy("mlp", feats, stats, {"hidden": [8]})
    policy.metadata = {"dataset": str(data["nominal"].resolve())}
    ckpt = policy.save(tmp_path / "wrench")
    with pytest.raises(SelectError, match=r"has no 'observation\.wrench', which policy wrench reads.*record the real "
                                          r"episodes with 'observation\.wrench'"):
        _select([ckpt], data["nominal"], tmp_path / "o")


def test_bad_config(data, tmp_path):
    with pytest.raises(ConfigError, match="at least one candidate policy"):
        run(SelectConfig(policies=[], real_dataset=str(data["nominal"])))
    with pytest.raises(ConfigError, match="real-dataset"):
        run(SelectConfig(policies=[str(data["policy_nominal"])]))
    with pytest.raises(ConfigError, match="beta"):
        run(SelectConfig(policies=[str(data["policy_nominal"])], real_dataset=str(data["nominal"]), beta=-1))
    with pytest.raises(ConfigError, match="randomization.physics.mass_scale"):
        run(SelectConfig(policies=[str(data["policy_nominal"])], real_dataset=str(data["nominal"]),
                         sim_randomization=RandomizationConfig(physics=PhysicsRandomization(mass_scale=(0.0, 1.0)))))


def test_validate_selection_quick_budget(tmp_path):
    from robolearn.eval.select_bench import SelectBenchConfig, format_report, validate_selection

    r = validate_selection(SelectBenchConfig(quick=True, work_dir=str(tmp_path)))
    assert {"selection_rank_corr", "sim_only_rank_corr", "ood_only_rank_corr"} <= set(r)
    for key in ("selection_rank_corr", "sim_only_rank_corr"):
        assert r[key] is None or -1.0 <= r[key] <= 1.0
    assert [p["setting"] for p in sorted(r["policies"], key=lambda p: p["policy"])] == sorted(
        ["nominal", "objects", "arm", "noise"])
    assert all(0 <= p["true_success"] <= 1 for p in r["policies"]) and r["budget"]["quick"]
    assert Path(r["selection_report"]).is_file()
    assert "selection_rank_corr" in format_report(r)


def test_collect_records_its_randomization_and_refuses_to_resume_with_another(data, tmp_path):
    import shutil

    from robolearn.data.collect import CollectConfig
    from robolearn.data.collect import run as collect
    from robolearn.data.dataset import DatasetMeta
    from robolearn.data.format import DatasetError

    env = DatasetMeta.load(data["shifted"]).robolearn["env"]
    assert env["randomization"]["physics"]["actuator_gain_scale"] == [0.3, 0.5]
    copy = shutil.copytree(data["nominal"], tmp_path / "nominal")
    with pytest.raises(DatasetError, match="recorded with randomization .* would mix the two"):
        collect(CollectConfig(task="lift", episodes=6, out=str(copy), resume=True, num_envs=1, cameras=[],
                              randomization=SHIFTED, progress=False, fsync=False))
