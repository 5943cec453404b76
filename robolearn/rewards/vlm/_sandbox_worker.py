"""The worker process that runs untrusted, VLM-written reward code, and the wire format it speaks.

Started by `sandbox.RewardSandbox` as `python -I <this file>`: run as a script, not with `-m`, so that
it imports numpy and the standard library only (`-m robolearn...` would import robolearn's package
`__init__`s, and with them torch: seconds of start-up and hundreds of MB of address space inside the
memory limit). `sandbox.py` imports this module for the wire format and the allow-listed builtins, so
both sides share one definition of each.

Before any untrusted code runs the worker: points fds 0-2 at /dev/null (the protocol moves to two
duplicated fds), sets resource limits (address space, file size 0, no new processes, no new fds, no
core dumps), when root chroots into its empty directory and becomes nobody (root ignores RLIMIT_NPROC),
empties os.environ, and executes the
code with only the allow-listed builtins plus `np` and `math`. The static check in sandbox.py is the
first barrier; these are the ones behind it.

Wire format, both ways: one JSON header line (at most MAX_HEADER_BYTES) naming `arrays` as
[[name, shape], ...], followed by their float64 little-endian bytes in that order. Nothing is ever
pickled: the parent parses what the worker sends with json and np.frombuffer, after size checks.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import re
import resource
import signal
import sys

import numpy as np

MAX_HEADER_BYTES = 64 * 1024
DTYPE = "<f8"
TERM_NAME_RE = re.compile(r"[A-Za-z0-9_./-]{1,64}")
CODE_FILENAME = "<reward code>"
ACTION_KEY = "__action__"  # the action travels with the obs fields under this name (no obs field may use it)
ALLOWED_BUILTINS = (
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "len", "list", "map",
    "max", "min", "pow", "range", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip",
    "ValueError",
)  # no type/getattr/vars/open/eval/__import__...: see sandbox.check_code for why


class ProtocolError(Exception):
    """A frame does not follow the wire format."""


# ---- wire format (shared with the parent) ------------------------------------------------------------


def encode_frame(header: dict, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One frame: the header (with `arrays` filled in) as a JSON line, then the arrays' float64 bytes."""
    arrays = arrays or {}
    blobs = [np.ascontiguousarray(a, dtype=DTYPE) for a in arrays.values()]
    header = dict(header, arrays=[[k, list(b.shape)] for k, b in zip(arrays, blobs)])
    line = json.dumps(header, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header is {len(line)} bytes; the limit is {MAX_HEADER_BYTES}")
    return b"".join([line, *(b.tobytes() for b in blobs)])


def parse_header(line: bytes, max_arrays: int, max_elements: int) -> tuple[dict, list[tuple[str, tuple]], int]:
    """The header dict, its array specs [(name, shape)] and the body size in bytes, all checked: at most
    `max_arrays` arrays of valid names and non-negative int dims, at most `max_elements` float64s in all."""
    try:
        header = json.loads(line)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"header is not JSON ({e})") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise ProtocolError("header is not an object with a string 'kind'")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) > max_arrays:
        raise ProtocolError(f"header 'arrays' must be a list of at most {max_arrays} [name, shape] pairs")
    out, total, seen = [], 0, set()
    for spec in specs:
        ok = isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], list)
        if not ok or not TERM_NAME_RE.fullmatch(spec[0]) or spec[0] in seen:
            raise ProtocolError(f"bad or repeated array spec {str(spec)[:100]}")
        shape = spec[1]
        if len(shape) > 4 or not all(type(d) is int and 0 <= d <= max_elements for d in shape):
            raise ProtocolError(f"bad shape {str(shape)[:100]} for array {spec[0]!r}")
        total += math.prod(shape)
        if total > max_elements:
            raise ProtocolError(f"frame holds more than {max_elements} values")
        seen.add(spec[0])
        out.append((spec[0], tuple(shape)))
    return header, out, total * 8


def split_body(body: bytearray, specs: list[tuple[str, tuple]]) -> dict[str, np.ndarray]:
    """Writable float64 views of `body`, one per spec (the body size was checked by parse_header)."""
    arrays, offset = {}, 0
    for name, shape in specs:
        count = math.prod(shape)
        arrays[name] = np.frombuffer(body, dtype=DTYPE, count=count, offset=offset).reshape(shape)
        offset += 8 * count
    return arrays


def validate_terms(result: object, n: int, max_terms: int) -> dict[str, np.ndarray]:
    """The reward terms as float64 (n,) arrays; ValueError naming the term and the fix otherwise.
    Run on what compute_reward returned (in the worker) and again on what arrives (in the parent)."""
    if not isinstance(result, dict):
        raise ValueError(f"compute_reward must return a dict of term name -> (N,) array; it returned a "
                         f"{type(result).__name__}")
    if not result:
        raise ValueError("compute_reward returned an empty dict; return at least one named term")
    if len(result) > max_terms:
        raise ValueError(f"compute_reward returned {len(result)} terms; at most {max_terms} are allowed")
    terms = {}
    for name, value in result.items():
        if not isinstance(name, str) or not TERM_NAME_RE.fullmatch(name):
            raise ValueError(f"term name {str(name)[:80]!r} must be a string of 1-64 characters from "
                             f"A-Z a-z 0-9 _ . / -")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"term {name!r} is not convertible to float64 ({str(e)[:200]})") from None
        if arr.shape != (n,):
            raise ValueError(f"term {name!r} has shape {arr.shape}; expected (N,)=({n},) - return one value "
                             f"per env")
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"term {name!r} is NaN or infinite in {bad} of {n} envs; guard divisions and "
                             f"logs (e.g. np.clip, np.maximum(x, 1e-6))")
        terms[name] = arr
    return terms


# ---- the worker ---------------------------------------------------------------------------------------


class _Channel:
    """Blocking frame I/O on the worker's side. The parent is trusted, but frames are still parsed with
    the same checks, so a bug there surfaces as a clear error instead of a huge allocation."""

    def __init__(self, fd_in: int, fd_out: int):
        self.rfile = os.fdopen(fd_in, "rb", buffering=1 << 16)
        self.fd_out = fd_out

    def read(self) -> tuple[dict, dict[str, np.ndarray]]:
        line = self.rfile.readline(MAX_HEADER_BYTES + 1)
        if not line:
            raise EOFError
        header, specs, nbytes = parse_header(line, max_arrays=256, max_elements=1 << 28)
        body = bytearray(nbytes)
        view, got = memoryview(body), 0
        while got < nbytes:
            n = self.rfile.readinto(view[got:])
            if not n:
                raise EOFError
            got += n
        return header, split_body(body, specs)

    def write(self, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        view = memoryview(encode_frame(header, arrays))
        while view:
            view = view[os.write(self.fd_out, view):]


def _isolate_fds() -> tuple[int, int]:
    """Move the protocol pipes off fds 0/1 and point 0/1 at /dev/null (stderr follows once started)."""
    fd_in, fd_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    return fd_in, fd_out


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:  # first field: total program size in pages
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _lock_down(memory_mb: int, last_fd: int) -> dict[str, bool]:
    """Resource limits, then, when root, chroot into the (empty, read-only) working directory and become
    nobody. Returns which of those two took effect: neither does when not root, and a container without
    CAP_SYS_CHROOT or a nobody user skips them; the limits and the allow-lists still hold."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # warnings nobody reads must not fill the stderr pipe and block the worker
    os.close(devnull)
    limit = _address_space_bytes() + memory_mb * 1024 * 1024  # memory_mb beyond what numpy already maps
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the size limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # no bytes into any file (pipes are not files)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no fork, no threads (root ignores it: see below)
    confined = {"chroot": False, "nobody": False}
    if os.geteuid() == 0:
        try:
            import pwd

            nobody = pwd.getpwnam("nobody")
        except KeyError:
            nobody = None
        try:  # an empty root: no path outside leads anywhere (and nobody cannot chroot back out)
            os.chroot(".")
            os.chdir("/")
            confined["chroot"] = True
        except OSError:
            pass
        if nobody is not None:
            try:
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                confined["nobody"] = True
            except OSError:  # e.g. a user namespace without a nobody mapping
                pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (last_fd + 1, last_fd + 1))  # no fd can be opened
    os.environ.clear()
    return confined


def _set_cpu_budget(cpu_s: float) -> None:
    """RLIMIT_CPU counts the whole process lifetime, so each call gets `cpu_s` beyond what is used so
    far: past it the kernel sends SIGXCPU, whose default action ends the worker. The hard limit stays
    open so the next call can raise the soft one (the reward code cannot call setrlimit)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + cpu_s)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _describe(exc: BaseException, source_lines: list[str], memory_mb: int, when: str) -> str:
    """One line: what the reward code raised and at which line of its source."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == CODE_FILENAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = ""
    if line is not None:
        text = source_lines[line - 1].strip() if 0 < line <= len(source_lines) else ""
        where = f" at line {line}" + (f" ({text[:100]})" if text else "")
    if isinstance(exc, MemoryError):
        return f"reward code ran out of memory (limit {memory_mb} MB){where}{when}"
    try:
        message = str(exc)[:500]
    except Exception:  # a str() that fails must not take the worker down
        message = "<unprintable>"
    return f"reward code raised {type(exc).__name__}{where}{when}: {message}"


def _numpy_import(name, globals=None, locals=None, fromlist=(), level=0):
    """`__import__` of the reward code's builtins. numpy's C code imports its own helpers lazily (x.std()
    fetches numpy.core._methods) through the builtins of the running Python frame, which is the reward
    code's: allow exactly that, modules under numpy that are already loaded. Reward code itself cannot
    import (the static check refuses the statement; no file could be opened to load a new module)."""
    if level == 0 and name.split(".")[0] == "numpy" and name in sys.modules:
        return builtins.__import__(name, globals, locals, fromlist, level)
    raise ImportError(f"import of {name!r} is not allowed in reward code")


def main() -> None:
    fd_in, fd_out = _isolate_fds()
    channel = _Channel(fd_in, fd_out)
    channel.write({"kind": "hello", "pid": os.getpid()})
    init, _ = channel.read()
    source, memory_mb, cpu_s, max_terms = init["source"], init["memory_mb"], init["cpu_s"], init["max_terms"]
    confined = _lock_down(memory_mb, max(fd_in, fd_out))
    sys.setrecursionlimit(500)  # deep enough for any reward; a recursion bomb fails fast

    namespace = {"__builtins__": {**{k: getattr(builtins, k) for k in ALLOWED_BUILTINS}, "__import__": _numpy_import},
                 "__name__": "reward_code", "np": np, "math": math}
    lines = source.splitlines()
    try:
        _set_cpu_budget(cpu_s)
        exec(compile(source, CODE_FILENAME, "exec"), namespace)
        compute_reward = namespace.get("compute_reward")
        if not callable(compute_reward):
            raise ValueError("the code must define def compute_reward(obs, action)")
    except BaseException as e:  # noqa: B036 - everything the code raises is reported, SystemExit included
        channel.write({"kind": "error", "message": _describe(e, lines, memory_mb, " while defining it")})
        return
    channel.write({"kind": "ready", **confined})

    while True:
        try:
            _, arrays = channel.read()
        except EOFError:
            return
        action = arrays.pop(ACTION_KEY)
        n = action.shape[0]
        try:
            _set_cpu_budget(cpu_s)
            result = compute_reward(arrays, action)
        except BaseException as e:  # noqa: B036
            channel.write({"kind": "error", "message": _describe(e, lines, memory_mb, "")})
            continue
        try:
            terms = validate_terms(result, n, max_terms)
        except ValueError as e:
            channel.write({"kind": "error", "message": str(e)})
            continue
        except BaseException as e:  # noqa: B036 - e.g. MemoryError converting a huge term
            channel.write({"kind": "error", "message": _describe(e, lines, memory_mb, " checking its result")})
            continue
        channel.write({"kind": "result"}, terms)


if __name__ == "__main__":
    main()
