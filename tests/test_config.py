"""robolearn.config: defaults < preset < dotted overrides, type checks, one-line errors, help text."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from robolearn.config import (
    CONFIGS_DIR,
    config_to_dict,
    describe_fields,
    field_help,
    load_config,
    resolve_preset,
    save_config,
)
from robolearn.errors import ConfigError, RobolearnError
from robolearn.sim.config import EnvConfig


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


@dataclass
class Inner:
    """A nested section.

    More detail that --help leaves out.
    """

    gain: float = 1.0
    """proportional gain"""
    name: str | None = None
    """optional label"""


@dataclass
class Outer:
    """A config with one field of every supported kind."""

    steps: int = 10
    """number of steps"""
    mode: Literal["fast", "slow"] = "fast"
    """how to run"""
    ratio: tuple[float, float] = (0.0, 1.0)
    """a [low, high] range"""
    tags: list[str] = field(default_factory=list)
    """labels"""
    extra: dict[str, Any] = field(default_factory=lambda: {"keep": 1})
    """free-form options"""
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    """an optional section"""
    kind: Mode = Mode.FAST
    """an enum choice"""
    out: Path = Path("runs")
    """output folder"""
    flag: bool = False  # documented by a comment
    label: str = "x"
    """a name"""

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} is invalid; it must be a positive integer")


def write(tmp_path: Path, text: str, name: str = "preset.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------
# happy paths


def test_defaults_without_preset_or_overrides():
    assert load_config(Outer) == Outer()
    assert load_config(EnvConfig) == EnvConfig()


def test_overrides_of_every_kind():
    cfg = load_config(
        Outer,
        overrides=[
            "steps=5",
            "mode=slow",
            "ratio=[0.5, 2]",
            "tags=[a,b]",
            "extra.new=2",
            "inner.gain=1e-3",  # PyYAML reads this as a string; a float field accepts it
            "inner.name=left",
            "kind=slow",
            "out=a/b",
            "flag=true",
            "label=123",  # a string field keeps what was typed
        ],
    )
    assert cfg.steps == 5 and cfg.mode == "slow"
    assert cfg.ratio == (0.5, 2.0) and isinstance(cfg.ratio[1], float)
    assert cfg.tags == ["a", "b"]
    assert cfg.extra == {"keep": 1, "new": 2}  # dict fields merge with the default
    assert cfg.inner == Inner(gain=0.001, name="left")
    assert cfg.kind is Mode.SLOW and cfg.out == Path("a/b") and cfg.flag is True
    assert cfg.label == "123"


def test_optional_section_is_built_from_its_defaults():
    assert load_config(Outer, overrides=["maybe.gain=2"]).maybe == Inner(gain=2.0)
    assert load_config(Outer, overrides=["maybe={gain: 3}", "maybe=null"]).maybe is None
    assert load_config(Outer, overrides=["inner.name=a", "inner.name=null"]).inner.name is None


def test_env_config_nested_and_dict_overrides():
    cfg = load_config(
        EnvConfig,
        overrides=[
            "num_envs=8",
            "randomization.physics.mass_scale=[0.8,1.2]",
            "cameras=[front,wrist]",
            "task_options.clearance=0.002",
            "image_size=[64, 96]",
        ],
    )
    assert cfg.num_envs == 8
    assert cfg.randomization.physics.mass_scale == (0.8, 1.2)
    assert cfg.randomization.physics.friction_scale == (1.0, 1.0)  # siblings keep their defaults
    assert cfg.cameras == ["front", "wrist"]
    assert cfg.task_options == {"clearance": 0.002}
    assert cfg.image_size == (64, 96)


def test_preset_then_overrides_deep_merge(tmp_path):
    preset = write(
        tmp_path,
        "task: peg_insert\nnum_envs: 4\nrandomization:\n  physics:\n    mass_scale: [0.9, 1.1]\n"
        "task_options:\n  clearance: 0.001\n  hole_depth: 0.03\n",
    )
    cfg = load_config(
        EnvConfig,
        preset,
        ["num_envs=2", "task_options.clearance=0.002", "randomization.physics.friction_scale=[0.5,1]"],
    )
    assert cfg.task == "peg_insert" and cfg.num_envs == 2
    assert cfg.task_options == {"clearance": 0.002, "hole_depth": 0.03}
    assert cfg.randomization.physics.mass_scale == (0.9, 1.1)
    assert cfg.randomization.physics.friction_scale == (0.5, 1.0)


def test_later_override_wins_and_sections_merge():
    cfg = load_config(Outer, overrides=["inner={gain: 2, name: a}", "inner.gain=3", "steps=1", "steps=2"])
    assert cfg.inner == Inner(gain=3.0, name="a") and cfg.steps == 2


@pytest.mark.parametrize("path", sorted((CONFIGS_DIR / "env").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_env_preset_loads(path):
    cfg = load_config(EnvConfig, preset=f"env/{path.stem}")
    assert cfg.task == yaml.safe_load(path.read_text())["task"]


def test_env_presets_exist():
    names = {p.stem for p in (CONFIGS_DIR / "env").glob("*.yaml")}
    assert {"lift", "pick_place", "peg_insert"} <= names
    assert resolve_preset("env/lift") == CONFIGS_DIR / "env" / "lift.yaml"


def test_validate_runs_after_building():
    with pytest.raises(ConfigError, match="steps=0"):
        load_config(Outer, overrides=["steps=0"])
    with pytest.raises(ConfigError, match="num_envs"):
        load_config(EnvConfig, overrides=["num_envs=0"])
    with pytest.raises(ConfigError, match="pointcloud.enabled needs at least one camera"):
        load_config(EnvConfig, overrides=["pointcloud.enabled=true"])


def test_to_dict_and_save_round_trip(tmp_path):
    cfg = load_config(Outer, overrides=["ratio=[0.2,0.4]", "kind=slow", "maybe.gain=2", "extra.nested={a: [1, 2]}"])
    plain = config_to_dict(cfg)
    assert plain["ratio"] == [0.2, 0.4] and plain["kind"] == "slow" and plain["out"] == "runs"
    assert plain["maybe"] == {"gain": 2.0, "name": None}
    json.dumps(plain)  # JSON-serializable
    path = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert load_config(Outer, preset=path) == cfg

    env = load_config(EnvConfig, overrides=["cameras=[front]", "task_options.clearance=0.002"])
    assert load_config(EnvConfig, preset=save_config(env, tmp_path / "env.yaml")) == env
    assert config_to_dict(env)["pointcloud"]["crop_min"] == [0.0, -0.5, -0.01]


def test_field_help():
    help_ = field_help(Outer)
    assert help_["steps"] == "number of steps"
    assert help_["inner"] == "A nested section."  # class docstring, first paragraph
    assert help_["inner.gain"] == "proportional gain"
    assert help_["maybe.name"] == "optional label"
    assert help_["flag"] == "documented by a comment"
    assert list(help_)[:3] == ["steps", "mode", "ratio"]  # definition order

    env_help = field_help(EnvConfig)
    assert env_help["num_envs"] == "environments stepped together"
    assert env_help["randomization.physics.mass_scale"].startswith("multiplier on the mass")
    assert env_help["pointcloud"] == "Point cloud built from the depth images of the cameras."


def test_describe_fields():
    rows = {r["key"]: r for r in describe_fields(EnvConfig)}
    assert rows["action_mode"]["type"] == "ee_delta|joint_pos"
    assert rows["image_size"]["type"] == "tuple[int, int]" and rows["image_size"]["default"] == [84, 84]
    assert rows["randomization"]["section"] and not rows["randomization.physics.mass_scale"]["section"]


# ------------------------------------------------------------------------------------------------
# errors: one line naming the key, the value and what is expected


def one_line_error(cls, preset=None, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(cls, preset, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, RobolearnError)
    return message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["inner.gian=2"], ["unknown config key 'inner.gian'", "gain, name", "Did you mean 'gain'?"]),
        (["stpes=2"], ["unknown config key 'stpes'", "from override", "Did you mean 'steps'?"]),
        (["mode=medium"], ["mode=medium", "one of 'fast', 'slow'"]),
        (["mode=fsat"], ["Did you mean 'fast'?"]),
        (["kind=quick"], ["kind=quick", "one of 'fast', 'slow'"]),
        (["steps=abc"], ["steps=abc", "expected an integer", "default: 10"]),
        (["steps=1.5"], ["steps=1.5", "an integer"]),
        (["steps=true"], ["steps=true", "an integer"]),
        (["flag=1"], ["flag=1", "true or false"]),
        (["ratio=[1,2,3]"], ["ratio=[1,2,3]", "exactly 2 numbers", "got 3"]),
        (["ratio=[a,2]"], ["item 0 is 'a'"]),
        (["ratio=0.5"], ["ratio=0.5", "a list of exactly 2 numbers"]),
        (["tags=a"], ["tags=a", "a list of strings"]),
        (["extra=[1]"], ["extra=[1]", "a mapping"]),
        (["inner=5"], ["inner=5", "a mapping of Inner keys (gain, name)"]),
        (["inner.gain=.nan"], ["inner.gain=.nan", "NaN is not allowed"]),
        (["label=[a]"], ["label=[a]", "a string"]),
        (["steps.deep=1"], ["unknown config key 'steps.deep'", "not a section"]),
        (["steps"], ["override 'steps' is not KEY=VALUE"]),
        (["=3"], ["is not KEY=VALUE"]),
        (["inner..gain=1"], ["not a dotted key"]),
        (["tags=[a, b"], ["override 'tags=[a, b'", "not valid YAML"]),
    ],
)
def test_override_errors(overrides, expected):
    message = one_line_error(Outer, overrides=overrides)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_misplaced_key_suggests_its_full_path():
    message = one_line_error(EnvConfig, overrides=["mass_scale=[0.8,1.2]"])
    assert "unknown config key 'mass_scale'" in message
    assert "Did you mean 'randomization.physics.mass_scale'?" in message


def test_env_config_errors():
    assert "one of 'ee_delta', 'joint_pos'" in one_line_error(EnvConfig, overrides=["action_mode=joint"])
    message = one_line_error(EnvConfig, overrides=["randomization.physics.mas_scale=[1,1]"])
    assert "randomization.physics.mas_scale" in message and "Did you mean 'mass_scale'?" in message
    assert "cameras=front" in one_line_error(EnvConfig, overrides=["cameras=front"])


def test_preset_errors(tmp_path):
    message = one_line_error(Outer, write(tmp_path, "steps: [1, 2\nmode: fast\n"))
    assert "is not valid YAML" in message and "line" in message

    message = one_line_error(Outer, write(tmp_path, "- a\n- b\n", "list.yaml"))
    assert "must be a mapping of config keys" in message

    message = one_line_error(Outer, write(tmp_path, "steps: 2\nmdoe: slow\n", "typo.yaml"))
    assert "unknown config key 'mdoe'" in message and "in preset" in message and "typo.yaml" in message

    message = one_line_error(Outer, write(tmp_path, "inner:\n  gain: fast\n", "bad.yaml"))
    assert "inner.gain='fast'" in message and "in preset" in message and "a number" in message

    assert "does not exist" in one_line_error(Outer, tmp_path / "missing.yaml")
    assert "does not exist" in one_line_error(Outer, str(tmp_path / "missing.yml"))

    message = one_line_error(EnvConfig, "env/lfit")
    assert "unknown preset 'env/lfit'" in message and "Did you mean 'env/lift'?" in message
    assert "unknown preset" in one_line_error(EnvConfig, "nosuchgroup/x")


def test_empty_preset_is_the_defaults(tmp_path):
    assert load_config(Outer, write(tmp_path, "# nothing changed\n")) == Outer()


def test_missing_required_field():
    @dataclass
    class Needs:
        path: str
        """where to read from"""

    assert "missing config key 'path'" in one_line_error(Needs)
    assert load_config(Needs, overrides=["path=a.txt"]).path == "a.txt"
