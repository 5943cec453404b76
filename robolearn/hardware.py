"""Robot hardware descriptions (`hardware/robots/<name>.yaml`).

The same file describes the real arm (for the ROS 2 bridge) and the simulated one (for
`robolearn.sim`), so that a joint command means the same thing in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from robolearn.errors import ConfigError, UnknownNameError, did_you_mean

HARDWARE_DIR = Path(__file__).resolve().parent.parent / "hardware"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RobotSpec:
    """Joint names, limits, home pose and control defaults of one arm with its gripper."""

    name: str
    joint_names: tuple[str, ...]
    position_lower: np.ndarray  # (dof,) rad
    position_upper: np.ndarray  # (dof,) rad
    velocity_limit: np.ndarray  # (dof,) rad/s
    effort_limit: np.ndarray  # (dof,) N*m
    home: np.ndarray  # (dof,) rad
    gripper_joint_names: tuple[str, ...]
    gripper_width_min: float  # m
    gripper_width_max: float  # m
    gripper_max_force: float  # N
    control_rate_hz: float
    topics: dict[str, str]
    path: Path
    dh: np.ndarray | None = None
    """(dof, 3) standard Denavit-Hartenberg d (m), a (m), alpha (rad) per joint (`kinematics:`); None: the
    arm's kinematics come from the simulated model (robolearn.sim.robot, the Panda)"""
    tcp_offset: np.ndarray | None = None
    """(3,) m, last DH frame (the flange) to the tool centre point, in the flange frame (with `dh`)"""
    workspace_lo: np.ndarray | None = None
    """(3,) m, lower corner of the TCP box the safety filter allows by default, in the base frame (`workspace:`)"""
    workspace_hi: np.ndarray | None = None
    """(3,) m, upper corner of that box"""

    @property
    def dof(self) -> int:
        return len(self.joint_names)


def robot_path(name_or_path: str | Path) -> Path:
    """Resolve a robot name (`panda`) or a YAML path to the file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"robot file {p} does not exist; pass a path to a hardware YAML file")
        return p
    candidate = HARDWARE_DIR / "robots" / f"{name_or_path}.yaml"
    if not candidate.is_file():
        known = sorted(f.stem for f in (HARDWARE_DIR / "robots").glob("*.yaml"))
        raise UnknownNameError(
            f"unknown robot {str(name_or_path)!r}; known robots: {', '.join(known)}."
            + did_you_mean(str(name_or_path), known)
        )
    return candidate


def load_robot(name_or_path: str | Path = "panda") -> RobotSpec:
    """Load and validate a robot description; every problem is reported with the key that has it."""
    path = robot_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None

    def get(d: dict, key: str, where: str):
        if not isinstance(d, dict) or key not in d:
            raise ConfigError(f"{path}: missing key '{where}{key}'; see hardware/robots/panda.yaml for the layout")
        return d[key]

    if get(raw, "format_version", "") != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: format_version {raw['format_version']} is not supported (expected {FORMAT_VERSION})"
        )
    arm, grip, ctl = get(raw, "arm", ""), get(raw, "gripper", ""), get(raw, "control", "")
    for section, value in (("arm", arm), ("gripper", grip), ("control", ctl)):
        if not isinstance(value, dict):
            raise ConfigError(
                f"{path}: '{section}' must be a mapping of keys, got {value!r}; see hardware/robots/panda.yaml"
            )

    def number(d: dict, key: str, where: str) -> float:
        value = get(d, key, where)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ConfigError(f"{path}: {where}{key} must be a finite number, got {value!r}")
        return float(value)

    names = tuple(get(arm, "joint_names", "arm."))
    vecs = {}
    for key in ("position_lower", "position_upper", "velocity_limit", "effort_limit", "home"):
        value = get(arm, key, "arm.")  # outside the try: ConfigError is a ValueError too
        try:
            v = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            v = np.full(0, np.nan)
        if v.shape != (len(names),) or not np.all(np.isfinite(v)):
            raise ConfigError(f"{path}: arm.{key} must be {len(names)} finite numbers, got {arm[key]!r}")
        vecs[key] = v
    if np.any(vecs["position_lower"] >= vecs["position_upper"]):
        raise ConfigError(f"{path}: arm.position_lower must be below arm.position_upper for every joint")
    if np.any(vecs["home"] < vecs["position_lower"]) or np.any(vecs["home"] > vecs["position_upper"]):
        raise ConfigError(f"{path}: arm.home lies outside the joint position limits")
    topics = {k: v for k, v in ctl.items() if k.endswith(("_topic", "_action"))}

    def numbers(d: dict, key: str, where: str, n: int) -> np.ndarray:
        value = get(d, key, where)
        try:
            v = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            v = np.full(0, np.nan)
        if v.shape != (n,) or not np.all(np.isfinite(v)):
            raise ConfigError(f"{path}: {where}{key} must be {n} finite numbers, got {value!r}")
        return v

    optional: dict = {}
    if "kinematics" in raw:  # optional: arms without a simulated model (hardware/robots/ur5e.yaml)
        kin = raw["kinematics"]
        dh = [numbers(kin, k, "kinematics.", len(names)) for k in ("dh_d", "dh_a", "dh_alpha")]
        optional["dh"] = np.stack(dh, axis=1)
        optional["tcp_offset"] = numbers(kin, "tcp_offset", "kinematics.", 3) if "tcp_offset" in kin else np.zeros(3)
    if "workspace" in raw:
        ws = raw["workspace"]
        lo, hi = numbers(ws, "lo", "workspace.", 3), numbers(ws, "hi", "workspace.", 3)
        if np.any(lo >= hi):
            raise ConfigError(f"{path}: workspace.lo must be below workspace.hi on every axis")
        optional["workspace_lo"], optional["workspace_hi"] = lo, hi
    return RobotSpec(
        name=str(get(raw, "name", "")),
        joint_names=names,
        position_lower=vecs["position_lower"],
        position_upper=vecs["position_upper"],
        velocity_limit=vecs["velocity_limit"],
        effort_limit=vecs["effort_limit"],
        home=vecs["home"],
        gripper_joint_names=tuple(get(grip, "joint_names", "gripper.")),
        gripper_width_min=number(grip, "width_min", "gripper."),
        gripper_width_max=number(grip, "width_max", "gripper."),
        gripper_max_force=number(grip, "max_force", "gripper."),
        control_rate_hz=number(ctl, "rate_hz", "control."),
        topics=topics,
        path=path,
        **optional,
    )
