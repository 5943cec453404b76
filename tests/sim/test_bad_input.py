"""Every user mistake around the simulator gets one clear error: a `robolearn.errors` type whose
message names the thing that is wrong (and, where there is one, the fix)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from robolearn.errors import ActionError, ConfigError, UnknownNameError
from robolearn.hardware import HARDWARE_DIR, load_robot
from robolearn.sim.config import EnvConfig
from robolearn.sim.registry import get_task_class, make_env


# ---- names ---------------------------------------------------------------------------------------
def test_unknown_task_name_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match=r"unknown task 'lfit'.*lift.*Did you mean 'lift'\?"):
        make_env("lfit")
    with pytest.raises(UnknownNameError, match=r"unknown task 'pick'"):
        get_task_class("pick")


def test_unknown_camera_names_the_scene_cameras():
    with pytest.raises(UnknownNameError, match=r"unknown camera 'frnt'.*front.*Did you mean 'front'\?"):
        make_env("lift", cameras=["frnt"])


def test_unknown_robot_name():
    with pytest.raises(UnknownNameError, match=r"unknown robot 'pnda'.*Did you mean 'panda'\?"):
        load_robot("pnda")


# ---- config values -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message", "make_env_message"),
    [
        ({"num_envs": 0}, r"num_envs=0 is invalid; it must be a positive integer", None),
        ({"num_threads": 0}, r"num_threads=0 is invalid", None),
        ({"physics_hz": 510.0}, r"physics_hz=510.0 is invalid; it must be a whole multiple of control_hz=20.0", None),
        ({"control_hz": 0.0}, r"control_hz=0.0 is invalid", None),
        ({"action_mode": "torque"}, r"action_mode='torque' is invalid; it must be 'ee_delta' or 'joint_pos'",
         r"action_mode='torque': expected one of 'ee_delta', 'joint_pos'"),
        ({"image_size": (4, 4)}, r"image_size=\(4, 4\) is invalid; it must be \(height, width\)", None),
        ({"image_size": (84,)}, r"image_size=\(84,\) is invalid",
         r"image_size=\[84\]: expected a list of exactly 2 integers"),
        ({"image_size": (84, 84, 3)}, r"image_size=\(84, 84, 3\) is invalid",
         r"image_size=\[84, 84, 3\]: expected a list of exactly 2 integers"),
        ({"max_episode_steps": -1}, r"max_episode_steps=-1 is invalid", None),
        ({"cameras": ["front", "front"]}, r"cameras=\['front', 'front'\] is invalid; it must be a list without", None),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "",
)
def test_invalid_config_values(overrides, message, make_env_message):
    with pytest.raises(ConfigError, match=message):
        EnvConfig(**overrides).validate()
    # make_env builds through the typed config builder (the CLI's checks), so a value of the wrong
    # shape or choice is named in its wording; either way nothing is built
    with pytest.raises(ConfigError, match=make_env_message or message):
        make_env("lift", **overrides)


def test_unknown_task_option_lists_the_options():
    with pytest.raises(ConfigError, match=r"task 'lift' has no option 'cube_size'; its options are: .*cube_half_size"):
        make_env("lift", task_options={"cube_size": 0.03})


def test_task_option_of_the_wrong_type():
    with pytest.raises(ConfigError, match=r"task option lift.lift_height must be a number, got 'high'"):
        make_env("lift", task_options={"lift_height": "high"})
    with pytest.raises(ConfigError, match=r"task option lift.lift_height must be finite"):
        make_env("lift", task_options={"lift_height": float("nan")})


# ---- actions -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 6), (7,), (3, 7), (2, 7, 1), ()])
def test_action_of_the_wrong_shape(shape):
    env = make_env("lift", num_envs=2)
    env.reset(seed=0)
    expected = r"action has shape .* expected \(2, 7\) for 2 envs in action_mode='ee_delta'"
    with pytest.raises(ActionError, match=expected):
        env.step(np.zeros(shape))
    env.close()


def test_joint_pos_action_shape_names_the_mode():
    env = make_env("lift", num_envs=1, action_mode="joint_pos")
    env.reset(seed=0)
    with pytest.raises(ActionError, match=r"expected \(1, 8\) for 1 envs in action_mode='joint_pos'"):
        env.step(np.zeros((1, 7)))
    env.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_action_leaves_the_sim_untouched(bad):
    env = make_env("lift", num_envs=2, seed=0)
    twin = make_env("lift", num_envs=2, seed=0)  # never sees the bad action
    env.reset()
    twin.reset()
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (2, 7))
    env.step(a)
    twin.step(a)
    snapshot = [(d.qpos.copy(), d.qvel.copy(), d.ctrl.copy(), d.time) for d in env.datas]
    elapsed = env.elapsed.copy()

    poisoned = rng.uniform(-1, 1, (2, 7))
    poisoned[1, 3] = bad
    with pytest.raises(ActionError, match=r"NaN or inf \(env 1, component 3\); the simulator state was not changed"):
        env.step(poisoned)
    for d, (qpos, qvel, ctrl, t) in zip(env.datas, snapshot):
        np.testing.assert_array_equal(d.qpos, qpos)
        np.testing.assert_array_equal(d.qvel, qvel)
        np.testing.assert_array_equal(d.ctrl, ctrl)
        assert d.time == t
    np.testing.assert_array_equal(env.elapsed, elapsed)
    # and the rollout goes on exactly as if the bad action had never been sent
    a = rng.uniform(-1, 1, (2, 7))
    obs, reward, *_ = env.step(a)
    twin_obs, twin_reward, *_ = twin.step(a)
    for k in obs:
        np.testing.assert_array_equal(obs[k], twin_obs[k])
    np.testing.assert_array_equal(reward, twin_reward)
    env.close()
    twin.close()


# ---- renderer ------------------------------------------------------------------------------------
RENDER_PROBE = textwrap.dedent("""
    import sys
    from robolearn.errors import RendererError
    try:
        from robolearn.sim.registry import make_env
        make_env("lift", cameras=["front"], image_size=(32, 32)).reset(seed=0)
    except RendererError as e:
        print("RendererError:", e)
        sys.exit(0)
    except BaseException as e:
        print("NOT A RendererError:", type(e).__module__, type(e).__name__, e)
        sys.exit(1)
    print("rendered without an error")
    sys.exit(2)
""")


def run_render_probe(env: dict, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(prefix or []), sys.executable, "-c", RENDER_PROBE], env=env, capture_output=True,
                          text=True, timeout=120)


def test_no_display_for_glfw_is_a_renderer_error():
    """MUJOCO_GL=glfw on a machine without a display (CI, SSH): GLFW cannot open its hidden window."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM")}
    env["MUJOCO_GL"] = "glfw"
    proc = run_render_probe(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "MUJOCO_GL=glfw" in proc.stdout and "MUJOCO_GL=osmesa" in proc.stdout  # names the backend and the fix


def hide_osmesa_prefix() -> list[str] | None:
    """A command prefix that runs a program in a private mount namespace where every libOSMesa file
    reads as empty (bind-mounted /dev/null), i.e. a machine without OSMesa; None where that is not possible."""
    libs = [os.path.join(d, f) for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
            if os.path.isdir(d) for f in os.listdir(d) if f.startswith("libOSMesa")]
    if not libs or shutil.which("unshare") is None:
        return None
    mounts = "; ".join(f"mount --bind /dev/null {p}" for p in sorted(set(map(os.path.realpath, libs))))
    prefix = ["unshare", "--map-root-user", "--mount", "sh", "-c", f'{mounts} && exec "$@"', "sh"]
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        return None
    return prefix


def test_missing_osmesa_is_a_renderer_error():
    """MUJOCO_GL=osmesa (robolearn's default) on a machine without libOSMesa."""
    prefix = hide_osmesa_prefix()
    if prefix is None:
        pytest.skip("cannot hide libOSMesa here (needs unshare with user and mount namespaces)")
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}
    proc = run_render_probe(env, prefix)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "MUJOCO_GL=osmesa" in proc.stdout and "libosmesa6" in proc.stdout


def test_unknown_backend_name_is_a_renderer_error():
    """mujoco rejects an unknown MUJOCO_GL when it is imported, before any robolearn code runs."""
    env = {**os.environ, "MUJOCO_GL": "opengl"}
    env.pop("PYOPENGL_PLATFORM", None)
    proc = run_render_probe(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "MUJOCO_GL=opengl" in proc.stdout


# ---- hardware files ------------------------------------------------------------------------------
def panda_yaml() -> dict:
    return yaml.safe_load((HARDWARE_DIR / "robots" / "panda.yaml").read_text())


def write(tmp_path, raw) -> str:
    path = tmp_path / "bad_robot.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(path)


def _set(d: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return d


_DELETE = object()
HOME = [0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("format_version", 2, r"format_version 2 is not supported \(expected 1\)"),
        ("arm.home", _DELETE, r"missing key 'arm.home'"),
        ("gripper", _DELETE, r"missing key 'gripper'"),
        ("control.rate_hz", _DELETE, r"missing key 'control.rate_hz'"),
        ("arm.position_lower", [-2.9] * 6, r"arm.position_lower must be 7 finite numbers"),
        ("arm.effort_limit", [87.0] * 6 + [float("nan")], r"arm.effort_limit must be 7 finite numbers"),
        ("arm.position_upper", [-3.0] * 7, r"arm.position_lower must be below arm.position_upper"),
        ("arm.home", [*HOME[:3], 0.5, *HOME[4:]], r"arm.home lies outside the joint position limits"),
        ("arm.position_lower", ["low"] * 7, r"arm.position_lower must be 7 finite numbers"),
        ("control", 20, r"control"),
        ("gripper.width_max", "wide", r"gripper.width_max"),
    ],
    ids=["format_version", "no-arm.home", "no-gripper", "no-control.rate_hz", "short-limits", "nan-effort",
         "lower-above-upper", "home-outside-limits", "non-numeric-limits", "control-not-a-mapping",
         "non-numeric-width"],
)
def test_malformed_hardware_yaml(tmp_path, key, value, message):
    path = write(tmp_path, _set(panda_yaml(), key, value))
    with pytest.raises(ConfigError, match=message) as info:
        load_robot(path)
    assert str(path) in str(info.value)  # the message names the file


def test_hardware_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "format_version: 1\narm: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad_robot.yaml is not valid YAML"):
        load_robot(path)


@pytest.mark.parametrize("text", ["", "- just\n- a list\n"], ids=["empty", "list"])
def test_hardware_yaml_without_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match=r"missing key 'format_version'"):
        load_robot(write(tmp_path, text))


def test_missing_hardware_file(tmp_path):
    with pytest.raises(ConfigError, match=r"robot file .*nope.yaml does not exist"):
        load_robot(tmp_path / "nope.yaml")


def test_env_with_a_malformed_robot_file(tmp_path):
    path = write(tmp_path, _set(panda_yaml(), "arm.home", _DELETE))
    with pytest.raises(ConfigError, match=r"missing key 'arm.home'"):
        make_env("lift", robot=path)


def test_misspelt_make_env_field_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'num_env'.*Did you mean 'num_envs'"):
        make_env("lift", num_env=2)


def test_make_env_builds_nested_configs_from_plain_dicts():
    env = make_env("lift", randomization={"physics": {"mass_scale": [0.5, 0.5]}}, task_options={"lift_height": 0.04})
    assert env.cfg.randomization.physics.mass_scale == (0.5, 0.5) and env.task.options.lift_height == 0.04
    with pytest.raises(ConfigError, match="randomization.physics.mass_scale"):
        make_env("lift", randomization={"physics": {"mass_scale": "heavy"}})
    env.close()


def test_render_of_a_camera_the_env_does_not_render():
    env = make_env("lift", cameras=["front"], image_size=(16, 16))
    env.reset()
    with pytest.raises(UnknownNameError, match=r"camera 'frnot' is not rendered.*front.*Did you mean 'front'"):
        env.render("frnot")
    assert env.render("front").shape == (1, 16, 16, 3)
    env.close()
