"""The reward verbs of the CLI (`train reward`, `reward plot`, `bench reward`) and the plot / bench modules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robolearn.cli.main import main
from robolearn.rewards import load_reward_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_reward_plot_writes_a_png(reward_run, pp_dataset, tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["reward", "plot", "--reward", str(reward_run), "--dataset", str(pp_dataset), "--episode", "0",
                 "--out", str(out), "device=cpu"]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert f"wrote {out}" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, no temporary file left


def test_reward_plot_several_episodes_default_path(reward_run, pp_dataset, capsys):
    """episodes=[...] draws one panel each; without --out the PNG goes to <run dir>/plots/."""
    ckpt = reward_run / "checkpoints" / "last"
    assert main(["reward", "plot", "--reward", str(ckpt), "--dataset", str(pp_dataset), "episodes=[0, 4]",
                 "device=cpu"]) == 0
    png = reward_run / "plots" / f"{pp_dataset.name}_ep0-4.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert str(png) in capsys.readouterr().out


def test_reward_plot_bad_episode_is_one_line_exit_2(reward_run, pp_dataset, tmp_path, capsys):
    assert main(["reward", "plot", "--reward", str(reward_run), "--dataset", str(pp_dataset), "--episode", "99",
                 "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robolearn: error:") and "\n" not in err
    assert "episodes [99] do not exist (0..5)" in err
    assert not (tmp_path / "p.png").exists()
    assert main(["reward", "plot", "--dataset", str(pp_dataset)]) == 2
    assert "name the reward model" in capsys.readouterr().err


def test_episode_curves_carry_labels(reward_run, reader):
    from robolearn.rewards.plot import episode_curves

    model = load_reward_model(reward_run)
    curves = episode_curves(model, reader, [0, 5], device="cpu")
    for ep, c in zip([0, 5], curves):
        n = int(reader.lengths[ep])
        assert c["progress"].shape == (n,) and c["stage_probs"].shape == (n, 5)
        assert c["label_progress"].shape == (n,) and c["label_stage"].shape == (n,)
    assert curves[0]["label_progress"][-1] == pytest.approx(1.0)  # a success
    assert curves[1]["label_progress"][-1] < 0.5  # a drop


def test_train_reward_through_the_cli(pp_dataset, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "reward", "--dataset", str(pp_dataset), "--out", str(out), "steps=5", "batch_size=8",
            "val_fraction=0", "progress=false", "device=cpu", "log_every=5",
            "model_options={channels: [8], image_dim: 16, state_dim: 8, embed_dim: 16, hidden: [16], n_frames: 2}"]
    assert main(args) == 0
    assert f"trained: {out}/checkpoints/last" in capsys.readouterr().out
    model = load_reward_model(out)
    assert model.config.n_frames == 2 and model.config.channels == [8]
    assert [r["step"] for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
            if "loss" in r] == [5]
    # --steps is a flag too; running again with more steps resumes
    assert main([*args[:6], "--steps", "6", *args[7:]]) == 0
    assert f"resuming {out} from step 5" in capsys.readouterr().out
    assert (out / "checkpoints" / "last").resolve().name == "step_000006"


def test_train_reward_cli_errors(pp_dataset, tmp_path, capsys):
    assert main(["train", "reward", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robolearn: error:") and err.count("\n") == 1
    assert main(["train", "reward", "--dataset", str(pp_dataset), "--out", str(tmp_path / "o"),
                 "model_options={head: bogus}"]) == 2
    assert "head='bogus'" in capsys.readouterr().err


def test_train_reward_presets(pp_dataset, capsys):
    assert main(["train", "reward", "--dataset", str(pp_dataset), "--preset", "frame_index", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert "head: frame_index" in text and f"dataset: {pp_dataset}" in text
    assert main(["train", "reward", "--dataset", str(pp_dataset), "--preset", "privileged", "--print-config"]) == 0
    assert "privileged: true" in capsys.readouterr().out


def test_bench_reward_format_report():
    from robolearn.rewards.bench import TARGETS, format_report

    row = {"train_s": 1.0, "voc": 0.9, "failure_pair_accuracy": 1.0, "final_progress_success": 0.9,
           "final_progress_failure": 0.2, "stage_accuracy": 0.8}
    report = {"config": {"task": "pick_place", "throughput_batch": 256}, "models": {"stage": row},
              "data": {"train_episodes": 8, "train_failed": 2, "test_successes": 3, "test_failures": 3},
              "voc": 0.96, "voc_frame_index_baseline": 0.9, "stage_accuracy": 0.8, "failure_pair_accuracy": 1.0,
              "frames_per_s": 2500.0, "offline_frames_per_s": 9000.0, "targets": TARGETS}
    report["pass"] = {k: bool(report[k] >= v) for k, v in TARGETS.items()}
    report["pass"]["voc_beats_frame_index_baseline"] = True
    text = format_report(report)
    assert "stage_accuracy" in text and "FAIL" in text  # 0.8 < 0.9
    assert "voc " in text and "pass" in text
    assert "2500 frames/s live (batch 256)" in text


@pytest.mark.slow
def test_bench_reward_quick(tmp_path):
    """`robolearn bench reward --quick` end to end (~90 s on a 2-core CPU: hence slow)."""
    from robolearn.rewards.bench import RewardBenchConfig, run

    report = run(RewardBenchConfig(quick=True, json_path=str(tmp_path / "r.json"), plot_path=str(tmp_path / "r.png"),
                                   progress=False))
    saved = json.loads((tmp_path / "r.json").read_text())
    for k in ("voc", "voc_frame_index_baseline", "stage_accuracy", "failure_pair_accuracy", "frames_per_s"):
        assert k in saved and isinstance(saved[k], float) and saved[k] == pytest.approx(report[k])
    for k in ("voc", "voc_frame_index_baseline"):
        assert -1 <= saved[k] <= 1
    assert 0 <= saved["stage_accuracy"] <= 1 and 0 <= saved["failure_pair_accuracy"] <= 1
    for k in ("frames_per_s", "offline_frames_per_s"):
        assert math.isfinite(saved[k]) and saved[k] > 0
    assert set(saved["models"]) == {"stage", "frame_index"}
    assert saved["data"]["test_successes"] >= 1 and saved["data"]["test_failures"] >= 1
    assert saved["config"]["quick"] is True and saved["config"]["steps"] == 20
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG_MAGIC
    assert np.isfinite(saved["failure_pair_accuracy"])
