"""The reward-code sandbox (robolearn.rewards.vlm.sandbox): good programs give the right numbers fast; every
hostile program is refused by the static check or stopped at run time, and none leaves a trace on the host."""

from __future__ import annotations

import math
import os
import shutil
import types
import uuid

import numpy as np
import pytest

from robolearn.errors import RobolearnError
from robolearn.rewards.vlm import _sandbox_worker as wire
from robolearn.rewards.vlm import sandbox
from robolearn.rewards.vlm.hostile import LIFT, RUNTIME, STATIC, batch, reward
from robolearn.rewards.vlm.sandbox import (
    ALLOWED_ATTRIBUTES,
    RewardSandbox,
    SandboxError,
    SandboxLimits,
    UnsafeCodeError,
    check_code,
    measure_throughput,
)

FAST = SandboxLimits(wall_s=1.0)  # hostile runs: an infinite loop costs one second
SECRET = "sk-robolearn-test-secret-do-not-leak"
N = 8


# ---- good programs --------------------------------------------------------------------------------------


def test_lift_reward_matches_numpy():
    obs, action = batch()
    with RewardSandbox(LIFT) as sb:
        terms = sb.evaluate(obs, action)
    d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
    assert set(terms) == {"reach", "lift"}
    np.testing.assert_allclose(terms["reach"], 1.0 - np.tanh(10.0 * d))
    np.testing.assert_allclose(terms["lift"], np.clip(obs["cube_pos"][:, 2] - 0.02, 0.0, 0.05) * 20.0)
    assert all(v.dtype == np.float64 and v.shape == (N,) and v.flags.writeable for v in terms.values())


def test_helpers_constants_loops_and_many_numpy_functions_run_in_the_locked_down_worker():
    # the worker can open no file after start-up: a numpy function that imported lazily would fail here
    source = '''
SCALE = 10.0
WEIGHTS = {"reach": 1.0, "grip": 0.5}

def smooth(x, k=SCALE):
    return 1.0 - np.tanh(k * x)

def compute_reward(obs, action):
    n = action.shape[0]
    d = np.linalg.norm(obs.get("cube_to_tcp"), axis=-1)
    terms = {name: w * np.ones(n) for name, w in WEIGHTS.items()}
    terms["reach"] = terms["reach"] * smooth(d)
    terms["grip"] = terms["grip"] * np.where(obs["gripper_width"] < 0.04, 1.0, 0.0)
    total = np.zeros(n)
    for i in range(action.shape[1]):
        total += action[:, i] ** 2
    terms["effort"] = -0.01 * total
    x = obs["tcp_pos"]
    extra = [np.percentile(x, 50, axis=1), np.median(x, axis=1), np.einsum("ij,ij->i", x, x),
             np.cross(x, obs["cube_pos"])[:, 0], np.interp(d, [0.0, 1.0], [1.0, 0.0]),
             np.sort(x, axis=1)[:, -1], np.nan_to_num(x).std(axis=1), np.arctan2(x[:, 1], x[:, 0]),
             np.isclose(d, 0.0).astype(np.float64), np.cumsum(x, axis=1)[:, 2], np.diff(x, axis=1)[:, 0],
             np.clip(x, -0.1, 0.1).mean(axis=-1), np.full(n, math.sqrt(2.0) * math.pi)]
    terms["misc"] = sum(extra) * 0.0 + 1.0
    terms[f"d_{len(extra)}"] = d
    return terms
'''
    obs, action = batch()
    with RewardSandbox(source) as sb:
        terms = sb.evaluate(obs, action)
    d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
    np.testing.assert_allclose(terms["reach"], 1.0 - np.tanh(10.0 * d))
    np.testing.assert_allclose(terms["grip"], 0.5 * (obs["gripper_width"] < 0.04))
    np.testing.assert_allclose(terms["effort"], -0.01 * (action**2).sum(axis=1))
    np.testing.assert_allclose(terms["misc"], 1.0)
    np.testing.assert_allclose(terms["d_13"], d)


def test_worker_is_reused_survives_python_errors_and_restarts_after_a_kill():
    source = reward('''
mode = obs["mode"][0]
while mode > 1:
    pass
if mode > 0:
    return {"r": 1 / 0}
return {"r": obs["mode"]}
''')
    obs = {"mode": np.zeros(N)}
    with RewardSandbox(source, FAST) as sb:
        sb.evaluate(obs, np.zeros((N, 2)))
        pid = sb.worker_pid
        np.testing.assert_array_equal(sb.evaluate(obs, np.zeros((N, 2)))["r"], 0.0)
        assert sb.worker_pid == pid  # one process for many calls
        with pytest.raises(SandboxError, match=r"raised ZeroDivisionError at line 7 \(return \{\"r\": 1 / 0\}\)"):
            sb.evaluate({"mode": np.ones(N)}, np.zeros((N, 2)))
        assert sb.worker_pid == pid  # an exception in the code does not cost the worker
        with pytest.raises(SandboxError, match="exceeded the 1.0 s wall-clock limit"):
            sb.evaluate({"mode": np.full(N, 2.0)}, np.zeros((N, 2)))
        assert sb.worker_pid is None
        np.testing.assert_array_equal(sb.evaluate(obs, np.zeros((N, 2)))["r"], 0.0)
        assert sb.worker_pid not in (None, pid)  # a fresh worker
    assert sb.worker_pid is None


def test_worker_limits_environment_and_directory(monkeypatch):
    monkeypatch.setenv("ROBOLEARN_TEST_SECRET", SECRET)
    with RewardSandbox(LIFT) as sb:
        sb.evaluate(*batch())
        pid = sb.worker_pid
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        with open(f"/proc/{pid}/limits") as f:
            limits = {ln[:26].strip(): ln[26:].split() for ln in f.read().splitlines()[1:]}
        workdir = sb._workdir
        assert os.listdir(workdir) == []
    assert SECRET.encode() not in environ and b"ROBOLEARN" not in environ
    assert limits["Max file size"][:2] == ["0", "0"]
    assert limits["Max processes"][:2] == ["0", "0"]
    assert limits["Max core file size"][:2] == ["0", "0"]
    assert int(limits["Max open files"][0]) <= 8
    assert limits["Max address space"][0] != "unlimited"
    assert not os.path.exists(workdir)  # removed on close


def test_measure_throughput_is_far_above_the_benchmark_floor():
    result = measure_throughput(LIFT, n_envs=1024, calls=10)
    assert set(result) == {"evals_per_s", "ms_per_call_median", "ms_per_call_p90"}
    assert result["evals_per_s"] > 20_000  # the benchmark's floor; one call is ~1 ms at N=1024


# ---- the static check's messages -----------------------------------------------------------------------


def test_check_code_names_the_line_and_the_fix():
    with pytest.raises(UnsafeCodeError, match=r"line 3: imports are not allowed; numpy is available as np"):
        check_code("\ndef compute_reward(obs, action):\n    import os\n    return {}\n")
    with pytest.raises(UnsafeCodeError) as info:
        check_code(reward("x = open('f')\ny = obs.__class__\nreturn {'r': np.load('f')}"))
    assert [ln for ln, _ in info.value.problems] == [3, 4, 5]  # every problem, in line order
    assert "'open' is not allowed" in str(info.value) and "np.load unpickles" in str(info.value)
    assert str(info.value).count("\n  line ") == 3  # one problem per line
    with pytest.raises(UnsafeCodeError, match=r"^reward code rejected: the code is 20\d+ characters; the limit"):
        check_code(LIFT + "#" * 20_000)
    assert isinstance(info.value, RobolearnError)
    with pytest.raises(UnsafeCodeError, match=r"line 2: syntax error"):
        check_code("def compute_reward(obs, action):\n    return {'r': (}\n")
    check_code(LIFT)  # passes: returns None


def test_allowed_attributes_reach_no_module_but_numpy_linalg_and_math():
    """Attribute names are allowed on any object, so walk every module reachable from np and math through
    them: none may lead to os, sys, builtins, pickle, ctypes or numpy's file I/O."""
    reachable, todo = {}, [np, math]
    while todo:
        module = todo.pop()
        if module.__name__ in reachable:
            continue
        reachable[module.__name__] = module
        for name in ALLOWED_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, types.ModuleType):
                todo.append(value)
            assert value not in (eval, exec, open, compile, getattr, __import__, np.load, np.save, np.fromfile)
    assert set(reachable) <= {"numpy", "numpy.linalg", "numpy.linalg.linalg", "math"}
    for name in wire.ALLOWED_BUILTINS:
        assert name not in ("getattr", "type", "vars", "open", "eval", "exec", "compile", "format", "__import__")


# ---- hostile programs (robolearn.rewards.vlm.hostile) ------------------------------------------


@pytest.fixture
def marker():
    path = f"/tmp/robolearn-sandbox-marker-{uuid.uuid4().hex}"
    yield path
    for p in (path, path + ".d"):  # only if a defence failed
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)


@pytest.mark.parametrize("source, reason", [pytest.param(s, r, id=i) for i, s, r in STATIC])
def test_hostile_program_is_refused_by_the_static_check(source, reason, marker):
    with pytest.raises(UnsafeCodeError) as info:
        RewardSandbox(source.replace("MARKER", marker), FAST)
    assert reason in str(info.value)
    assert not os.path.exists(marker)


@pytest.mark.parametrize("source, reason", [pytest.param(s, r, id=i) for i, s, r in RUNTIME])
def test_hostile_program_is_stopped_at_run_time(source, reason, marker, monkeypatch):
    monkeypatch.setenv("ROBOLEARN_TEST_SECRET", SECRET)
    source = source.replace("MARKER", marker)
    check_code(source)  # these get past the allow-list: the worker and the parent must stop them
    with RewardSandbox(source, FAST) as sb, pytest.raises(SandboxError) as info:
        sb.evaluate(*batch())
    assert reason in str(info.value)
    assert not os.path.exists(marker)


def test_cpu_limit_kills_a_burn_that_the_wall_limit_would_allow():
    source = reward("t = 0\nfor i in range(10**9):\n    t += i\nreturn {}")
    with RewardSandbox(source, SandboxLimits(wall_s=20.0, cpu_s=1.0)) as sb:
        with pytest.raises(SandboxError, match="exceeded the 1.0 s CPU-time limit and was killed"):
            sb.evaluate(*batch())


def test_memory_limit_is_an_rlimit_not_the_hosts_memory():
    # 800 MB fits on the host; the worker is allowed 256 MB beyond numpy
    source = reward("x = np.ones(10**8)\nreturn {'r': x[:8]}")
    with RewardSandbox(source, SandboxLimits(wall_s=5.0, memory_mb=256)) as sb:
        with pytest.raises(SandboxError, match=r"ran out of memory \(limit 256 MB\)"):
            sb.evaluate(*batch())


# ---- defence in depth: the check switched off, the worker's own barriers must still hold ----------------

ESCAPE = '''
def compute_reward(obs, action):
    n = action.shape[0]
    Error = ValueError.__mro__[1]
    os = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "_wrap_close"][0].__init__.__globals__
    out = {"secret": float("ROBOLEARN_TEST_SECRET" in os["environ"]), "env": float(len(os["environ"]))}
    try:
        fd = os["open"]("MARKER", os["O_CREAT"] | os["O_WRONLY"])
        out["wrote"] = float(os["write"](fd, b"pwned"))
    except Error:
        out["wrote"] = 0.0
    try:
        os["mkdir"]("MARKER.d")
        out["mkdir"] = 1.0
    except Error:
        out["mkdir"] = 0.0
    try:
        pid = os["fork"]()
        if pid == 0:
            os["_exit"](0)
        out["forked"] = 1.0
    except Error:
        out["forked"] = 0.0
    return {k: np.full(n, v) for k, v in out.items()}
'''


def test_without_the_static_check_an_escape_to_os_still_finds_nothing(marker, monkeypatch):
    monkeypatch.setenv("ROBOLEARN_TEST_SECRET", SECRET)
    monkeypatch.setattr(sandbox, "check_code", lambda source: None)
    with RewardSandbox(ESCAPE.replace("MARKER", marker), FAST) as sb:
        terms = {k: v[0] for k, v in sb.evaluate(*batch()).items()}
        confinement = dict(sb.confinement)
    assert terms["secret"] == 0 and terms["env"] == 0  # an empty environment
    assert terms["wrote"] == 0  # no fd can be opened, and RLIMIT_FSIZE=0 would stop the bytes
    assert terms["forked"] == 0  # RLIMIT_NPROC=0 (as nobody where we are root)
    assert not os.path.exists(marker) or os.path.getsize(marker) == 0
    if confinement.get("chroot"):  # mkdir in /tmp is stopped only by the chroot (root only)
        assert terms["mkdir"] == 0 and not os.path.exists(marker + ".d")


@pytest.mark.parametrize("body, error", [
    ("open('MARKER', 'w')", "NameError"),
    ("import os", "ImportError"),
    ("getattr(np, 'load')", "NameError"),
])
def test_without_the_static_check_the_builtins_are_still_restricted(body, error, marker, monkeypatch):
    monkeypatch.setattr(sandbox, "check_code", lambda source: None)
    with RewardSandbox(reward(body.replace("MARKER", marker) + "\nreturn {}"), FAST) as sb:
        with pytest.raises(SandboxError, match=f"raised {error} at line 3"):
            sb.evaluate(*batch())
    assert not os.path.exists(marker)


# ---- the parent's side of the wire: a lying worker cannot make it allocate or unpickle -------------------


@pytest.mark.parametrize("header", [
    b'{"kind":"result","arrays":[["r",[1000000000000]]]}',
    b'{"kind":"result","arrays":[["r",[8]],["s",[8]],["t",[8]]]}',
    b'{"kind":"result","arrays":[["r",[8]],["r",[8]]]}',
    b'{"kind":"result","arrays":[["__class__.x y",[8]]]}',
    b'{"kind":"result","arrays":[["r",[-8]]]}',
    b'{"kind":"result","arrays":[["r",["8"]]]}',
    b'[1, 2]',
    b'not json',
])
def test_lying_headers_are_refused_before_reading_a_body(header):
    with pytest.raises(wire.ProtocolError):
        wire.parse_header(header, max_arrays=2, max_elements=2 * N)


def test_pipe_refuses_an_endless_header_and_times_out_on_silence():
    import time

    r, w = os.pipe()
    try:
        pipe = sandbox._Pipe(r, w)
        os.write(w, b"x" * wire.MAX_HEADER_BYTES)  # fits the pipe buffer; no newline
        with pytest.raises(wire.ProtocolError, match="header longer than"):
            pipe.read(time.monotonic() + 1.0, max_arrays=2, max_elements=16)
        pipe.buf.clear()
        t0 = time.monotonic()
        with pytest.raises(sandbox._Timeout):
            pipe.read(time.monotonic() + 0.2, max_arrays=2, max_elements=16)
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(r)
        os.close(w)


def test_evaluate_checks_its_inputs():
    with RewardSandbox(LIFT) as sb:
        with pytest.raises(SandboxError, match=r"obs\['tcp_pos'\] has shape \(3, 3\); expected"):
            sb.evaluate({"tcp_pos": np.zeros((3, 3))}, np.zeros((N, 7)))
        with pytest.raises(SandboxError, match=r"action has shape \(8,\); expected \(N, A\)"):
            sb.evaluate({}, np.zeros(N))
        with pytest.raises(SandboxError, match=r"too large for the worker's 1 MB memory limit"):
            RewardSandbox(LIFT, SandboxLimits(memory_mb=1)).evaluate({"x": np.zeros((10**5, 3))}, np.zeros((10**5, 7)))
        with pytest.raises(SandboxError, match=r"SandboxLimits.wall_s=-1.0 must be a positive number"):
            RewardSandbox(LIFT, SandboxLimits(wall_s=-1.0))


def test_a_worker_that_cannot_start_is_reported_with_its_stderr(monkeypatch):
    monkeypatch.setattr(sandbox.sys, "executable", "/bin/sh")  # sh fails on the worker and says why on stderr
    with RewardSandbox(LIFT) as sb, pytest.raises(SandboxError, match=r"exited unexpectedly \(exit code \d+\): \S"):
        sb.evaluate(*batch())
    monkeypatch.setattr(sandbox.sys, "executable", "/nonexistent/python")
    with RewardSandbox(LIFT) as sb, pytest.raises(SandboxError, match="could not start the sandbox worker"):
        sb.evaluate(*batch())
