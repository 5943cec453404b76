"""Run a ROS 2 launch XML file without `ros2 launch` (our machines have rclpy from PyPI wheels, no launch).

    robolearn ros launch sim_deploy policy:=runs/bc/lift_mlp/checkpoints/last
    python -m robolearn.deploy.launch sim_deploy policy:=runs/bc/lift_mlp/checkpoints/last

The files in `ros_ws/src/robolearn_ros/launch/` stay valid for the real `ros2 launch` in a colcon install;
this runs the subset of the XML frontend they use:

  <launch>                          the root
  <arg name default description/>   a launch argument (`name:=value` on the command line); no default: required
  <let name value/>                 a variable set inside the file
  <group> ... </group>              a scope for <let> and <push_ros_namespace>
  <push_ros_namespace namespace/>   (also `push-ros-namespace`) prefixes the namespace of the nodes after it
  <node pkg exec name namespace output args on_exit>
      <param name value/>           one parameter; the value is typed as YAML, like launch_ros does
      <param from="file.yaml"/>     a ROS 2 parameter file (`node_name: ros__parameters: {...}`)
      <remap from to/>              a topic or service remapping
      <env name value/>             an environment variable of the node's process
  if="..." / unless="..."           on any of them: true/false (or 1/0) after substitution
  $(var NAME) $(find-pkg-share PKG) $(env NAME [DEFAULT]) $(dirname)   substitutions, nestable

Each node runs as `python -c "from MODULE import FUNC; FUNC()" --ros-args -r __node:=NAME -r __ns:=NS
--params-file F -p k:=v ...`: the executable is looked up in the package's setup.py console_scripts (parsed
with ast, never imported), and PYTHONPATH gets the package's source directory, so nothing needs building.
Every output line of every node (stdout and stderr, whatever `output=` says) is printed prefixed with the
node's name. Ctrl-C (or SIGTERM) stops every node (SIGINT, then SIGTERM
after `sigterm_timeout` s, then SIGKILL); a node with `on_exit="shutdown"` (ROS 1's `required="true"`) stops
the rest when it exits. Packages are found in `ros_ws/src/*` of this repository, then in every prefix of
AMENT_PREFIX_PATH (a colcon install; its launch files are in share/<pkg>/launch).

This module never imports rclpy; the processes it starts do.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robolearn.errors import ConfigError

ROS_WS = Path(__file__).resolve().parents[2] / "ros_ws"
DEFAULT_PACKAGE = "robolearn_ros"
SIGTERM_TIMEOUT_S = 5.0  # after SIGINT, as ros2 launch waits before escalating
SIGKILL_TIMEOUT_S = 5.0
_SUBST = re.compile(r"\$\(([^()]*)\)")  # an innermost $(...): nested ones are resolved inside out


class LaunchError(ConfigError):
    """A launch file, argument or package the launcher cannot use (the message names it and the fix)."""


# ---- packages ---------------------------------------------------------------------------------------


def package_dirs() -> dict[str, Path]:
    """{package name: its share directory}: the source packages of ros_ws/src (whose source directory
    holds launch/ and config/ as the installed share does), then those of AMENT_PREFIX_PATH."""
    found: dict[str, Path] = {}
    for xml in sorted((ROS_WS / "src").glob("*/package.xml")):
        name = _package_name(xml)
        if name:
            found.setdefault(name, xml.parent)
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        index = Path(prefix) / "share" / "ament_index" / "resource_index" / "packages"
        for marker in sorted(index.glob("*")) if index.is_dir() else ():
            found.setdefault(marker.name, Path(prefix) / "share" / marker.name)
    return found


def _package_name(package_xml: Path) -> str | None:
    try:
        el = ET.parse(package_xml).getroot().find("name")
    except ET.ParseError:
        return None
    return el.text.strip() if el is not None and el.text else None


def find_package_share(pkg: str) -> Path:
    dirs = package_dirs()
    if pkg not in dirs:
        raise LaunchError(f"package {pkg!r} not found in {ROS_WS / 'src'} nor on AMENT_PREFIX_PATH; known "
                          f"packages: {', '.join(sorted(dirs)) or 'none'}. Source your ROS workspace "
                          "(`source install/setup.bash`) or fix the package name")
    return dirs[pkg]


def console_scripts(setup_py: str | Path) -> dict[str, str]:
    """{executable: "module:function"} from the `entry_points={"console_scripts": [...]}` of a setup.py,
    read with ast (string constants, module-level string names, `+` and f-strings are folded)."""
    path = Path(setup_py)
    tree = ast.parse(path.read_text(), str(path))
    names: dict[str, str] = {}

    def fold(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return fold(node.left) + fold(node.right)
        if isinstance(node, ast.JoinedStr):
            return "".join(str(fold(v.value if isinstance(v, ast.FormattedValue) else v)) for v in node.values)
        if isinstance(node, ast.List | ast.Tuple):
            return [fold(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {fold(k): fold(v) for k, v in zip(node.keys, node.values)}
        raise LaunchError(f"{path}:{getattr(node, 'lineno', '?')}: cannot read {ast.unparse(node)!r} without "
                          "running setup.py; write console_scripts as string literals")

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                value = fold(stmt.value)
            except LaunchError:
                continue
            if isinstance(value, str):
                names[stmt.targets[0].id] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "setup":
            for kw in node.keywords:
                if kw.arg == "entry_points":
                    scripts = fold(kw.value).get("console_scripts", [])
                    out = {}
                    for line in scripts:
                        exe, _, target = line.partition("=")
                        if ":" not in target:
                            raise LaunchError(f"{path}: console script {line!r} is not 'name = module:function'")
                        out[exe.strip()] = target.strip()
                    return out
    return {}


def resolve_executable(pkg: str, exe: str) -> tuple[Path, str]:
    """(the package's source directory, "module:function") of a package's executable."""
    share = find_package_share(pkg)
    setup_py = share / "setup.py"
    if not setup_py.is_file():
        raise LaunchError(f"package {pkg!r} at {share} has no setup.py (an installed or C++ package); this "
                          "launcher runs ament_python packages from source: use `ros2 launch` for it")
    scripts = console_scripts(setup_py)
    if exe not in scripts:
        raise LaunchError(f"package {pkg!r} has no executable {exe!r}; {setup_py} installs: "
                          f"{', '.join(sorted(scripts)) or 'none'}")
    return share, scripts[exe]


# ---- the launch description -------------------------------------------------------------------------


@dataclass
class NodeAction:
    """One <node> with its substitutions resolved."""

    pkg: str
    exec: str
    name: str
    namespace: str = ""
    params: list[tuple[str, Any]] = field(default_factory=list)
    """in file order: ("file", path) for <param from>, (name, typed value) for <param name value>"""
    remaps: list[tuple[str, str]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    output: str = "screen"
    required: bool = False
    """on_exit="shutdown": stop the launch when this node exits"""

    def ros_args(self) -> list[str]:
        out = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            out += ["-r", f"__ns:={self.namespace}"]
        for src, dst in self.remaps:
            out += ["-r", f"{src}:={dst}"]
        for key, value in self.params:
            out += ["--params-file", str(value)] if key == "file" else ["-p", f"{key}:={yaml_scalar(value)}"]
        return out

    def command(self, python: str = sys.executable) -> list[str]:
        _, target = resolve_executable(self.pkg, self.exec)
        module, _, func = target.partition(":")
        return [python, "-c", f"from {module} import {func}; {func}()", *self.args, *self.ros_args()]


@dataclass
class LaunchDescription:
    file: Path
    args: dict[str, str]
    """every declared argument with its value"""
    declared: dict[str, dict[str, str | None]]
    """{name: {default, description}} of the file's <arg>s"""
    nodes: list[NodeAction]


def yaml_scalar(value: Any) -> str:
    """A value as one flow-style YAML item, for `-p name:=value` (rcl parses it as YAML)."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def typed_value(text: str) -> Any:
    """A <param value> string typed as launch_ros types it: YAML scalars and lists, else the string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None or isinstance(value, dict) else value


def find_launch_file(file_or_name: str | Path) -> Path:
    """A path to a launch file, or a name (`sim_deploy`, `sim_deploy.launch.xml`) in robolearn_ros/launch."""
    p = Path(file_or_name)
    if p.suffix == ".xml" and (p.is_file() or p.parent != Path(".")):
        if not p.is_file():
            raise LaunchError(f"launch file {p} does not exist")
        return p
    name = p.name if p.name.endswith(".launch.xml") else f"{p.name}.launch.xml"
    launch_dir = find_package_share(DEFAULT_PACKAGE) / "launch"
    candidate = launch_dir / name
    if not candidate.is_file():
        known = sorted(f.name.removesuffix(".launch.xml") for f in launch_dir.glob("*.launch.xml"))
        raise LaunchError(f"no launch file {file_or_name!r}; {DEFAULT_PACKAGE} has: {', '.join(known)}")
    return candidate


class _Scope:
    def __init__(self, variables: dict[str, str], namespace: str, file: Path):
        self.vars, self.namespace, self.file = variables, namespace, file

    def child(self) -> _Scope:
        return _Scope(dict(self.vars), self.namespace, self.file)

    def substitute(self, text: str | None, where: str) -> str:
        """Resolve every $(...) in `text`, innermost first."""
        if text is None:
            return ""
        for _ in range(100):
            m = _SUBST.search(text)
            if m is None:
                break
            text = text[:m.start()] + self._one(m.group(1).strip(), where) + text[m.end():]
        if "$(" in text:
            raise LaunchError(f"{self.file}: {where}: unbalanced substitution in {text!r}")
        return text

    def _one(self, expr: str, where: str) -> str:
        kind, _, rest = expr.partition(" ")
        parts = shlex.split(rest) if rest.strip() else []
        if kind == "var" and len(parts) == 1:
            if parts[0] not in self.vars:
                raise LaunchError(f"{self.file}: {where}: $(var {parts[0]}) is not a declared <arg> or <let>; "
                                  f"known: {', '.join(sorted(self.vars)) or 'none'}")
            return self.vars[parts[0]]
        if kind == "find-pkg-share" and len(parts) == 1:
            return str(find_package_share(parts[0]))
        if kind == "env" and len(parts) in (1, 2):
            if parts[0] in os.environ:
                return os.environ[parts[0]]
            if len(parts) == 2:
                return parts[1]
            raise LaunchError(f"{self.file}: {where}: environment variable {parts[0]} is not set (give a default: "
                              f"$(env {parts[0]} DEFAULT))")
        if kind == "dirname" and not parts:
            return str(self.file.parent)
        raise LaunchError(f"{self.file}: {where}: unsupported substitution $({expr}); this launcher knows var, "
                          "find-pkg-share, env and dirname")

    def condition(self, el: ET.Element) -> bool:
        """The element's if/unless attributes (true when it has neither)."""
        for attr, want in (("if", True), ("unless", False)):
            if attr in el.attrib:
                raw = self.substitute(el.attrib[attr], f"<{el.tag} {attr}>").strip().lower()
                if raw not in ("true", "false", "1", "0"):
                    raise LaunchError(f"{self.file}: <{el.tag} {attr}={el.attrib[attr]!r}> evaluates to {raw!r}; "
                                      "a condition must be true or false")
                if (raw in ("true", "1")) != want:
                    return False
        return True


def parse_launch_file(file_or_name: str | Path, args: dict[str, str] | None = None,
                      lenient: bool = False) -> LaunchDescription:
    """Read a launch file with `args` (`{name: value}`) into the nodes it starts; nothing is started.
    lenient: a required argument left out reads as "<NAME>" instead of failing (to show the file)."""
    path = find_launch_file(file_or_name).resolve()
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LaunchError(f"{path} is not valid XML: {e}") from None
    if root.tag != "launch":
        raise LaunchError(f"{path}: the root element is <{root.tag}>; a launch file starts with <launch>")
    given = {str(k): str(v) for k, v in (args or {}).items()}
    declared: dict[str, dict[str, str | None]] = {}
    nodes: list[NodeAction] = []
    scope = _Scope({}, "", path)
    _walk(root, scope, given, declared, nodes, lenient)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise LaunchError(f"{path.name}: unknown launch argument(s) {', '.join(unknown)}; it takes: "
                          + ", ".join(f"{k} (default {v['default']!r})" if v["default"] is not None else f"{k} "
                                      "(required)" for k, v in declared.items()))
    values = {k: scope.vars[k] for k in declared if k in scope.vars}
    return LaunchDescription(path, values, declared, nodes)


def _walk(parent: ET.Element, scope: _Scope, given: dict[str, str], declared: dict, nodes: list[NodeAction],
          lenient: bool = False) -> None:
    for el in parent:
        if not isinstance(el.tag, str):  # comments
            continue
        tag = el.tag.replace("-", "_")
        if tag == "arg":
            name = el.attrib.get("name")
            if not name:
                raise LaunchError(f"{scope.file}: an <arg> needs a name")
            default = el.attrib.get("default")
            declared[name] = {"default": default, "description": el.attrib.get("description")}
            if not scope.condition(el):
                continue
            if name in given:
                scope.vars[name] = given[name]
            elif default is not None:
                scope.vars[name] = scope.substitute(default, f"<arg {name}> default")
            elif lenient:
                scope.vars[name] = f"<{name}>"
            else:
                raise LaunchError(f"{scope.file.name}: launch argument {name!r} is required"
                                  + (f" ({el.attrib['description']})" if el.attrib.get("description") else "")
                                  + f"; pass {name}:=VALUE")
            continue
        if not scope.condition(el):
            continue
        if tag == "let":
            scope.vars[el.attrib["name"]] = scope.substitute(el.attrib.get("value"), f"<let {el.attrib['name']}>")
        elif tag == "group":
            _walk(el, scope.child(), given, declared, nodes, lenient)
        elif tag == "push_ros_namespace":
            ns = scope.substitute(el.attrib.get("namespace"), "<push_ros_namespace>").strip("/")
            if ns:
                scope.namespace = f"{scope.namespace}/{ns}"
        elif tag == "node":
            nodes.append(_node(el, scope))
        else:
            raise LaunchError(f"{scope.file}: <{el.tag}> is not supported by robolearn's launcher (it runs <arg>, "
                              "<let>, <group>, <push_ros_namespace>, <node>); run this file with `ros2 launch`")


def _node(el: ET.Element, scope: _Scope) -> NodeAction:
    def attr(name: str, default: str = "") -> str:
        return scope.substitute(el.attrib[name], f"<node {name}>") if name in el.attrib else default

    pkg, exe = attr("pkg"), attr("exec")
    if not pkg or not exe:
        raise LaunchError(f"{scope.file}: a <node> needs pkg and exec attributes")
    name = attr("name", exe)
    ns = attr("namespace")
    namespace = ns if ns.startswith("/") else "/".join(p for p in (scope.namespace, ns.strip("/")) if p)
    if namespace and not namespace.startswith("/"):
        namespace = "/" + namespace
    on_exit = attr("on_exit")
    if on_exit not in ("", "shutdown"):
        raise LaunchError(f"{scope.file}: <node {name}> on_exit={on_exit!r}: only 'shutdown' is supported")
    node = NodeAction(pkg, exe, name, namespace.rstrip("/"), output=attr("output", "screen"),
                      required=on_exit == "shutdown", args=shlex.split(attr("args")))
    for child in el:
        if not isinstance(child.tag, str) or not scope.condition(child):
            continue
        where = f"<node {name}> <{child.tag}>"
        if child.tag == "param":
            if "from" in child.attrib:
                f = Path(scope.substitute(child.attrib["from"], where))
                if not f.is_file():
                    raise LaunchError(f"{scope.file}: {where}: parameter file {f} does not exist")
                node.params.append(("file", f))
            elif "name" in child.attrib and "value" in child.attrib:
                node.params.append((scope.substitute(child.attrib["name"], where),
                                    typed_value(scope.substitute(child.attrib["value"], where))))
            else:
                raise LaunchError(f"{scope.file}: {where} needs name and value, or from")
        elif child.tag == "remap":
            node.remaps.append((scope.substitute(child.attrib.get("from"), where),
                                scope.substitute(child.attrib.get("to"), where)))
        elif child.tag == "env":
            node.env[scope.substitute(child.attrib.get("name"), where)] = scope.substitute(child.attrib.get("value"),
                                                                                          where)
        else:
            raise LaunchError(f"{scope.file}: {where} is not supported (a <node> takes <param>, <remap>, <env>)")
    return node


# ---- running it -------------------------------------------------------------------------------------


def death_signal_setter():
    """A function for the child to run before exec (Linux): get SIGTERM when the launcher dies, even by SIGKILL,
    so that no node outlives it. Resolved here, in the parent: the child of a threaded process should only call
    what is loaded already. None elsewhere."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Running:
    def __init__(self, node: NodeAction, proc: subprocess.Popen, reader: threading.Thread):
        self.node, self.proc, self.reader = node, proc, reader


def _pump(prefix: str, stream, out, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"{prefix} {line}\n")
            out.flush()
    stream.close()


def node_env(node: NodeAction, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node's process: PYTHONPATH with its package's source, unbuffered output."""
    env = dict(os.environ if base is None else base)
    share, _ = resolve_executable(node.pkg, node.exec)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(share), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("RCUTILS_COLORIZED_OUTPUT", "0")
    env.update(node.env)
    return env


class NodeProcess:
    """One robolearn_ros node in a process of its own, started as `launch` starts it (command and
    environment from its NodeAction), its output in `log_dir/<name>.log`; on Linux it dies with this
    process, even when this one is killed. For benchmarks and tests that drive nodes one by one."""

    def __init__(self, exe: str, name: str, params: dict[str, Any], env: dict[str, str], log_dir: Path):
        action = NodeAction("robolearn_ros", exe, name, params=list(params.items()))
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(action.command(), env=node_env(action, env), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=death_signal_setter())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """Everything the node printed so far."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the log under a header naming the node and the file."""
        return f"--- {self.name} ({self.log_path})\n" + self.log()[-chars:]

    def wait(self, timeout: float) -> int:
        """The exit code; subprocess.TimeoutExpired when still running after `timeout` s."""
        return self.proc.wait(timeout)

    def interrupt(self) -> None:
        """SIGINT (a clean shutdown), if it is still running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> int | None:
        """SIGINT, SIGKILL after 10 s; the exit code."""
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def launch(file_or_name: str | Path, args: dict[str, str] | None = None, *, out=None,
           sigterm_timeout: float = SIGTERM_TIMEOUT_S) -> int:
    """Start every node of a launch file and supervise them until Ctrl-C, SIGTERM, a required node's exit, or
    every node's exit; then stop them all. Returns the exit code: the required node's that ended it, else the first
    non-zero one of a node that exited, else 130 after Ctrl-C and 0 otherwise (SIGTERM included).

    args: {name: value} of the file's <arg>s (strings, as on the command line); out: where the prefixed output
    goes (stdout). Signal handlers are installed only when called from the main thread."""
    out = out or sys.stdout
    desc = parse_launch_file(file_or_name, args)
    if not desc.nodes:
        raise LaunchError(f"{desc.file.name} starts no nodes with arguments {desc.args}")
    lock = threading.Lock()
    width = max(len(n.name) for n in desc.nodes)
    stop = threading.Event()
    signalled: list[int] = []

    def on_signal(signum, _frame):
        signalled.append(signum)
        stop.set()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    running: list[_Running] = []
    code = 0
    preexec = death_signal_setter()
    try:
        for node in desc.nodes:
            cmd = node.command()
            env = node_env(node)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=preexec)
            prefix = f"[{node.name.ljust(width)}]"
            reader = threading.Thread(target=_pump, args=(prefix, proc.stdout, out, lock), daemon=True)
            reader.start()
            running.append(_Running(node, proc, reader))
            with lock:
                out.write(f"[launch] started {node.name} (pid {proc.pid}): {shlex.join(cmd)}\n")
                out.flush()
        exited: set[int] = set()
        while not stop.is_set():
            for r in running:
                rc = r.proc.poll()
                if rc is None or r.proc.pid in exited:
                    continue
                exited.add(r.proc.pid)
                with lock:
                    out.write(f"[launch] {r.node.name} exited with code {rc}\n")
                    out.flush()
                if rc != 0 and code == 0:
                    code = rc
                if r.node.required:
                    code = rc
                    stop.set()
            if len(exited) == len(running):
                break
            stop.wait(0.05)
    finally:
        _stop_all(running, sigterm_timeout, out, lock)
        for s, h in previous.items():
            signal.signal(s, h)
    if signalled and signalled[0] == signal.SIGINT:
        return code or 130
    return code


def _stop_all(running: list[_Running], sigterm_timeout: float, out, lock: threading.Lock) -> None:
    """SIGINT every live node, SIGTERM after `sigterm_timeout`, SIGKILL after SIGKILL_TIMEOUT_S more."""
    for sig, wait in ((signal.SIGINT, sigterm_timeout), (signal.SIGTERM, SIGKILL_TIMEOUT_S),
                      (signal.SIGKILL, SIGKILL_TIMEOUT_S)):
        alive = [r for r in running if r.proc.poll() is None]
        if not alive:
            break
        for r in alive:
            if sig != signal.SIGINT:
                with lock:
                    out.write(f"[launch] {r.node.name} did not stop; sending {signal.Signals(sig).name}\n")
            try:
                r.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(r.proc.poll() is None for r in alive):
            time.sleep(0.02)
    for r in running:
        r.proc.wait()
        r.reader.join(timeout=2.0)


def parse_launch_args(items: list[str]) -> dict[str, str]:
    """["policy:=DIR", "robot:=panda"] -> {"policy": "DIR", "robot": "panda"}."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise LaunchError(f"launch argument {item!r} must be written NAME:=VALUE")
        out[name] = value
    return out


def format_description(desc: LaunchDescription) -> str:
    lines = [f"{desc.file}", "arguments:"]
    for name, d in desc.declared.items():
        value = desc.args.get(name, "(not used)")
        lines.append(f"  {name} = {value!r}" + (f"    # {d['description']}" if d["description"] else ""))
    lines.append("nodes:")
    for n in desc.nodes:
        lines.append(f"  {n.name}: {n.pkg}/{n.exec}" + (" [required]" if n.required else ""))
        lines.append(f"    {shlex.join(n.command())}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="robolearn ros launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("launch_file", help="launch file path, or a name in robolearn_ros/launch (sim_deploy, "
                                            "deploy, record)")
    parser.add_argument("args", nargs="*", metavar="NAME:=VALUE", help="launch arguments")
    parser.add_argument("--show-args", action="store_true", help="print the file's arguments and the node commands, "
                                                                 "start nothing")
    ns = parser.parse_args(argv)
    try:
        args = parse_launch_args(ns.args)
        if ns.show_args:
            print(format_description(parse_launch_file(ns.launch_file, args, lenient=True)))
            return 0
        return launch(ns.launch_file, args)
    except ConfigError as e:
        print(f"robolearn ros launch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
