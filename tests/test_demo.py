"""`robolearn tasks` and `robolearn demo` run for real on the native tasks."""

from __future__ import annotations

import json

from robolearn.cli.main import main
from robolearn.demo import DemoConfig, run
from robolearn.sim.registry import native_task_names
from robolearn.video import read_mp4


def test_tasks_verb_lists_every_task_with_spaces(capsys):
    assert main(["tasks", "--json"]) == 0
    tasks = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in tasks] == native_task_names()
    for t in tasks:
        assert t["stages"] and t["observation"]["observation.state"]["shape"] == [23]
        assert t["action_modes"]["ee_delta"]["shape"] == [7]
        assert t["action_modes"]["joint_pos"]["shape"] == [8]
    assert main(["tasks"]) == 0
    text = capsys.readouterr().out
    for t in tasks:
        assert t["name"] in text and " > ".join(t["stages"]) in text


def test_demo_writes_video_and_success_table(tmp_path):
    summary = run(DemoConfig(tasks=["lift"], quick=True, out=str(tmp_path), video_size=(64, 96)))
    row = summary["tasks"][0]
    assert row["episodes"] == 4 and row["success_rate"] >= 0.75
    assert 0 <= row["ci95"][0] <= row["success_rate"] <= row["ci95"][1] <= 1
    frames = read_mp4(tmp_path / "lift.mp4")
    assert frames.shape[1:] == (128, 192, 3) and len(frames) > 10
    assert frames.std() > 5, "video frames are not blank"
    assert "| lift | 4 |" in (tmp_path / "summary.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["tasks"][0]["task"] == "lift"


def test_demo_rejects_unknown_task(tmp_path, capsys):
    assert main(["demo", f"out={tmp_path}", "tasks=[lfit]"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'lfit'" in err and "Did you mean 'lift'" in err
