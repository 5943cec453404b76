"""`robolearn bench ros` (robolearn.deploy.ros_bench) end to end on the quick budget: a policy trained for a few
steps, bench_driver_node against policy_node and relay_node over DDS, every figure present and finite. No timing
assertions: benchmarks are not tests."""

from __future__ import annotations

import json
import math

import pytest

from robolearn.deploy.ros_bench import TARGETS, RosBenchConfig, run

# rosidl imports lark, which imports the deprecated sre_parse
pytestmark = [pytest.mark.ros, pytest.mark.filterwarnings("ignore::DeprecationWarning:lark")]

KEYS = ["jitter_p99_ms", "latency_p99_ms", "cpu_percent", "relay_jitter_p99_ms", "relay_latency_p99_ms",
        "relay_cpu_percent"]


def test_quick_run_writes_every_figure(ros_domain, tmp_path, capsys):
    path = tmp_path / "ros_loop.json"
    report = run(RosBenchConfig(quick=True, json_path=str(path), domain_id=ros_domain, work_dir=str(tmp_path / "w")))
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    for key in KEYS:
        assert isinstance(report[key], float) and math.isfinite(report[key]) and report[key] >= 0, (key, report[key])
    assert set(report["passed"]) == set(TARGETS) == set(report["ratio_to_floor"])
    for name in ("policy", "relay"):
        c = report["contenders"][name]
        assert c["commands"] > 0 and c["unmatched_commands"] == 0, (name, c)
    assert report["contenders"]["policy"]["gripper_commands"] > 0  # the policy commands the gripper too
    (own,) = report["policy_node"]  # the quick budget: one window each
    assert own["enabled"] is True and own["commands_sent"] > 0
    assert set(report["definitions"]) >= set(TARGETS)
    out = capsys.readouterr().out
    assert all(k in out for k in TARGETS) and "relay floor" in out
