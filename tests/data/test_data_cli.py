"""The dataset verbs through `robolearn ...`, as a user types them."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from robolearn.cli.main import main
from robolearn.data import DatasetReader


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "lift"
    assert main(["collect", "--task", "lift", "--episodes", "3", "--out", str(out), "num_envs=3",
                 "cameras=[front]", "image_size=[32,32]", "progress=false"]) == 0
    return out


def test_collect_and_info(collected, capsys):
    capsys.readouterr()
    assert main(["info", str(collected)]) == 0
    text = capsys.readouterr().out
    for want in ("episodes   3", "reach > grasp > lift", "observation.images.front", "video", "success    3/3"):
        assert want in text, want
    assert main(["info", str(collected), "--json", "--verify"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 3 and summary["verified"] and summary["stages"] == ["reach", "grasp", "lift"]


def test_replay_cli(collected, capsys):
    assert main(["replay", "--dataset", str(collected), "--episode", "2"]) == 0
    out = capsys.readouterr().out
    assert "final physics state divergence     0" in out


def test_annotate_cli(collected, tmp_path, capsys):
    f = tmp_path / "stages.json"
    f.write_text(json.dumps({"episodes": {"0": [{"name": "reach", "start": 0, "end": 4},
                                                 {"name": "grasp", "start": 5, "end": 9}]}}))
    assert main(["annotate", "--dataset", str(collected), "--file", str(f)]) == 0
    assert DatasetReader(collected).meta.stages(0).end_frames == [4, 9]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robolearn: error:") and "no such dataset directory" in err and err.count("\n") == 1
    (tmp_path / "bad" / "meta").mkdir(parents=True)
    (tmp_path / "bad" / "meta" / "info.json").write_text("{not json")
    assert main(["info", str(tmp_path / "bad")]) == 2
    assert "info.json is not valid JSON" in capsys.readouterr().err


def test_convert_robomimic_cli(tmp_path):
    path = tmp_path / "demo.hdf5"
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}})
        for k in range(2):
            g = data.create_group(f"demo_{k}")
            g.attrs["num_samples"] = 6
            g.create_dataset("actions", data=np.random.default_rng(k).uniform(-1, 1, (6, 7)))
            g.create_dataset("rewards", data=np.zeros(6))
            g.create_dataset("dones", data=np.zeros(6))
            g.create_dataset("states", data=np.zeros((6, 10)))
            g.create_dataset("obs/robot0_eef_pos", data=np.zeros((6, 3)))
        data.attrs["total"] = 12
    assert main(["convert", "robomimic", str(path), "--out", str(tmp_path / "out")]) == 0
    assert DatasetReader(tmp_path / "out").num_episodes == 2


def test_bench_data_quick(tmp_path):
    from robolearn.data.bench import DataBenchConfig, run

    report = run(DataBenchConfig(task="lift", episodes=2, repeats=1, load_windows=64, num_workers=0,
                                 json_path=str(tmp_path / "b.json"), image_size=(32, 32)))
    saved = json.loads((tmp_path / "b.json").read_text())
    for key in ("record_fps", "load_windows_per_s", "hdf5_record_fps", "hdf5_load_windows_per_s"):
        assert saved[key] > 0 and report[key] == saved[key]
