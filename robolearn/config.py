"""Typed configs: nested dataclasses, YAML presets and dotted overrides.

A config is a dataclass whose fields have defaults and a docstring literal right after each field
(`robolearn.sim.config.EnvConfig` is the model). `load_config` builds one in three layers, later
layers winning:

1. the dataclass defaults;
2. a YAML preset, `configs/<group>/<name>.yaml` (named `"<group>/<name>"`) or any YAML path, holding
   only the keys it changes;
3. dotted overrides such as `num_envs=8`, `randomization.physics.mass_scale=[0.8,1.2]`,
   `cameras=[front,wrist]` or `task_options.clearance=0.002`, whose values are YAML.

Layers deep-merge: a nested dataclass or dict field keeps every key a later layer does not mention.
Each value is checked against the field's type hint (int, float, bool, str, Literal, tuple, list,
dict, nested dataclasses, `X | None`, Enum, Path), and anything wrong raises one `ConfigError`
naming the dotted key, the value, where it came from and what is expected. There is no
interpolation, include or `eval`: presets are data.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import enum
import functools
import inspect
import io
import math
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from robolearn.errors import ConfigError, did_you_mean

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"

T = TypeVar("T")
_MISSING = object()


# --------------------------------------------------------------------------------------------------
# public API


def load_config(cls: type[T], preset: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from its defaults, a YAML preset and dotted `KEY=VALUE` overrides, then validate it.

    preset: a YAML path, or a name `"<group>/<name>"` resolved as `configs/<group>/<name>.yaml`.
    overrides: `"a.b=value"` strings applied in order; values are parsed with `yaml.safe_load`.
    Raises ConfigError (one line naming the key, the value and what is expected) on any problem.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    ctx = _Context(root=cls)
    tree: dict[str, Any] = {}
    if preset is not None:
        path = resolve_preset(preset)
        _merge(tree, [], _read_preset(path), ctx, origin=f"in preset {_show_path(path)}")
    for item in overrides:
        parts, value, text = _parse_override(item)
        _merge(tree, parts, value, ctx, origin="from override", text=text)
    return _build(cls, tree, "", ctx, base=None)


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build `cls` from a nested mapping (as Python code passes it: dataclass instances, tuples and
    lists are all accepted), with the same checks and one-line messages as `load_config`."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    plain = {k: config_to_dict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
             for k, v in data.items()}
    return _build(cls, plain, "", _Context(root=cls), base=None)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serializable dict of a config dataclass (tuples become lists, Enums values)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg, "")


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write `cfg` as YAML (loadable again with `load_config(type(cfg), preset=path)`); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)
    path.write_text(text)
    return path


def field_help(cls: type) -> dict[str, str]:
    """Dotted field name -> the docstring literal after the field (nested dataclasses included).

    A nested dataclass field without a docstring of its own gets its class docstring. Fields with
    no docstring map to "". Used for `--help`.
    """
    return {key: doc for key, _, _, doc in _walk(cls, "")}


def describe_fields(cls: type) -> list[dict[str, Any]]:
    """One row per dotted field: key, type (readable), default (plain value or None), help, section.

    `section` is True for nested dataclass fields (their keys follow as `section.key` rows).
    """
    try:
        defaults = _flatten(config_to_dict(cls()))
    except (TypeError, ValueError):  # some field has no default
        defaults = {}
    rows = []
    for key, tp, is_section, doc in _walk(cls, ""):
        rows.append(
            {"key": key, "type": type_label(tp), "default": defaults.get(key), "help": doc, "section": is_section}
        )
    return rows


def resolve_preset(preset: str | Path) -> Path:
    """The YAML file of a preset: an existing path, or `"<group>/<name>"` -> `configs/<group>/<name>.yaml`."""
    p = Path(preset)
    if isinstance(preset, Path) or p.suffix in (".yaml", ".yml"):
        if p.is_file():
            return p
        raise ConfigError(
            f"preset file {p} does not exist; pass a path to a YAML file or a preset name such as env/lift"
        )
    name = str(preset).strip().strip("/")
    candidate = CONFIGS_DIR / f"{name}.yaml"
    if name and candidate.is_file():
        return candidate
    group = CONFIGS_DIR / Path(name).parent
    known = (
        sorted(str(f.relative_to(CONFIGS_DIR).with_suffix("")) for f in group.glob("*.yaml")) if group.is_dir() else []
    )
    folder = f"configs/{Path(name).parent}/"
    where = f"presets in {folder}: {', '.join(known)}." if known else f"{folder} has no presets."
    raise ConfigError(
        f"unknown preset {str(preset)!r} (no file {_show_path(candidate)}); {where}" + did_you_mean(name, known)
    )


def type_label(tp: Any) -> str:
    """A short readable form of a type hint: `int`, `tuple[float, float]`, `ee_delta|joint_pos`, `str | None`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_label(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if args:
            return f"{name}[{', '.join('...' if a is Ellipsis else type_label(a) for a in args)}]"
        return name
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(str(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------------------------------
# reading presets and overrides into one raw tree


@dataclasses.dataclass
class _Context:
    """Where each raw value came from, for error messages."""

    root: type
    """the config class being built (to suggest `a.b.key` for a key given at the wrong depth)"""
    origins: dict[str, str] = dataclasses.field(default_factory=dict)
    """dotted key -> 'from override' / 'in preset PATH' for the values set at that key"""
    texts: dict[str, str] = dataclasses.field(default_factory=dict)
    """dotted key -> the override value as typed (quoted in errors; kept by str fields for `task=123`)"""

    def origin(self, key: str) -> str:
        while True:
            if key in self.origins:
                return self.origins[key]
            if not key:
                return ""
            key = key.rpartition(".")[0]

    def from_override_below(self, key: str) -> bool:
        return any(k.startswith(key + ".") and v == "from override" for k, v in self.origins.items())


def _show_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _yaml_problem(err: yaml.YAMLError, with_line: bool) -> str:
    """One line describing a YAML error (PyYAML's own message spans several lines)."""
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem and mark is not None:
        at = f"line {mark.line + 1}, column {mark.column + 1}" if with_line else f"column {mark.column + 1}"
        return f"{problem} at {at}"
    return " ".join(str(err).split())


def _read_preset(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"preset {_show_path(path)} is not valid YAML: {_yaml_problem(e, True)}") from None
    except OSError as e:
        raise ConfigError(f"cannot read preset {_show_path(path)}: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"preset {_show_path(path)} must be a mapping of config keys (key: value), "
            f"got a {type(data).__name__}: {_show(data)}"
        )
    return data


def _parse_override(item: str) -> tuple[list[str], Any, str]:
    """'a.b=[1, 2]' -> (['a', 'b'], [1, 2], '[1, 2]')."""
    key, sep, text = str(item).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"override {item!r} is not KEY=VALUE; write e.g. num_envs=8 or randomization.physics.mass_scale=[0.8,1.2]"
        )
    parts = key.split(".")
    if any(not p or p != p.strip() for p in parts):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key such as randomization.physics.mass_scale")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"override {item!r}: the value {text!r} is not valid YAML ({_yaml_problem(e, False)}); "
            f"quote strings that contain YAML syntax, e.g. {key}='\"a: b\"'"
        ) from None
    return parts, value, text


def _merge(tree: dict[str, Any], parts: list[str], value: Any, ctx: _Context, origin: str, text: str | None = None):
    """Set `value` at dotted `parts` of the raw tree, deep-merging dicts, and record where it came from.

    text: the override as typed, quoted in error messages and kept by string fields (`task=123`).
    """
    if not parts:  # a whole preset: merge it key by key
        for k, v in value.items():
            _merge(tree, [str(k)], v, ctx, origin)
        return
    node = tree
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            node[part] = {}  # for `num_envs.x=1` the builder reports that num_envs has no keys
            ctx.origins[".".join(parts[: i + 1])] = origin
        node = node[part]
    key, last = ".".join(parts), parts[-1]
    ctx.texts.pop(key, None)
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        for k, v in value.items():
            _merge(tree, [*parts, str(k)], v, ctx, origin)
        return
    for stale in [k for k in ctx.origins if k.startswith(key + ".")]:
        del ctx.origins[stale]
    for stale in [k for k in ctx.texts if k.startswith(key + ".")]:
        del ctx.texts[stale]
    node[last] = copy.deepcopy(value)
    ctx.origins[key] = origin
    if text is not None:
        ctx.texts[key] = text.strip()


# --------------------------------------------------------------------------------------------------
# building typed values from the raw tree


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type[T], data: Mapping[str, Any], key: str, ctx: _Context, base: Any) -> T:
    """Instantiate dataclass `cls` from raw `data`, taking missing fields from `base` or the defaults."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in data:
        if name not in fields:
            _unknown_key(cls, fields, _join(key, str(name)), ctx)
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        sub = _join(key, name)
        current = copy.deepcopy(getattr(base, name)) if base is not None else _default(f)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], sub, ctx, current)
        elif current is _MISSING:
            raise ConfigError(
                f"missing config key {sub!r}: expected {_expected(hints[name])}; set it in a preset or as {sub}=VALUE"
            )
        elif dataclasses.is_dataclass(current) and not isinstance(current, type):
            kwargs[name] = _build(type(current), {}, sub, ctx, base=current)  # so nested validate() runs
        else:
            kwargs[name] = current
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _unknown_key(cls: type, fields: Mapping[str, Any], key: str, ctx: _Context) -> typing.NoReturn:
    parent, _, leaf = key.rpartition(".")
    names = list(fields)
    hint = did_you_mean(leaf, names)
    if not hint:  # the right name at the wrong depth, e.g. mass_scale for randomization.physics.mass_scale
        elsewhere = [k for k, _, _, _ in _walk(ctx.root, "") if k.rpartition(".")[2] == leaf]
        if elsewhere:
            hint = f" Did you mean {elsewhere[0]!r}?"
    where = f" under {parent}" if parent else ""
    raise ConfigError(
        f"unknown config key {key!r} ({ctx.origin(key) or 'given'}); "
        f"valid keys{where} ({cls.__name__}): {', '.join(names)}.{hint}"
    )


def _show(value: Any) -> str:
    """A value as a user would type it: strings quoted, everything else in YAML flow style."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    except yaml.YAMLError:
        return repr(value)
    return text.removesuffix("\n...").removesuffix("...").strip()


def _expected(tp: Any) -> str:
    """What a value of type `tp` must look like, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return "any YAML value"
    if tp is type(None):
        return "null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a file path"
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(_show(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} keys ({', '.join(f.name for f in dataclasses.fields(tp) if f.init)})"
    if origin is tuple or tp is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {_plural(args[0]) if args else 'values'}"
        if len(set(args)) == 1:
            return f"a list of exactly {len(args)} {_plural(args[0])}"
        return f"a list of exactly {len(args)} items [{', '.join(type_label(a) for a in args)}]"
    if origin in (list, Sequence) or tp is list:
        return f"a list of {_plural(args[0]) if args else 'values'}, e.g. [a, b]"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping {key: value}"
    return f"a {type_label(tp)}"


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(tp, f"{type_label(tp)} values")


def _coerce(tp: Any, value: Any, key: str, ctx: _Context, current: Any = _MISSING) -> Any:
    """Check `value` (raw YAML data) at dotted `key` against type hint `tp` and convert it.

    `current` is the value being overridden (a default or a preset's): nested dataclasses and dicts
    merge into it, and scalars quote it as the default in error messages.
    """

    def fail(extra: str = "", hint: str = "") -> typing.NoReturn:
        origin = ctx.origin(key)
        shown = ctx.texts.get(key, _show(value)) if origin == "from override" else _show(value)
        default = ""
        if current is not _MISSING and not isinstance(current, dict) and not dataclasses.is_dataclass(current):
            try:
                default = f" (default: {_show(_plain(current, key))})"
            except TypeError:
                pass
        raise ConfigError(
            f"invalid config value {key}={shown}{f' ({origin})' if origin else ''}: "
            f"expected {_expected(tp)}{default}{extra}{'.' + hint if hint else ''}"
        )

    def items(item_tps: Sequence[Any]) -> list[Any]:
        out = []
        for i, (item_tp, v) in enumerate(zip(item_tps, value, strict=True)):
            try:
                out.append(_coerce(item_tp, v, f"{key}.{i}", ctx))
            except ConfigError:
                if _is_mapping_type(item_tp):  # the nested message names the nested key
                    raise
                fail(f"; item {i} is {_show(v)}")
        return out

    origin, args = typing.get_origin(tp), typing.get_args(tp)

    if tp is Any or tp is object:
        return _merge_plain(current, value) if isinstance(current, dict) and isinstance(value, dict) else value

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(options[0], value, key, ctx, current if current is not None else _MISSING)
        for option in options:
            try:
                return _coerce(option, value, key, ctx, current)
            except ConfigError:
                continue
        fail()

    if isinstance(value, dict) and not _is_mapping_type(tp) and ctx.from_override_below(key):
        below = next(k for k in ctx.origins if k.startswith(key + "."))
        raise ConfigError(
            f"unknown config key {below!r} (from override): {key} is a single value ({type_label(tp)}), not a section"
        )

    if origin is Literal or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        choices = list(args) if origin is Literal else list(tp)
        found = _choose(choices, value, ctx.texts.get(key))
        if found is _MISSING:
            fail(hint=did_you_mean(str(value), [str(c.value if isinstance(c, enum.Enum) else c) for c in choices]))
        return found

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            fail()
        return _build(tp, value, key, ctx, base=current if isinstance(current, tp) else None)

    if tp in (bool, int, float, str, Path, type(None)):
        found = _scalar(tp, value, ctx.texts.get(key))
        if found is _MISSING:
            fail("; quote it in YAML if it looks like a number or boolean" if tp is str else "")
        if tp is float and math.isnan(found):
            fail("; NaN is not allowed")
        return found

    if origin is tuple or tp is tuple:
        if not isinstance(value, list | tuple):
            fail()
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return tuple(items([args[0] if args else Any] * len(value)))
        if len(value) != len(args):
            fail(f", got {len(value)}")
        return tuple(items(args))

    if origin in (list, Sequence) or tp is list:
        if isinstance(value, str | int | float | bool):
            fail(f"; write [{ctx.texts.get(key, value)}] for a list of one")
        if not isinstance(value, list | tuple):
            fail()
        return items([args[0] if args else Any] * len(value))

    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            fail()
        key_tp, val_tp = args if args else (Any, Any)
        out = dict(current) if isinstance(current, dict) else {}
        for k, v in value.items():
            if key_tp is str and isinstance(k, bool | int | float):
                k = str(k)  # YAML reads the key of `{1: a}` as an int
            k = _coerce(key_tp, k, f"{key}.{k}", ctx)
            out[k] = _coerce(val_tp, v, f"{key}.{k}", ctx, out.get(k, _MISSING))
        return out

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        fail()
    raise TypeError(f"robolearn.config cannot check values of type {tp!r} (field {key!r})")


def _choose(choices: list[Any], value: Any, text: str | None) -> Any:
    """The Literal value or Enum member that `value` names, or _MISSING."""
    for choice in choices:
        plain = choice.value if isinstance(choice, enum.Enum) else choice
        if choice is value or (type(plain) is type(value) and plain == value):
            return choice
        if isinstance(choice, enum.Enum) and value == choice.name:
            return choice
        if text is not None and str(plain) == text:  # `mode=1` for Literal["1", "2"]
            return choice
    return _MISSING


def _scalar(tp: type, value: Any, text: str | None) -> Any:
    """`value` as a bool, int, float, str, Path or None, or _MISSING. Booleans are never numbers."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        return value if is_number and isinstance(value, int) else _MISSING
    if tp is float:
        if is_number:
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _MISSING
        return _MISSING
    if tp is str:
        if isinstance(value, str):
            return value
        if text is not None and isinstance(value, bool | int | float):  # task=123 or robot=yes meant a name
            return text
        return _MISSING
    if tp is Path:
        return Path(value) if isinstance(value, str | Path) else _MISSING
    return None if value is None else _MISSING


def _is_mapping_type(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return tp in (Any, object, dict) or origin in (dict, Mapping) or dataclasses.is_dataclass(tp)


def _merge_plain(base: dict, new: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        out[k] = _merge_plain(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------------------------------
# serialization and help


def _plain(value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), _join(key, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, enum.Enum):
        return _plain(value.value, key)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {
            (k if isinstance(k, str | int | float | bool) else str(k)): _plain(v, f"{key}.{k}")
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, f"{key}.{i}") for i, v in enumerate(value)]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist(), key)
    raise TypeError(f"config value {key}={value!r} of type {type(value).__name__} is not YAML-serializable")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[_join(prefix, str(k))] = v
        if isinstance(v, dict):
            out.update(_flatten(v, _join(prefix, str(k))))
    return out


def _section_type(tp: Any) -> type | None:
    """The dataclass behind a field type (`Sub` or `Sub | None`), or None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = options[0] if len(options) == 1 else None
    return tp if dataclasses.is_dataclass(tp) and isinstance(tp, type) else None


def _walk(cls: type, prefix: str) -> Iterator[tuple[str, Any, bool, str]]:
    """(dotted key, type hint, is_section, help) for every init field, nested dataclasses included."""
    docs = _field_docs(cls)
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = _join(prefix, f.name), hints[f.name]
        sub = _section_type(tp)
        doc = docs.get(f.name, "")
        if sub is not None and not doc:
            doc = _class_doc(sub)
        yield key, tp, sub is not None, doc
        if sub is not None:
            yield from _walk(sub, key)


@functools.cache
def _class_source(cls: type) -> tuple[ast.ClassDef, str] | None:
    """The parsed class definition and its (dedented) source, or None when the source is unavailable."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # defined in a REPL or generated
        return None
    node = ast.parse(src).body[0]
    return (node, src) if isinstance(node, ast.ClassDef) else None


def _class_doc(cls: type) -> str:
    """First paragraph of the class docstring as one line (not __doc__: dataclass fills in a signature)."""
    found = _class_source(cls)
    doc = ast.get_docstring(found[0]) if found else None
    return " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal after the field (or, failing that, a comment on its line)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        found = _class_source(klass)
        if found is None:
            continue
        node, src = found
        comments = _line_comments(src)
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
            elif stmt.end_lineno in comments:
                docs[stmt.target.id] = comments[stmt.end_lineno]
    return docs


def _line_comments(src: str) -> dict[int, str]:
    """Line number (1-based, in `src`) -> the text of a trailing `# comment` on that line."""
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return out
