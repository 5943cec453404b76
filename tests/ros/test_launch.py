"""The launch files and config files of robolearn_ros agree with the nodes, and robolearn's launcher
(robolearn.deploy.launch) reads them as `ros2 launch` would and supervises the processes it starts.

No DDS here: the supervision tests run a throwaway ament_python package of plain Python scripts."""

from __future__ import annotations

import importlib
import io
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from robolearn.deploy.launch import (
    LaunchError,
    NodeAction,
    console_scripts,
    find_launch_file,
    launch,
    parse_launch_args,
    parse_launch_file,
    typed_value,
    yaml_scalar,
)

pytestmark = pytest.mark.ros

ROS_PKG = Path(__file__).resolve().parents[2] / "ros_ws" / "src" / "robolearn_ros"

LAUNCH_FILES = sorted((ROS_PKG / "launch").glob("*.launch.xml"))
REQUIRED = {"sim_deploy": {"policy": "runs/x"}, "deploy": {"policy": "runs/x"}, "record": {"dataset": "data/x"}}
# argument sets that switch every optional node and <let> branch on once
VARIANTS = {"sim_deploy": [{}, {"record": "true", "cameras": "front,wrist", "use_lockstep": "false"}],
            "deploy": [{}], "record": [{}, {"use_sim": "true"}]}


def _module(exe: str):
    target = console_scripts(ROS_PKG / "setup.py")[exe]
    return importlib.import_module(target.partition(":")[0])


# ---- the files ----------------------------------------------------------------------------------------------


def test_every_launch_file_is_covered_and_valid_xml():
    assert {f.name.removesuffix(".launch.xml") for f in LAUNCH_FILES} == set(REQUIRED) == set(VARIANTS)
    for f in LAUNCH_FILES:
        root = ET.parse(f).getroot()
        assert root.tag == "launch", f
        for node in root.iter("node"):
            assert node.get("pkg") == "robolearn_ros" and node.get("exec") and node.get("name"), (f, node.attrib)


def test_setup_py_installs_every_node_and_the_data_files():
    scripts = console_scripts(ROS_PKG / "setup.py")
    assert scripts == {f"{n}_node": f"robolearn_ros.{n}_node:main" for n in ("policy", "sim_robot", "recorder",
                                                                             "relay", "bench_driver")}
    for target in scripts.values():
        module, func = target.split(":")
        assert (ROS_PKG / Path(*module.split("."))).with_suffix(".py").is_file()
        assert callable(getattr(_module(module.rsplit(".", 1)[1]), func))
    text = (ROS_PKG / "setup.py").read_text()
    assert 'glob("launch/*.launch.xml")' in text and 'glob("config/*.yaml")' in text
    assert (ROS_PKG / "resource" / "robolearn_ros").is_file() and (ROS_PKG / "setup.cfg").is_file()
    pkg = ET.parse(ROS_PKG / "package.xml").getroot()
    assert pkg.findtext("name") == "robolearn_ros" and pkg.find("export/build_type").text == "ament_python"
    deps = {e.text for e in pkg.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "std_srvs", "trajectory_msgs"} <= deps


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_nodes_exist_and_set_only_declared_parameters(name):
    """Every <node> names an installed executable; every parameter file exists, is in the ROS 2 params-file format
    for that node, and sets only parameters the node declares (its module's PARAMETERS), with values of their
    types; so do the inline <param>s."""
    scripts = console_scripts(ROS_PKG / "setup.py")
    for extra in VARIANTS[name]:
        desc = parse_launch_file(name, {**REQUIRED[name], **extra})
        assert desc.nodes
        for node in desc.nodes:
            assert node.exec in scripts, node.exec
            table = _module(node.exec).PARAMETERS
            for key, value in node.params:
                if key == "file":
                    raw = yaml.safe_load(Path(value).read_text())
                    assert list(raw) == [f"/**/{node.name}"], (value, list(raw))
                    params = raw[f"/**/{node.name}"]["ros__parameters"]
                else:
                    params = {key: value}
                for k, v in params.items():
                    assert k in table, f"{name}: {node.name} does not declare {k!r} (set in {value})"
                    table[k].coerce(k, v)  # a value of the declared type


def test_every_config_file_is_loaded_by_a_launch_file():
    used = {Path(v).name for f in LAUNCH_FILES for extra in VARIANTS[f.name.removesuffix(".launch.xml")]
            for n in parse_launch_file(f, {**REQUIRED[f.name.removesuffix(".launch.xml")], **extra}).nodes
            for k, v in n.params if k == "file"}
    assert used == {f.name for f in (ROS_PKG / "config").glob("*.yaml")}


def test_optional_nodes_and_lets():
    sim = parse_launch_file("sim_deploy", {"policy": "p"})
    assert [n.name for n in sim.nodes] == ["sim_robot", "policy"]
    assert all(n.required for n in sim.nodes)  # on_exit="shutdown": the launch ends with the episodes
    rec = parse_launch_file("sim_deploy", {"policy": "p", "record": "true"})
    assert [n.name for n in rec.nodes] == ["sim_robot", "policy", "recorder"]
    params = dict(rec.nodes[2].params)
    assert params["episode_topic"] == "/sim_robot/episode" and params["policy"] == "p"
    real = dict(parse_launch_file("record", {"dataset": "d"}).nodes[0].params)
    sim_rec = dict(parse_launch_file("record", {"dataset": "d", "use_sim": "true"}).nodes[0].params)
    assert real["episode_topic"] == "" and sim_rec["episode_topic"] == "/sim_robot/episode"


def test_node_command_line():
    node = parse_launch_file("deploy", {"policy": "runs/bc", "rate_hz": "10"}).nodes[0]
    cmd = node.command("python")
    assert cmd[:3] == ["python", "-c", "from robolearn_ros.policy_node import main; main()"]
    assert cmd[3:6] == ["--ros-args", "-r", "__node:=policy"]
    assert cmd[cmd.index("--params-file") + 1] == str(ROS_PKG / "config" / "policy.yaml")
    assert "checkpoint:=runs/bc" in cmd and "rate_hz:=10" in cmd
    # the params file comes before the inline parameters, which override it
    assert cmd.index("--params-file") < cmd.index("checkpoint:=runs/bc")


# ---- substitutions and the launcher's reading -----------------------------------------------------------------


def _write(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "t.launch.xml"
    f.write_text(f"<launch>\n{textwrap.dedent(body)}\n</launch>\n")
    return f


def test_substitutions(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_TEST_VALUE", "from-env")
    monkeypatch.delenv("RL_TEST_UNSET", raising=False)
    f = _write(tmp_path, """
        <arg name="robot" default="panda"/>
        <arg name="which" default="robot"/>
        <arg name="path" default="$(find-pkg-share robolearn_ros)/config/$(var robot).yaml"/>
        <let name="twice" value="$(var robot)-$(var robot)"/>
        <node pkg="robolearn_ros" exec="relay_node" name="relay_$(var robot)">
          <param name="robot" value="$(var $(var which))"/>
          <param name="a" value="$(env RL_TEST_VALUE)"/>
          <param name="b" value="$(env RL_TEST_UNSET fallback)"/>
          <param name="c" value="$(var twice)"/>
          <param name="d" value="$(var path)"/>
          <param name="e" value="$(dirname)"/>
          <remap from="/joint_states" to="/arm/joint_states"/>
          <env name="RL_CHILD" value="$(var robot)"/>
        </node>""")
    desc = parse_launch_file(f, {"robot": "ur5e"})
    (node,) = desc.nodes
    assert node.name == "relay_ur5e" and desc.args == {"robot": "ur5e", "which": "robot",
                                                      "path": f"{ROS_PKG}/config/ur5e.yaml"}
    assert dict(node.params) == {"robot": "ur5e", "a": "from-env", "b": "fallback", "c": "ur5e-ur5e",
                                 "d": f"{ROS_PKG}/config/ur5e.yaml", "e": str(tmp_path)}
    assert node.remaps == [("/joint_states", "/arm/joint_states")] and node.env == {"RL_CHILD": "ur5e"}
    assert "-r" in node.ros_args() and "/joint_states:=/arm/joint_states" in node.ros_args()


def test_conditions_groups_and_namespaces(tmp_path):
    f = _write(tmp_path, """
        <arg name="sim" default="false"/>
        <let name="x" value="outer"/>
        <group>
          <push_ros_namespace namespace="arm1"/>
          <let name="x" value="inner"/>
          <node pkg="robolearn_ros" exec="relay_node" name="a"><param name="x" value="$(var x)"/></node>
          <node pkg="robolearn_ros" exec="relay_node" name="b" namespace="tools"/>
          <node pkg="robolearn_ros" exec="relay_node" name="c" namespace="/abs"/>
        </group>
        <node pkg="robolearn_ros" exec="relay_node" name="d" if="$(var sim)"><param name="x" value="$(var x)"/></node>
        <node pkg="robolearn_ros" exec="relay_node" name="e" unless="$(var sim)">
          <param name="x" value="$(var x)"/>
          <param name="only_sim" value="1" if="$(var sim)"/>
        </node>""")
    nodes = {n.name: n for n in parse_launch_file(f).nodes}
    assert set(nodes) == {"a", "b", "c", "e"}
    assert (nodes["a"].namespace, nodes["b"].namespace, nodes["c"].namespace, nodes["e"].namespace) == \
        ("/arm1", "/arm1/tools", "/abs", "")
    assert dict(nodes["a"].params) == {"x": "inner"} and dict(nodes["e"].params) == {"x": "outer"}  # scoped
    assert "__ns:=/arm1" in nodes["a"].ros_args()
    assert {n.name for n in parse_launch_file(f, {"sim": "true"}).nodes} == {"a", "b", "c", "d"}
    with pytest.raises(LaunchError, match="must be true or false"):
        parse_launch_file(f, {"sim": "maybe"})


def test_typed_values_as_launch_ros_types_them():
    assert [typed_value(v) for v in ("1", "1.5", "true", "[84, 84]", "[a, b]", "", "a: b", "runs/x", "0.0")] == \
        [1, 1.5, True, [84, 84], ["a", "b"], "", "a: b", "runs/x", 0.0]
    for v in (1, 1.5, True, [84, 84], ["a", "b"], "", "a: b", "x # y", "/cameras/{camera}/image_raw"):
        assert yaml.safe_load(yaml_scalar(v)) == v  # what rcl reads back from -p name:=VALUE


def test_bad_launch_input_is_one_clear_error(tmp_path):
    with pytest.raises(LaunchError, match="launch argument 'policy' is required"):
        parse_launch_file("sim_deploy", {})
    with pytest.raises(LaunchError, match=r"unknown launch argument\(s\) polcy"):
        parse_launch_file("sim_deploy", {"policy": "p", "polcy": "q"})
    with pytest.raises(LaunchError, match="no launch file 'nope'.*deploy, record, sim_deploy"):
        find_launch_file("nope")
    with pytest.raises(LaunchError, match="NAME:=VALUE"):
        parse_launch_args(["policy=p"])
    assert parse_launch_args(["policy:=a:=b", "x:="]) == {"policy": "a:=b", "x": ""}
    cases = {
        '<node pkg="robolearn_ros" exec="nope_node" name="n"/>': "has no executable 'nope_node'.*policy_node",
        '<node pkg="no_such_pkg" exec="x" name="n"/>': "package 'no_such_pkg' not found",
        '<include file="x.launch.xml"/>': r"<include> is not supported",
        '<node pkg="robolearn_ros" exec="relay_node" name="$(var nope)"/>': r"\$\(var nope\) is not a declared",
        '<node pkg="robolearn_ros" exec="relay_node" name="$(eval 1)"/>': r"unsupported substitution \$\(eval 1\)",
        '<node pkg="robolearn_ros" exec="relay_node" name="n"><param from="/no/such.yaml"/></node>':
            "parameter file /no/such.yaml does not exist",
    }
    for body, match in cases.items():
        with pytest.raises(LaunchError, match=match):
            NodeAction.command(parse_launch_file(_write(tmp_path, body)).nodes[0])
    (tmp_path / "bad.launch.xml").write_text("<launch><node></launch>")
    with pytest.raises(LaunchError, match="is not valid XML"):
        parse_launch_file(tmp_path / "bad.launch.xml")


def test_console_scripts_are_read_without_running_setup_py(tmp_path):
    (tmp_path / "setup.py").write_text(textwrap.dedent("""
        import sys
        sys.exit("setup.py must not run")
        from setuptools import setup
        package_name = "pkg"
        setup(name=package_name, entry_points={"console_scripts": [
            "a = " + package_name + ".a:main",
            f"b = {package_name}.b:run",
            "c=pkg.c:main",
        ]})"""))
    assert console_scripts(tmp_path / "setup.py") == {"a": "pkg.a:main", "b": "pkg.b:run", "c": "pkg.c:main"}


# ---- running processes ----------------------------------------------------------------------------------------


@pytest.fixture
def demo_pkg(tmp_path, monkeypatch) -> Path:
    """An ament_python package `demo_pkg` installed in a prefix on AMENT_PREFIX_PATH: `talker` prints a line per
    0.1 s until SIGINT (then exits 0), `quitter` prints and exits with code 3 after 0.5 s."""
    prefix = tmp_path / "install"
    share = prefix / "share" / "demo_pkg"
    (share / "demo_pkg").mkdir(parents=True)
    (share / "launch").mkdir()
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "demo_pkg"
    marker.parent.mkdir(parents=True)
    marker.touch()
    (share / "package.xml").write_text("<package format='3'><name>demo_pkg</name></package>")
    (share / "setup.py").write_text('from setuptools import setup\nsetup(name="demo_pkg", entry_points={'
                                    '"console_scripts": ["talker = demo_pkg.nodes:talker", '
                                    '"quitter = demo_pkg.nodes:quitter"]})\n')
    (share / "demo_pkg" / "__init__.py").touch()
    (share / "demo_pkg" / "nodes.py").write_text(textwrap.dedent("""
        import os, sys, time

        def talker():
            print("args", " ".join(sys.argv[1:]), "env", os.environ.get("DEMO_VALUE"), flush=True)
            try:
                while True:
                    print("tick", flush=True)
                    time.sleep(0.1)
            except KeyboardInterrupt:
                print("stopped cleanly", flush=True)

        def quitter():
            time.sleep(0.5)
            print("bye", flush=True)
            sys.exit(3)
        """))
    (share / "launch" / "demo.launch.xml").write_text(textwrap.dedent("""
        <launch>
          <arg name="with_quitter" default="true"/>
          <node pkg="demo_pkg" exec="talker" name="talk" output="screen">
            <param name="k" value="v"/>
            <env name="DEMO_VALUE" value="42"/>
          </node>
          <node pkg="demo_pkg" exec="quitter" name="quit" on_exit="shutdown" if="$(var with_quitter)"/>
        </launch>"""))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    return share / "launch" / "demo.launch.xml"


def test_required_node_exit_stops_the_launch_with_its_code(demo_pkg):
    out = io.StringIO()
    t0 = time.monotonic()
    assert launch(demo_pkg, {}, out=out) == 3
    assert time.monotonic() - t0 < 10
    text = out.getvalue()
    assert "[talk] args --ros-args -r __node:=talk -p k:=v env 42" in text
    assert "[talk] tick" in text and "[quit] bye" in text
    assert "[launch] quit exited with code 3" in text
    assert "[talk] stopped cleanly" in text  # SIGINT first: the talker shut down on its own


def test_ctrl_c_stops_every_node(demo_pkg, tmp_path):
    """The launcher as the CLI runs it: SIGINT stops the nodes; SIGKILL of the launcher takes them along."""
    cmd = [sys.executable, "-m", "robolearn.deploy.launch", str(demo_pkg), "with_quitter:=false"]
    for sig in (signal.SIGINT, signal.SIGKILL):
        log = tmp_path / f"launch_{sig.name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while "[talk] tick" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            child = int(log.read_text().split("started talk (pid ")[1].split(")")[0])
            proc.send_signal(sig)
            rc = proc.wait(20)
            deadline = time.monotonic() + 10
            while _alive(child):
                assert time.monotonic() < deadline, f"node {child} outlived the launcher ({sig.name})"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if sig == signal.SIGINT:
            assert rc == 130 and "[talk] stopped cleanly" in log.read_text()
        else:
            assert rc == -signal.SIGKILL


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cli_errors_are_one_line(capsys):
    from robolearn.deploy.launch import main

    assert main(["sim_deploy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "launch argument 'policy' is required" in err
    assert main(["sim_deploy", "--show-args"]) == 0
    out = capsys.readouterr().out
    assert "policy = '<policy>'" in out and "sim_robot: robolearn_ros/sim_robot_node [required]" in out
