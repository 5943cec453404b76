"""The inference benchmark runs on a tiny budget and reports every figure with the right type; timings
themselves are never asserted (a busy CI machine would make them flaky)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robolearn.config import load_config
from robolearn.errors import ConfigError
from robolearn.inference import InferenceEngine
from robolearn.inference.bench import (
    TARGETS,
    InferenceBenchConfig,
    build_policy,
    format_table,
    observation_stream,
    predicting_ticks,
    run,
    time_ticks,
)

TINY = {"mlp_options": {"hidden": [16]},
        "diffusion_options": {"num_inference_steps": 1, "down_dims": [8, 16], "diffusion_step_embed_dim": 8},
        "mlp_ticks": 24, "diffusion_ticks": 16, "warmup_ticks": 2, "episode_ticks": 10, "batch_sizes": [1, 2, 256],
        "repeats": 2, "sweep_min_seconds": 0.0, "device": "cpu"}


def test_bench_reports_every_figure(tmp_path):
    threads = torch.get_num_threads()
    path = tmp_path / "out" / "inference.json"
    report = run(InferenceBenchConfig(**TINY, json_path=str(path)))
    assert torch.get_num_threads() == threads  # restored
    for key in ("mlp_p99_ms", "diffusion_p99_ms", "batch256_per_sample_ratio", "mlp_p50_ms", "diffusion_p50_ms",
                "mlp_predict_p99_ms", "diffusion_predict_p99_ms", "mlp_batch256_per_sample_ratio"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert report["targets"] == TARGETS and set(report["passed"]) == set(TARGETS)
    assert all(isinstance(v, bool) for v in report["passed"].values())
    assert report["cuda_diffusion_p99_ms"] is None and report["cuda_graphs_diffusion_p99_ms"] is None
    assert any(n.startswith("cuda: skipped") for n in report["notes"])
    assert report["torch_threads"]["intra_op"] == 1
    lat = report["latency"]["cpu/mlp"]
    assert lat["ticks"] == 2 * 24 and lat["predict_ticks"] == 2 * 7  # episodes of 10: 0, 4, 8, 10, 14, 18, 20
    assert len(lat["runs"]) == 2
    # the headline latencies are the traced engine's (as the control loop runs it), eager alongside
    assert report["latency"]["cpu_eager/mlp"]["ticks"] == 2 * 24
    assert isinstance(report["cpu_eager_diffusion_p99_ms"], float)
    assert set(report["sweep"]) == {"cpu_eager/mlp", "cpu_eager/diffusion"}  # no sweep of the traced engine
    sweep = report["sweep"]["cpu_eager/diffusion"]
    assert set(sweep["per_call_ms"]) == {"1", "2", "256"} and len(sweep["runs_ms"]["256"]) == 2
    assert report["policies"]["diffusion"]["config"]["num_inference_steps"] == 1
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    table = format_table(report)
    for key in TARGETS:
        assert key in table
    assert "PASS" in table or "FAIL" in table


def test_left_out_policies_have_null_figures(tmp_path):
    report = run(InferenceBenchConfig(**{**TINY, "policies": ["mlp"], "batch_sizes": [1, 2]}, json_path=None))
    assert report["diffusion_p99_ms"] is None and report["batch256_per_sample_ratio"] is None
    assert report["passed"]["diffusion_p99_ms"] is None and report["mlp_batch256_per_sample_ratio"] is None
    assert "skipped" in format_table(report)


def test_predicting_ticks_are_the_ticks_that_predict():
    policy = build_policy("mlp", {"hidden": [8], "n_action_steps": 4}, seed=0)
    mask = predicting_ticks(policy, 20, episode_ticks=10)
    assert np.flatnonzero(mask).tolist() == [0, 4, 8, 10, 14, 18]
    engine = InferenceEngine(policy, 1, device="cpu")
    ticks, predicted = [0], []
    act, predict = engine.act, engine.runner._predict

    def counting_act(obs):
        ticks[0] += 1
        return act(obs)

    def recording_predict(obs):
        predicted.append(ticks[0] - 1)
        return predict(obs)

    engine.act, engine.runner._predict = counting_act, recording_predict
    times = time_ticks(engine, observation_stream(policy, 1, 3, seed=0), 20, warmup=3, episode_ticks=10)
    assert len(times) == 20 and (times > 0).all()
    assert [t - 3 for t in predicted if t >= 3] == np.flatnonzero(mask).tolist()  # after the 3 warm-up ticks
    policy = build_policy("mlp", {"hidden": [8], "temporal_ensemble": 0.1}, seed=0)
    assert predicting_ticks(policy, 5, episode_ticks=10).all()


def test_config_is_checked_and_loads_like_the_cli():
    cfg = load_config(InferenceBenchConfig, None, ["json_path=x.json", "quick=true", "policies=[mlp]",
                                                   "diffusion_options={num_inference_steps: 4}"])
    assert cfg.json_path == "x.json" and cfg.policies == ["mlp"]
    eff = InferenceBenchConfig(quick=True).effective()
    assert max(eff.batch_sizes) == 256 and eff.repeats == 1 and eff.mlp_ticks <= 200
    for bad in ({"policies": ["transformer"]}, {"batch_sizes": []}, {"mlp_ticks": 0}, {"num_threads": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            InferenceBenchConfig(**bad).validate()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            InferenceBenchConfig(device="cuda").validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="pretends a GPU that cannot run; a real one would")
def test_a_gpu_variant_that_fails_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "pretend GPU")
    report = run(InferenceBenchConfig(**{**TINY, "policies": ["mlp"], "device": "auto", "batch_sizes": [1]},
                                      json_path=None))
    assert report["mlp_p99_ms"] is not None  # the CPU figures stand
    assert set(report["errors"]) == {"cuda_mlp", "cuda_graphs_mlp"}
    assert report["cuda_mlp_p99_ms"] is None and report["cuda_graphs_mlp_p99_ms"] is None
    assert any(n.startswith("cuda mlp: not timed") for n in report["notes"])


@pytest.mark.slow  # torch.compile: tens of seconds even for a tiny MLP on a small machine
def test_compiled_variant_reports_latency_only():
    report = run(InferenceBenchConfig(**{**TINY, "policies": ["mlp"], "batch_sizes": [1], "compile": True},
                                      json_path=None))
    assert isinstance(report["cpu_compiled_mlp_p99_ms"], float) and "cpu_compiled/mlp" not in report["sweep"]
    assert not report["errors"]
