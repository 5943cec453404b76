"""The hostile programs every sandbox change is checked against (tests) and counted by `bench vlm`.

Each case is (id, source, reason): `STATIC` ones must be refused by `check_code` with `reason` in the
message; `RUNTIME` ones get past the allow-list and must be stopped by the worker or the parent.
MARKER in a source stands for a fresh /tmp path that must not exist afterwards (no side effect).
"""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np

LIFT = '''
def compute_reward(obs, action):
    d = np.linalg.norm(obs["cube_to_tcp"], axis=-1)
    return {"reach": 1.0 - np.tanh(10.0 * d), "lift": np.clip(obs["cube_pos"][:, 2] - 0.02, 0.0, 0.05) * 20.0}
'''


def reward(body: str, header: str = "") -> str:
    """A program whose compute_reward runs `body` (indented here) after module-level `header`."""
    lines = "\n".join("    " + ln for ln in body.strip("\n").splitlines())
    return f"{header}\ndef compute_reward(obs, action):\n{lines}\n"



STATIC = [  # refused by check_code, with the reason that must appear in the message
    ("import_os", reward("import os\nos.system('touch MARKER')\nreturn {}"), "imports are not allowed"),
    ("from_import", reward("from subprocess import run\nrun(['touch', 'MARKER'])\nreturn {}"), "imports"),
    ("dunder_import", reward("__import__('os').system('touch MARKER')\nreturn {}"), "'__import__'"),
    ("open_write", reward("open('MARKER', 'w').write('x')\nreturn {}"), "'open' is not allowed"),
    ("eval", reward("return eval('{\"r\": action[:, 0]}')"), "'eval' is not allowed"),
    ("exec", reward("exec('import os')\nreturn {}"), "'exec' is not allowed"),
    ("compile", reward("c = compile('1', 'f', 'eval')\nreturn {}"), "'compile' is not allowed"),
    ("globals", reward("g = globals()\nreturn {}"), "'globals' is not allowed"),
    ("vars", reward("v = vars()\nreturn {}"), "'vars' is not allowed"),
    ("getattr_load", reward("f = getattr(np, 'lo' + 'ad')\nreturn {'r': f('MARKER')}"), "'getattr' is not allowed"),
    ("np_load_pickle", reward("return np.load('MARKER', allow_pickle=True)"), "np.load unpickles"),
    ("np_save", reward("np.save('MARKER', action)\nreturn {}"), "'.save' is not allowed"),
    ("np_fromfile", reward("x = np.fromfile('/etc/passwd')\nreturn {}"), "'.fromfile' is not allowed"),
    ("np_memmap", reward("m = np.memmap('MARKER', mode='w+', shape=(4,))\nreturn {}"), "'.memmap'"),
    ("tofile", reward("action.tofile('MARKER')\nreturn {}"), "'.tofile' is not allowed"),
    ("dump_pickle", reward("action.dump('MARKER')\nreturn {}"), "'.dump' is not allowed"),
    ("np_lib", reward("f = np.lib.format.open_memmap\nreturn {}"), "'.lib' is not allowed"),
    ("np_ctypeslib", reward("c = np.ctypeslib\nreturn {}"), "'.ctypeslib' is not allowed"),
    ("ctypes_pointer", reward("p = action.ctypes.data\nreturn {}"), "'.ctypes' is not allowed"),
    ("subclasses_walk", reward("s = ().__class__.__bases__[0].__subclasses__()\nreturn {}"), "'.__class__'"),
    ("function_globals", reward("g = compute_reward.__globals__\nreturn {}"), "'.__globals__'"),
    ("generator_frame", reward("g = (x for x in []).gi_frame.f_back\nreturn {}"), "'.gi_frame'"),
    ("str_format", reward("s = '{0.__class__}'.format(obs)\nreturn {}"), "'.format' is not allowed"),
    ("format_builtin", reward("s = format(obs, '')\nreturn {}"), "'format' is not allowed"),
    ("fstring_dunder", reward("s = f'{obs.__class__}'\nreturn {}"), "'.__class__'"),
    ("obs_class", reward("c = obs.__class__\nreturn {}"), "'.__class__'"),
    ("type_builtin", reward("t = type(obs)\nreturn {}"), "'type' is not allowed"),
    ("breakpoint", reward("breakpoint()\nreturn {}"), "'breakpoint' is not allowed"),
    ("exit", reward("exit()\nreturn {}"), "'exit' is not allowed"),
    ("np_sys", reward("m = np.sys.modules\nreturn {}"), "'.sys' is not allowed"),
    ("builtins_name", reward("b = __builtins__\nreturn {}"), "'__builtins__'"),
    ("setattr_module", reward("np.sum = np.prod\nreturn {}"), "assigning or deleting attribute '.sum'"),
    ("yield", reward("yield {'r': action[:, 0]}"), "yield is not allowed"),
    ("class", "class A:\n    pass\n" + LIFT, "class definitions are not allowed"),
    ("try_swallows", reward("try:\n    pass\nexcept BaseException:\n    pass\nreturn {}"), "try/except"),
    ("global", reward("global np\nreturn {}"), "global statements"),
    ("with", reward("with open('MARKER', 'w') as f:\n    pass\nreturn {}"), "with statements"),
    ("decorator", "@np.vectorize\n" + LIFT.lstrip(), "decorators are not allowed"),
    ("missing_entry_point", "def reward(obs, action):\n    return {}\n", "must define def compute_reward"),
    ("wrong_signature", "def compute_reward(obs):\n    return {}\n", "exactly two positional parameters"),
    ("too_long", LIFT + "#" * 20_000, "the limit is 20000"),
    ("deep_nesting", reward("x = " + "[" * 500 + "]" * 500 + "\nreturn {}"), "too many nested parentheses"),
    ("deep_expression", reward("x = " + "+".join(["1"] * 4000) + "\nreturn {}"), "too deeply nested"),
]

RUNTIME = [  # pass the check, stopped by the worker or the parent, with the reason that must appear
    ("infinite_loop", reward("while True:\n    pass"), "exceeded the 1.0 s wall-clock limit (infinite loop?)"),
    ("loop_at_definition", "while True:\n    pass\n" + LIFT, "wall-clock limit"),
    ("nested_loop_cpu_burn", reward("t = 0\nfor i in range(10**6):\n    for j in range(10**6):\n"
                                    "        t += i * j\nreturn {}"), "wall-clock limit"),
    ("bigint_cpu_burn", reward("x = 10\ny = x ** (x ** 9)\nreturn {}"), "wall-clock limit"),
    ("numpy_memory_bomb", reward("x = np.ones(10**11)\nreturn {'r': x[:8]}"),
     "ran out of memory (limit 1024 MB) at line 3"),
    ("list_memory_bomb", reward("x = [0] * 10**10\nreturn {}"), "ran out of memory"),
    ("str_memory_bomb", reward("x = 'x' * 10**10\nreturn {}"), "ran out of memory"),
    ("recursion_bomb", "def f(x):\n    return f(x)\n" + reward("return {'r': f(action)}"), "RecursionError at line 2"),
    ("zero_division", reward("a = 1\nb = 0\nreturn {'r': action[:, 0] * (a / b)}"), "ZeroDivisionError at line 5"),
    ("error_at_definition", "X = 1 / 0\n" + LIFT, "ZeroDivisionError at line 1 (X = 1 / 0) while defining it"),
    ("huge_output", reward("return {'r': np.zeros(10**7)}"), "shape (10000000,); expected (N,)=(8,)"),
    ("scalar_term", reward("return {'r': 1.0}"), "shape (); expected (N,)=(8,) - return one value per env"),
    ("column_term", reward("return {'r': action[:, :1]}"), "shape (8, 1)"),
    ("nan_term", reward("return {'r': np.log(action[:, 0] * 0.0) * 0.0}"), "'r' is NaN or infinite in 8 of 8"),
    ("inf_term", reward("x = action[:, 0] * 0.0\nx[0] = np.inf\nreturn {'r': x}"), "infinite in 1 of 8"),
    ("returns_list", reward("return [action[:, 0]]"), "must return a dict"),
    ("returns_none", reward("pass"), "returned a NoneType"),
    ("empty_dict", reward("return {}"), "returned an empty dict"),
    ("too_many_terms", reward("return {f't{i}': action[:, 0] for i in range(17)}"), "17 terms; at most 16"),
    ("bad_term_name", reward("return {'a b!': action[:, 0]}"), "term name 'a b!'"),
    ("non_str_term_name", reward("return {1: action[:, 0]}"), "term name '1'"),
    ("non_numeric_term", reward("return {'r': 'abc'}"), "not convertible to float64"),
    ("missing_field", reward("return {'r': obs['joint_vel'][:, 0]}"), "raised KeyError at line 3"),
]


def batch(n: int = 8, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Lift-like fields of n envs and their actions."""
    rng = np.random.default_rng(seed)
    tcp, cube = rng.uniform(-0.2, 0.2, (n, 3)), rng.uniform(0.0, 0.1, (n, 3))
    obs = {"tcp_pos": tcp, "cube_pos": cube, "cube_to_tcp": cube - tcp, "gripper_width": rng.uniform(0, 0.08, n)}
    return obs, rng.uniform(-1, 1, (n, 7))


def run_suite(limits=None) -> list[dict]:
    """Run every hostile case; per case: id, kind, blocked (refused or stopped with the expected
    reason), side_effect (its MARKER path appeared), message."""
    from robolearn.rewards.vlm.sandbox import RewardSandbox, SandboxError, SandboxLimits, UnsafeCodeError

    limits = limits or SandboxLimits(wall_s=1.0)
    rows = []
    for kind, cases in (("static", STATIC), ("runtime", RUNTIME)):
        for case_id, source, reason in cases:
            marker = f"/tmp/robolearn-hostile-{uuid.uuid4().hex}"
            message, blocked = "", False
            try:
                with RewardSandbox(source.replace("MARKER", marker), limits) as box:
                    box.evaluate(*batch())
            except (UnsafeCodeError, SandboxError) as e:
                message = str(e)
                blocked = reason in message
            side_effect = any(os.path.exists(p) for p in (marker, marker + ".d"))
            for p in (marker, marker + ".d"):
                if os.path.isdir(p):
                    shutil.rmtree(p)
                elif os.path.exists(p):
                    os.remove(p)
            rows.append({"id": case_id, "kind": kind, "blocked": blocked and not side_effect,
                         "side_effect": side_effect, "message": message.splitlines()[0] if message else ""})
    return rows
