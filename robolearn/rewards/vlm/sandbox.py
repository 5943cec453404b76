"""Running untrusted, VLM-written reward code: an allow-list check, then a locked-down worker process.

The program a VLM writes (Eureka-style reward code):

    def compute_reward(obs, action):
        # obs: dict field -> float64 (N,) or (N, k) array, e.g. obs["tcp_pos"] (N, 3) in metres
        # action: float64 (N, A); returns dict term name -> (N,) array; the reward is the terms' sum
        d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
        return {"reach": 1.0 - np.tanh(10.0 * d)}

`np` and `math` are provided; nothing can be imported.

Defence in depth, each layer assuming the one before it failed:
1. `check_code`: an allow-list over the syntax tree (node types, builtin names, attribute names, no
   name or attribute starting with `_`). Python's own sandboxing is famously leaky (every object leads
   to `().__class__.__base__.__subclasses__()` and from there to `os`), so the check refuses anything
   not known harmless rather than hunting for known-bad patterns.
2. The code runs in a separate process (`_sandbox_worker.py`, started with `python -I` and an empty
   environment, so the VLM API key in ours is not there to read) with only allow-listed builtins.
3. That process has resource limits (address space, no file bytes, no new processes or fds, no core),
   sits in an empty read-only directory and, when we are root, is chrooted there and runs as nobody.
4. This process enforces a wall-clock limit per call by killing the worker, and never unpickles what
   it sends: replies are a JSON header plus raw float64 bytes, size-checked before anything is read.

Linux only (resource limits, /proc).
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from robolearn.errors import RobolearnError
from robolearn.rewards.vlm import _sandbox_worker as wire

log = logging.getLogger(__name__)

MAX_SOURCE_CHARS = 20_000
STARTUP_TIMEOUT_S = 60.0  # importing numpy on a loaded machine; not charged to the reward code's wall_s


class UnsafeCodeError(RobolearnError, ValueError):
    """Reward code uses something outside the allow-list; the message names each line and why."""

    def __init__(self, problems: list[tuple[int, str]]):
        self.problems = problems
        """[(line, reason)], line 0 for the program as a whole"""
        lines = [f"line {ln}: {why}" if ln else why for ln, why in problems]
        # one problem reads as one line (the CLI's convention); several go one per line, for the designer
        super().__init__("reward code rejected:" + ("\n  ".join(["", *lines]) if len(lines) > 1 else f" {lines[0]}"))


class SandboxError(RobolearnError, RuntimeError):
    """Reward code failed or misbehaved at run time (exception, limit exceeded, bad return value)."""


# ---- the static check ---------------------------------------------------------------------------------

ALLOWED_ATTRIBUTES = frozenset("""
    array asarray asanyarray zeros ones zeros_like ones_like full full_like arange linspace eye identity
    clip tanh exp expm1 exp2 log log1p log2 log10 sqrt square power reciprocal negative abs absolute fabs
    minimum maximum fmin fmax where sum nansum mean nanmean average median percentile quantile var std
    min max amin amax prod cumsum cumprod diff dot vdot inner outer matmul einsum cross interp
    linalg norm det inv solve
    sin cos tan arcsin arccos arctan arctan2 sinh cosh arctanh hypot deg2rad rad2deg degrees radians
    pi e inf nan newaxis ndarray float32 float64 int32 int64 bool_
    stack concatenate hstack vstack column_stack expand_dims squeeze reshape transpose broadcast_to
    atleast_1d atleast_2d repeat tile take take_along_axis sort argsort argmax argmin count_nonzero
    isfinite isnan isinf nan_to_num isclose allclose sign floor ceil round rint trunc mod fmod heaviside
    any all logical_and logical_or logical_not logical_xor greater greater_equal less less_equal equal
    not_equal
    shape ndim size dtype T astype copy flatten ravel
    get keys values items append extend
    acos asin atan atan2 tau isqrt copysign
""".split())
"""Attribute names reward code may use, on any object: numpy and math functions and constants, array
attributes and methods, and the dict/list methods obs handling needs. Checked by name because the
object is not known statically, so no name here may be dangerous on anything reachable (a test walks
np, math and np.linalg through these names and finds no other module)."""

_ATTRIBUTE_REASONS = {
    **dict.fromkeys(["load", "save", "savez", "savez_compressed", "savetxt", "loadtxt", "genfromtxt", "fromfile",
                     "tofile", "memmap", "dump", "dumps", "open"], "reads or writes files (np.load unpickles)"),
    **dict.fromkeys(["lib", "ctypeslib", "ctypes", "testing", "distutils", "f2py", "core", "os", "sys", "compat"],
                    "reaches modules outside numpy's math"),
    **dict.fromkeys(["frombuffer", "base", "data", "view", "item", "tobytes"], "exposes raw memory"),
    **dict.fromkeys(["format", "format_map"], "str.format can read attributes ('{0.__class__}')"),
}

_NODE_REASONS = {
    ast.Import: "imports are not allowed; numpy is available as np and math as math",
    ast.ImportFrom: "imports are not allowed; numpy is available as np and math as math",
    ast.Global: "global statements are not allowed; keep state in local variables",
    ast.Nonlocal: "nonlocal statements are not allowed",
    ast.ClassDef: "class definitions are not allowed; use functions and dicts",
    ast.AsyncFunctionDef: "async code is not allowed",
    ast.Await: "async code is not allowed",
    ast.AsyncFor: "async code is not allowed",
    ast.AsyncWith: "async code is not allowed",
    ast.With: "with statements are not allowed",
    ast.Try: "try/except is not allowed (it could swallow the limits' errors); guard values with np.clip or "
             "np.where instead",
    ast.TryStar: "try/except is not allowed (it could swallow the limits' errors); guard values with np.clip or "
                 "np.where instead",
    ast.Yield: "yield is not allowed; compute_reward must return a dict",
    ast.YieldFrom: "yield is not allowed; compute_reward must return a dict",
    ast.Match: "match statements are not allowed; use if/elif",
}

_ALLOWED_NODES = (
    ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Return, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.For, ast.While, ast.If, ast.Expr, ast.Pass, ast.Break, ast.Continue, ast.Assert, ast.Raise, ast.Delete,
    ast.Lambda, ast.IfExp, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.keyword, ast.Attribute,
    ast.Subscript, ast.Slice, ast.Name, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.ListComp,
    ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Starred, ast.JoinedStr,
    ast.FormattedValue, ast.NamedExpr, ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop,
)

_BUILTIN_NAMES = frozenset(dir(builtins))


def _name_problem(name: str, what: str) -> str | None:
    if name.startswith("_"):
        return f"{what} {name!r}: names starting with '_' are not allowed (they reach Python internals)"
    if name in _BUILTIN_NAMES and name not in wire.ALLOWED_BUILTINS:
        return (f"{what} {name!r} is not allowed: it is a builtin outside the allow-list (rename a variable "
                f"of that name); the allowed builtins are {', '.join(wire.ALLOWED_BUILTINS)}")
    return None


def _attribute_problem(attr: str) -> str | None:
    if attr.startswith("_"):
        return f"attribute '.{attr}': names starting with '_' are not allowed (they reach Python internals)"
    if attr in _ATTRIBUTE_REASONS:
        return f"attribute '.{attr}' is not allowed: it {_ATTRIBUTE_REASONS[attr]}"
    if attr not in ALLOWED_ATTRIBUTES:
        return (f"attribute '.{attr}' is not in the allow-list of numpy/math functions and array methods "
                f"(e.g. np.linalg.norm, np.clip, np.where, x.shape, x.sum)")
    return None


def _node_problem(node: ast.AST) -> str | None:
    """Why this one node is not allowed, or None."""
    if type(node) in _NODE_REASONS:
        return _NODE_REASONS[type(node)]
    if not isinstance(node, _ALLOWED_NODES):
        return f"{type(node).__name__} is not allowed in reward code"
    if isinstance(node, ast.Name):
        return _name_problem(node.id, "name")
    if isinstance(node, ast.arg):
        return _name_problem(node.arg, "parameter")
    if isinstance(node, ast.keyword) and node.arg is not None:
        return _name_problem(node.arg, "keyword")
    if isinstance(node, ast.FunctionDef):
        if node.decorator_list:
            return "decorators are not allowed"
        return _name_problem(node.name, "function")
    if isinstance(node, ast.Attribute):
        if not isinstance(node.ctx, ast.Load):
            return f"assigning or deleting attribute '.{node.attr}' is not allowed"
        return _attribute_problem(node.attr)
    return None


def _entry_point_problem(tree: ast.Module) -> str | None:
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compute_reward"]
    usage = "the code must define def compute_reward(obs, action) at the top level"
    if not defs:
        return f"{usage}; there is none"
    a = defs[-1].args
    if len(a.posonlyargs) + len(a.args) != 2 or a.vararg or a.kwarg or a.kwonlyargs or a.defaults:
        return f"{usage}, with exactly two positional parameters and no defaults"
    return None


def check_code(source: str) -> None:
    """Raise UnsafeCodeError unless `source` uses only allow-listed syntax, builtins and attributes and
    defines compute_reward(obs, action). The message lists up to 10 problems, each with its line."""
    if not isinstance(source, str):
        raise UnsafeCodeError([(0, f"reward code must be a str, not {type(source).__name__}")])
    if len(source) > MAX_SOURCE_CHARS:
        raise UnsafeCodeError([(0, f"the code is {len(source)} characters; the limit is {MAX_SOURCE_CHARS}")])
    try:
        tree = ast.parse(source, filename=wire.CODE_FILENAME)
    except SyntaxError as e:
        raise UnsafeCodeError([(e.lineno or 0, f"syntax error: {e.msg}")]) from None
    except (RecursionError, MemoryError, ValueError) as e:  # pathological nesting; ValueError: NUL bytes
        raise UnsafeCodeError([(0, f"the code cannot be parsed ({type(e).__name__}: too deeply nested?)")]) from None
    problems: list[tuple[int, str]] = []
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]  # explicit stack: a deep expression must not recurse here
    while stack and len(problems) < 10:
        node, line = stack.pop()
        line = getattr(node, "lineno", line)
        why = _node_problem(node)
        if why:
            problems.append((line, why))
            if type(node) in _NODE_REASONS or not isinstance(node, _ALLOWED_NODES):
                continue  # a construct refused whole: its parts (an import's aliases...) would repeat it
        stack.extend((child, line) for child in ast.iter_child_nodes(node))
    if not problems and (why := _entry_point_problem(tree)):
        problems.append((1, why))
    if problems:
        raise UnsafeCodeError(sorted(problems))


# ---- the worker, from this side ------------------------------------------------------------------------


@dataclass
class SandboxLimits:
    """What one call of the reward code may use before it is stopped."""

    wall_s: float = 5.0
    """wall-clock seconds per call (and for defining the code); past it the worker is killed"""
    cpu_s: float = 10.0
    """CPU seconds per call (RLIMIT_CPU in the worker, rounded up to whole seconds)"""
    memory_mb: int = 1024
    """address space the worker may add to what Python and numpy already map (RLIMIT_AS)"""
    max_terms: int = 16
    """most named terms compute_reward may return"""

    def validate(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "max_terms"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise SandboxError(f"SandboxLimits.{name}={value!r} must be a positive number")


class _Timeout(Exception):
    pass


class _Pipe:
    """Deadline-bounded frame I/O with the worker: every wait is a poll() with the time left, so a
    worker that stops talking costs at most the deadline."""

    def __init__(self, fd_read: int, fd_write: int):
        self.fd_read, self.fd_write = fd_read, fd_write
        self.buf = bytearray()
        os.set_blocking(fd_write, False)

    @staticmethod
    def _wait(fd: int, event: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(fd, event)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise _Timeout

    def _fill(self, deadline: float) -> None:
        self._wait(self.fd_read, select.POLLIN, deadline)
        chunk = os.read(self.fd_read, 1 << 20)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def read(self, deadline: float, max_arrays: int, max_elements: int) -> tuple[dict, dict[str, np.ndarray]]:
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) >= wire.MAX_HEADER_BYTES:  # a line that long, newline included, is too long
                raise wire.ProtocolError(f"header longer than {wire.MAX_HEADER_BYTES} bytes")
            self._fill(deadline)
        header, specs, nbytes = wire.parse_header(bytes(self.buf[:end]), max_arrays, max_elements)
        del self.buf[: end + 1]
        while len(self.buf) < nbytes:
            self._fill(deadline)
        body = bytearray(self.buf[:nbytes])
        del self.buf[:nbytes]
        return header, wire.split_body(body, specs)

    def write(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            self._wait(self.fd_write, select.POLLOUT, deadline)
            try:
                view = view[os.write(self.fd_write, view):]
            except BlockingIOError:
                continue


class RewardSandbox:
    """Runs one reward program in a persistent, locked-down worker process.

        with RewardSandbox(source) as sandbox:
            terms = sandbox.evaluate(obs, action)   # {name: (N,) float64}; reward = sum of the terms

    The worker starts on the first evaluate and is reused (one IPC round trip per call); after a kill
    or crash the next evaluate starts a fresh one. Not thread-safe: one caller at a time."""

    def __init__(self, source: str, limits: SandboxLimits | None = None):
        check_code(source)
        self.source = source
        self.limits = limits or SandboxLimits()
        self.limits.validate()
        self._proc: subprocess.Popen | None = None
        self._pipe: _Pipe | None = None
        self._workdir: str | None = None
        self.confinement: dict[str, bool] = {}
        """what the running worker got beyond the limits: {"chroot": ..., "nobody": ...} (both False unless
        we are root; empty before it starts)"""

    @property
    def worker_pid(self) -> int | None:
        """pid of the running worker, None when there is none"""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> RewardSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop the worker (closing its input ends it; kill if it does not) and remove its directory."""
        proc, self._proc, self._pipe = self._proc, None, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._kill(proc)
            proc.stdout.close()
            proc.stderr.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:  # the worker leads its own session (start_new_session): this reaches anything it started
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()

    def _start(self) -> None:
        self._workdir = self._workdir or tempfile.mkdtemp(prefix="robolearn-reward-")
        os.chmod(self._workdir, 0o500)  # empty and not writable, even by its owner without a chmod
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}  # one BLAS thread: the worker may not start threads (RLIMIT_NPROC)
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", wire.__file__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self._workdir,
                                          env=env, close_fds=True, start_new_session=True)
        except OSError as e:
            raise SandboxError(f"could not start the sandbox worker ({sys.executable}): {e}") from None
        self._pipe = _Pipe(self._proc.stdout.fileno(), self._proc.stdin.fileno())
        self._request(None, "start", time.monotonic() + STARTUP_TIMEOUT_S, expect="hello")
        init = {"kind": "init", "source": self.source, "memory_mb": int(self.limits.memory_mb),
                "cpu_s": float(self.limits.cpu_s), "max_terms": int(self.limits.max_terms)}
        reply, _ = self._request(wire.encode_frame(init), "define", time.monotonic() + self.limits.wall_s,
                                 expect="ready")
        self.confinement = {k: reply.get(k) is True for k in ("chroot", "nobody")}
        if os.geteuid() == 0 and not all(self.confinement.values()):
            log.warning("reward sandbox worker runs as root without %s (the static check and the limits still "
                        "apply)", " and ".join(k for k, v in self.confinement.items() if not v))

    def _request(self, frame: bytes | None, what: str, deadline: float, expect: str,
                 n: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
        """Send `frame` (if any) and read the reply, turning every way the worker can fail into one
        SandboxError; the worker is killed on any failure but an ordinary error reply."""
        proc = self._proc
        try:
            if frame is not None:
                self._pipe.write(frame, deadline)
            header, arrays = self._pipe.read(deadline, max_arrays=self.limits.max_terms, max_elements=
                                             self.limits.max_terms * n)
        except _Timeout:
            self._discard()
            if what == "start":
                raise SandboxError(f"the sandbox worker did not start within {STARTUP_TIMEOUT_S:.0f} s") from None
            raise SandboxError(f"reward code exceeded the {self.limits.wall_s} s wall-clock limit (infinite "
                               f"loop?) and was killed") from None
        except (EOFError, BrokenPipeError, ConnectionResetError):
            raise SandboxError(self._death_message(proc)) from None
        except wire.ProtocolError as e:
            self._discard()
            raise SandboxError(f"the sandbox worker sent a malformed reply ({e}); it was stopped") from None
        if header["kind"] == "error":
            message = header.get("message")
            if what == "define":
                self._discard()
            raise SandboxError(str(message)[:2000] if message else "reward code failed")
        if header["kind"] != expect:
            self._discard()
            raise SandboxError(f"the sandbox worker replied {header['kind'][:40]!r} instead of {expect!r}; it "
                               f"was stopped")
        return header, arrays

    def _discard(self) -> None:
        """Kill the worker; the next evaluate starts a fresh one."""
        proc, self._proc, self._pipe = self._proc, None, None
        if proc is not None:
            self._kill(proc)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                with contextlib.suppress(OSError):
                    f.close()

    def _death_message(self, proc: subprocess.Popen) -> str:
        """Why the worker went away by itself (read once it has exited)."""
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        stderr = ""
        if proc.returncode is not None:
            try:  # only start-up writes here (fd 2 is /dev/null once the code is loaded): small, and ended
                stderr = proc.stderr.read(4096).decode(errors="replace").strip()
            except (OSError, ValueError):
                pass
        self._discard()
        code = proc.returncode
        if code == -signal.SIGXCPU:
            return f"reward code exceeded the {self.limits.cpu_s} s CPU-time limit and was killed"
        if code == -signal.SIGKILL:
            return f"the sandbox worker was killed by SIGKILL (out of memory? limit {self.limits.memory_mb} MB)"
        if code is not None and code < 0:
            return f"reward code crashed the sandbox worker ({signal.Signals(-code).name})"
        tail = f": {stderr[-1000:]}" if stderr else ""
        return f"the sandbox worker exited unexpectedly (exit code {code}){tail}"

    def evaluate(self, obs: dict[str, np.ndarray], action: np.ndarray) -> dict[str, np.ndarray]:
        """Named reward terms for a batch of N envs.

        obs: field -> (N,) or (N, k) array (sent as float64); action: (N, A)
        -> {term: (N,) float64}, at most limits.max_terms terms, all finite."""
        action = np.asarray(action, dtype=np.float64)
        if action.ndim != 2:
            raise SandboxError(f"action has shape {action.shape}; expected (N, A)")
        n = action.shape[0]
        if not isinstance(obs, dict):
            raise SandboxError(f"obs must be a dict of field name -> array, not {type(obs).__name__}")
        arrays = {}
        for name, value in obs.items():
            value = np.asarray(value, dtype=np.float64)
            if not isinstance(name, str) or not wire.TERM_NAME_RE.fullmatch(name) or name == wire.ACTION_KEY:
                raise SandboxError(f"obs field name {name!r} must be 1-64 characters from A-Z a-z 0-9 _ . / - "
                                   f"(and not {wire.ACTION_KEY!r})")
            if value.ndim not in (1, 2) or value.shape[0] != n:
                raise SandboxError(f"obs[{name!r}] has shape {value.shape}; expected (N,) or (N, k) with N={n} "
                                   f"(the action's batch size)")
            arrays[name] = value
        arrays[wire.ACTION_KEY] = action
        frame = wire.encode_frame({"kind": "eval"}, arrays)
        if len(frame) > self.limits.memory_mb * 1024 * 1024 // 4:  # the worker holds it, and the code copies
            raise SandboxError(f"obs and action are {len(frame) / 2**20:.0f} MB, too large for the worker's "
                               f"{self.limits.memory_mb} MB memory limit; evaluate fewer envs per call or "
                               f"raise SandboxLimits.memory_mb")
        if self._proc is None:
            self._start()
        _, terms = self._request(frame, "evaluate", time.monotonic() + self.limits.wall_s, expect="result", n=n)
        try:  # parse_header bounded the sizes; this checks what the worker claims the values are
            return wire.validate_terms(terms, n, self.limits.max_terms)
        except ValueError as e:
            raise SandboxError(str(e)) from None


def measure_throughput(source: str, n_envs: int = 1024, calls: int = 50,
                       limits: SandboxLimits | None = None) -> dict[str, float]:
    """Env-evaluations per second of `source` through the sandbox, IPC included, on random lift-like
    obs (tcp_pos, cube_pos, cube_to_tcp (N, 3); gripper_width (N,); action (N, 7)), after one warm-up
    call that starts the worker. Median-based, so a scheduler hiccup does not move it."""
    rng = np.random.default_rng(0)
    tcp, cube = rng.uniform(-0.3, 0.3, (n_envs, 3)), rng.uniform(-0.3, 0.3, (n_envs, 3))
    obs = {"tcp_pos": tcp, "cube_pos": cube, "cube_to_tcp": cube - tcp,
           "gripper_width": rng.uniform(0.0, 0.08, n_envs)}
    action = rng.uniform(-1.0, 1.0, (n_envs, 7))
    times = []
    with RewardSandbox(source, limits) as sandbox:
        sandbox.evaluate(obs, action)
        for _ in range(calls):
            t0 = time.perf_counter()
            sandbox.evaluate(obs, action)
            times.append(time.perf_counter() - t0)
    median, p90 = float(np.median(times)), float(np.percentile(times, 90))
    return {"evals_per_s": n_envs / median, "ms_per_call_median": 1000 * median, "ms_per_call_p90": 1000 * p90}


__all__ = ["ALLOWED_ATTRIBUTES", "RewardSandbox", "SandboxError", "SandboxLimits", "UnsafeCodeError", "check_code",
           "measure_throughput"]
