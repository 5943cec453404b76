"""`robolearn tasks` and `robolearn demo` (the whole pipeline at a tiny budget) run for real."""

from __future__ import annotations

import json

import pytest

from robolearn.cli.main import main
from robolearn.demo import DemoConfig, learning_curve, run
from robolearn.sim.registry import native_task_names


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


def _tiny(out, **kw) -> DemoConfig:
    opts = dict(out=str(out), demos=4, bc_steps=40, reward_steps=20, residual_steps=1024, residual_envs=8,
                eval_every=512, curve_episodes=2, episodes=4, progress=False)
    return DemoConfig(**{**opts, **kw})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    return out, run(_tiny(out))


def test_demo_runs_every_stage_and_writes_the_report(demo):
    out, summary = demo
    # every stage left its output: the dataset, the two models, the residual run, both evaluations
    assert json.loads((out / "data" / "meta" / "info.json").read_text())["total_episodes"] == 4
    for d in ("bc", "reward", "residual"):
        assert (out / d / "checkpoints" / "last" / "config.json").is_file(), d
    assert set(summary["timings_s"]) == {"collect imperfect demos", "train the BC base", "train the progress model",
                                         "fine-tune the residual (PPO, progress reward)", "evaluate base",
                                         "evaluate residual"}
    for key in ("base", "residual"):
        row = summary[key]
        assert row["episodes"] == 4 and 0 <= row["ci95"][0] <= row["success_rate"] <= row["ci95"][1] <= 1
        assert row["videos"] and all(p.endswith(".mp4") for p in row["videos"])
    assert summary["improvement"] == pytest.approx(summary["residual"]["success_rate"] -
                                                   summary["base"]["success_rate"])
    # the learning curve starts at the base (step 0) and has one point per eval_every
    assert [c["step"] for c in summary["curve"]] == [0, 512, 1024]
    assert summary["curve"] == learning_curve(out / "residual")
    assert all("train_wall_s" in c for c in summary["curve"])
    assert json.loads((out / "summary.json").read_text())["residual"]["successes"] == \
        summary["residual"]["successes"]
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = (out / "report.html").read_text()
    assert "base (BC, MLP)" in page and "base + residual (PPO)" in page
    assert f"{summary['base']['ci95'][0]:.0%}–{summary['base']['ci95'][1]:.0%}" in page
    assert page.count("data:video/mp4;base64,") == 2 and "data:image/png;base64," in page


def test_demo_resume_reuses_finished_stages(demo):
    out, first = demo
    again = run(_tiny(out, resume=True, video=False))
    # nothing is recollected (its time is the first run's: a resumed demo adds up what every run spent);
    # the models resume at their last step; the evaluation is deterministic
    assert again["timings_s"]["collect imperfect demos"] == first["timings_s"]["collect imperfect demos"]
    assert again["timings_s"]["evaluate base"] > first["timings_s"]["evaluate base"]
    assert again["wall_clock_s"] > first["wall_clock_s"]
    assert again["base"]["successes"] == first["base"]["successes"]
    assert again["residual"]["successes"] == first["residual"]["successes"]
    assert again["residual_train"]["resumed_from"] == 1024


def test_demo_rejects_unknown_task_and_bad_budgets(tmp_path, capsys):
    assert main(["demo", f"out={tmp_path}", "task=lfit"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'lfit'" in err and "Did you mean 'lift'" in err
    assert main(["demo", f"out={tmp_path}", "episodes=0"]) == 2
    assert "episodes=0 must be at least 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a refused demo wrote nothing"
