"""The `robolearn` command: verb dispatch, overrides and flags, help, one-line errors.

The verbs' real targets are tested where they live; here fake modules stand in for them so the
dispatch is tested on its own.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from dataclasses import dataclass, field

import pytest

from robolearn.cli import main as cli
from robolearn.errors import ConfigError, RobolearnError


@dataclass
class FakeInner:
    """Nested settings of the fake verb."""

    gain: float = 1.0
    """proportional gain of the fake controller"""


@dataclass
class FakeConfig:
    """Config of the fake verb."""

    steps: int = 10
    """number of steps to run"""
    quick: bool = False
    """run a short version"""
    json_path: str = ""
    """where to write results"""
    inner: FakeInner = field(default_factory=FakeInner)

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"fake config: steps={self.steps} is invalid; it must be positive")


@pytest.fixture
def fake(monkeypatch):
    """A fake verb module: `robolearn fake` and `robolearn group sub` call its run(cfg)."""
    module = types.ModuleType("fake_verb_module")
    module.FakeConfig = FakeConfig
    module.calls = []

    def run(cfg: FakeConfig) -> None:
        if cfg.steps == 13:
            raise RobolearnError("unlucky number of steps; pick another")
        if cfg.steps == 14:
            raise RuntimeError("a bug")
        module.calls.append(cfg)

    module.run = run
    module.describe = lambda: [
        {
            "name": "fake_task",
            "description": "a fake task",
            "stages": ["reach", "grasp"],
            "observation": {"observation.state": {"shape": [9], "dtype": "float32"}},
            "action_modes": {"ee_delta": {"shape": [7], "low": [-1.0] * 7, "high": [1.0] * 7}},
            "max_episode_steps": 50,
            "options": {"clearance": 0.002},
        }
    ]
    monkeypatch.setitem(sys.modules, "fake_verb_module", module)
    verb = cli.Verb(
        "a fake verb",
        "fake_verb_module",
        config="FakeConfig",
        preset_group="env",
        flags=(
            cli.Flag("--quick", "short version", field="quick"),
            cli.Flag("--json", "results file", field="json_path", metavar="FILE"),
        ),
    )
    verbs = {
        **cli.VERBS,
        "fake": verb,
        "group sub": verb,
        "faketasks": dataclasses.replace(cli.VERBS["tasks"], module="fake_verb_module", function="describe"),
        "missing": cli.Verb("not installed", "robolearn.no_such_module", config="X"),
    }
    monkeypatch.setattr(cli, "VERBS", verbs)
    return module


def test_top_level_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in ("tasks", "bench", "demo"):
        assert verb in out


def test_group_help_lists_sub_verbs(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "sim" in capsys.readouterr().out


def test_verb_help_prints_even_before_its_module_exists(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "KEY=VALUE" in out and "--quick" in out and "--preset" in out


def test_verb_help_lists_config_keys(fake, capsys):
    with pytest.raises(SystemExit):
        cli.main(["fake", "--help"])
    out = capsys.readouterr().out
    assert "steps (int) = 10" in out and "number of steps to run" in out
    assert "inner.gain (float) = 1.0" in out and "proportional gain" in out
    assert "presets (configs/env/)" in out and "lift" in out


def test_overrides_and_flags_reach_run(fake):
    code = cli.main(["fake", "steps=3", "--quick", "inner.gain=2", "--json", "out dir/r.json"])
    assert code == 0
    (cfg,) = fake.calls
    assert cfg == FakeConfig(steps=3, quick=True, json_path="out dir/r.json", inner=FakeInner(gain=2.0))


def test_sub_verb_and_preset(fake, tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("steps: 7\ninner: {gain: 0.5}\n")
    assert cli.main(["group", "sub", "--preset", str(preset), "inner.gain=0.25"]) == 0
    assert fake.calls[-1] == FakeConfig(steps=7, inner=FakeInner(gain=0.25))


def test_print_config_does_not_run(fake, capsys):
    assert cli.main(["fake", "--print-config", "steps=4"]) == 0
    assert fake.calls == []
    out = capsys.readouterr().out
    assert "steps: 4" in out and "gain: 1.0" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["fake", "stesp=3"], "unknown config key 'stesp'"),
        (["fake", "steps=abc"], "invalid config value steps=abc"),
        (["fake", "steps=0"], "fake config: steps=0 is invalid"),  # validate()
        (["fake", "--preset", "nosuch"], "unknown preset 'env/nosuch'"),
        (["fake", "steps=13"], "unlucky number of steps"),  # raised inside run()
        (["missing"], "not available in this install"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(fake, capsys, argv, expected):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("robolearn: error: ")
    assert captured.err.count("\n") == 1 and expected in captured.err
    assert "Traceback" not in captured.err and fake.calls == []


def test_bad_override_of_a_real_verb_exits_2(capsys):
    # whether or not robolearn.demo exists yet, a bad override is one line and exit code 2
    assert cli.main(["demo", "no_such_key_xyz=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robolearn: error: ") and err.count("\n") == 1


def test_bugs_keep_their_traceback(fake):
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["fake", "steps=14"])


def test_usage_errors_exit_2(fake, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fake", "--steps=3"])
    assert exit_.value.code == 2
    assert "overrides are written KEY=VALUE without dashes" in capsys.readouterr().err
    assert cli.main(["fake", "steps"]) == 2  # a positional that is not KEY=VALUE
    assert "override 'steps' is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench"])
    assert exit_.value.code == 2


def test_tasks_table_and_json(fake, capsys):
    assert cli.main(["faketasks"]) == 0
    out = capsys.readouterr().out
    assert "fake_task" in out and "reach > grasp" in out
    assert "observation.state" in out and "(9,)" in out and "float32" in out
    assert "ee_delta" in out and "[-1, 1]" in out and "clearance=0.002" in out

    assert cli.main(["faketasks", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "fake_task"


def test_format_tasks_per_dimension_bounds():
    text = cli.format_tasks(
        [
            {
                "name": "t",
                "stages": [],
                "observation": {},
                "action_modes": {"j": {"shape": [2], "low": [-1, 0], "high": [1, 2]}},
            }
        ]
    )
    assert "low [-1, 0]  high [1, 2]" in text
    assert cli.format_tasks([]) == "no tasks registered"


def test_ros_launch_verb_passes_its_arguments_through(capsys):
    from robolearn.cli.main import main as cli_main

    """`robolearn ros launch` hands everything after the verb to the launcher (its own options included)."""
    assert cli_main(["ros", "launch", "--show-args", "sim_deploy", "policy:=runs/bc/x", "episodes:=3"]) == 0
    out = capsys.readouterr().out
    assert "sim_robot_node" in out and "policy_node" in out and "episodes = '3'" in out
    assert cli_main(["ros", "launch", "no_such_file"]) == 2
    assert "no_such_file" in capsys.readouterr().err
