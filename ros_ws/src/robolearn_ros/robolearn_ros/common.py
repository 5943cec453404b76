"""What every node of this package shares: parameters declared from a module-level table, one main loop.

Each node module has a `PARAMETERS: dict[str, Param]` table; the node declares exactly those (with their
defaults and descriptions), and the tests check every config/*.yaml against the same tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

# parameters rclpy or ros2 tooling may set on any node; not typos
STANDARD_PARAMETERS = ("use_sim_time", "start_type_description_service")


class ParameterError(ValueError):
    """A parameter value a node cannot start with (the message names it and the fix)."""


@dataclass(frozen=True)
class Param:
    """One ROS parameter: its default (whose type is the parameter's type) and what it does."""

    default: bool | int | float | str | list
    description: str
    item: type | None = None
    """element type of a list parameter (str, int or float); by default that of the default's first item"""

    @property
    def kind(self) -> type:
        return type(self.default)

    @property
    def item_type(self) -> type:
        if self.item is not None:
            return self.item
        return type(self.default[0]) if self.default else str

    def coerce(self, name: str, value: Any) -> Any:
        """The value as this parameter's type, else ParameterError. A float parameter takes an int; a list one
        takes None (rcl's `[]`) as empty and a comma-separated string as its items."""
        kind = self.kind
        if kind is list:
            if value is None:  # rcl reads `[]` as "not set"
                return []
            if isinstance(value, str):  # "front,wrist": launch files cannot pass an empty list
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple):
                raise ParameterError(f"parameter {name!r} must be a list of {self.item_type.__name__}, got "
                                     f"{value!r}")
            return [_scalar(f"{name}[{i}]", self.item_type, v) for i, v in enumerate(value)]
        return _scalar(name, kind, value)


def _scalar(name: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float | bool):  # `policy:=123` is a directory name, not a number
            return str(value).lower() if isinstance(value, bool) else str(value)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise ParameterError(f"parameter {name!r} must be {names.get(kind, kind.__name__)}, got {value!r}")


def declare_parameters(node, table: dict[str, Param]) -> SimpleNamespace:
    """Declare every parameter of `table` on `node` and return their values (typed as the table says).

    Overrides of parameters the node does not declare (a typo in a params file) are refused by name."""
    from rcl_interfaces.msg import ParameterDescriptor

    overrides = set(getattr(node, "_parameter_overrides", {}) or {})
    unknown = sorted(k for k in overrides if k not in table and k not in STANDARD_PARAMETERS
                     and not k.startswith("qos_overrides."))
    if unknown:
        raise ParameterError(f"unknown parameter(s) {', '.join(unknown)} for node {node.get_name()}; it takes: "
                             f"{', '.join(table)}")
    values = {}
    for name, spec in table.items():
        # dynamic typing: a float parameter set to `20` (an int in YAML) is read as 20.0 below instead of
        # being refused by rclpy with a type error that names no fix
        descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True)
        default = spec.default
        if isinstance(default, list) and not default:
            default = None  # rclpy cannot type an empty list; coerce() reads None as []
        value = node.declare_parameter(name, default, descriptor).value
        values[name] = spec.coerce(name, value)
    return SimpleNamespace(**values)


def spin_node(make_node: Callable[[], Any], name: str, args: list[str] | None = None) -> int:
    """Init rclpy, build the node, spin until Ctrl-C / SIGTERM / the node sets `node.finished`, clean up; the
    process exit code (the node's `exit_code`, 0 by default).

    The executor is the node's `executor_kind` (EXECUTORS; SingleThreadedExecutor by default). Everything the node
    built at start-up (torch, its model, rclpy) is moved out of the garbage collector's sight (`gc.freeze`): the
    collections of the oldest generation that follow start-up otherwise scan all of it, stopping the node for
    100-150 ms (measured on policy_node; issue 9).

    A bad parameter or any robolearn user error at start-up is one line on stderr and exit code 2."""
    import gc

    import rclpy
    from rclpy.executors import ExternalShutdownException

    from robolearn.errors import RobolearnError

    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except (ParameterError, RobolearnError) as e:
            print(f"[{name}] error: {e}", file=sys.stderr, flush=True)
            return 2
        executor = make_executor(getattr(node, "executor_kind", "single"))
        executor.add_node(node)
        gc.collect()
        gc.freeze()
        while rclpy.ok() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return int(getattr(node, "exit_code", 0))


EXECUTORS = ("single", "events")
"""single: rclpy's SingleThreadedExecutor (a wait set rebuilt in Python on every spin); events:
rclpy.experimental.EventsExecutor (C++ event queue), about half the CPU per message (issue 9)"""


def make_executor(kind: str):
    if kind == "events":
        from rclpy.experimental import EventsExecutor

        return EventsExecutor()
    if kind == "single":
        from rclpy.executors import SingleThreadedExecutor

        return SingleThreadedExecutor()
    raise ParameterError(f"parameter 'executor' must be one of {', '.join(EXECUTORS)}, got {kind!r}")


def reliable_qos(depth: int = 10):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def latched_qos():
    """Reliable, transient-local, depth 1: a late subscriber still gets the last value (status, success)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def image_qos(kind: str):
    """`reliable` (image_transport's default) or `best_effort` (sensor-data cameras); a best-effort
    subscriber also matches reliable publishers."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if kind == "best_effort":
        return qos_profile_sensor_data
    if kind == "reliable":
        return QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    raise ParameterError(f"parameter 'image_qos' must be reliable or best_effort, got {kind!r}")
