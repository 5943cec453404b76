"""Domain randomization: every knob is off by default, changes what it claims (its model field, and
the physics or pixels that field drives), is re-drawn from the nominal model at every reset, is
deterministic for a seed, and rejects invalid ranges with a ConfigError."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robolearn.errors import ConfigError  # noqa: E402
from robolearn.sim.config import PhysicsRandomization, RandomizationConfig, VisualRandomization  # noqa: E402
from robolearn.sim.registry import make_env  # noqa: E402
from robolearn.sim.rotations import quat_conj, quat_mul, quat_to_axis_angle  # noqa: E402

SIZE = (48, 64)  # small non-square images keep the camera tests cheap and catch H/W swaps


def randomization(physics: dict | None = None, visual: dict | None = None) -> RandomizationConfig:
    return RandomizationConfig(PhysicsRandomization(**(physics or {})), VisualRandomization(**(visual or {})))


@pytest.fixture
def make():
    """make(physics={...}, visual={...}, **env_overrides) -> a 2-env lift VecEnv, closed after the test."""
    made = []

    def _make(physics: dict | None = None, visual: dict | None = None, **kw):
        kw = {"num_envs": 2, "seed": 0, **kw}
        env = make_env("lift", randomization=randomization(physics, visual), **kw)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


def name2id(m: mujoco.MjModel, kind: str, name: str) -> int:
    i = mujoco.mj_name2id(m, getattr(mujoco.mjtObj, f"mjOBJ_{kind.upper()}"), name)
    assert i >= 0, name
    return i


# ---- every model-field knob: off by default, changes its field (and only its field) ---------------
@dataclass
class Knob:
    section: str  # "physics" or "visual"
    field: str
    value: object
    read: Callable  # (model, env) -> array of the fields the knob randomizes
    check: Callable  # (nominal array, randomized array, value) -> None, asserts the draw is in range


def same_ratio_in(nom, val, rng):
    ratio = val / nom
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-6)  # one factor per env for the whole field
    assert rng[0] - 1e-9 <= ratio.flat[0] <= rng[1] + 1e-9


def offset_within(nom, val, jitter):
    assert np.all(np.abs(val - nom) <= jitter + 1e-9)


def rotation_within(nom, val, jitter):
    angle = np.linalg.norm(quat_to_axis_angle(quat_mul(val, quat_conj(nom))), axis=-1)
    assert np.all(angle <= jitter + 1e-6)
    np.testing.assert_allclose(np.linalg.norm(val, axis=-1), 1.0, atol=1e-9)


def fixed_cams(m):
    return [name2id(m, "camera", c) for c in ("front", "side", "top")]


KNOBS = [
    # friction: the cube's own sliding friction and, by the same factor, the finger pad's it touches
    Knob("physics", "friction_scale", (0.5, 1.5),
         lambda m, e: m.geom_friction[[name2id(m, "geom", "cube_geom"),
                                       name2id(m, "geom", "panda_finger1_pad_collision")], 0], same_ratio_in),
    Knob("physics", "mass_scale", (0.5, 2.0),
         lambda m, e: np.append(m.body_mass[name2id(m, "body", "cube")], m.body_inertia[name2id(m, "body", "cube")]),
         same_ratio_in),
    Knob("physics", "joint_damping_scale", (0.5, 2.0), lambda m, e: m.dof_damping[e.ids.arm_dof], same_ratio_in),
    Knob("physics", "actuator_gain_scale", (0.5, 1.5),  # kp (gain and bias) and kv together
         lambda m, e: np.concatenate([m.actuator_gainprm[e.ids.arm_act, 0], -m.actuator_biasprm[e.ids.arm_act, 1],
                                      -m.actuator_biasprm[e.ids.arm_act, 2]]), same_ratio_in),
    Knob("visual", "light_intensity_scale", (0.3, 0.6), lambda m, e: m.light_diffuse.ravel(), same_ratio_in),
    Knob("visual", "light_position_jitter", 0.2, lambda m, e: m.light_pos.ravel(), offset_within),
    # colour: the cube's rgba, and the table's *material* (its geom rgba must stay at MuJoCo's default,
    # or MuJoCo would ignore the material and draw the table grey)
    Knob("visual", "object_color_jitter", 0.2,
         lambda m, e: np.append(m.geom_rgba[name2id(m, "geom", "cube_geom"), :3],
                                m.mat_rgba[name2id(m, "material", "table_mat"), :3]), offset_within),
    Knob("visual", "camera_position_jitter", 0.05, lambda m, e: m.cam_pos[fixed_cams(m)], offset_within),
    Knob("visual", "camera_rotation_jitter", 0.1, lambda m, e: m.cam_quat[fixed_cams(m)], rotation_within),
]


def untouched(m) -> dict[str, np.ndarray]:
    """Fields that no knob may change: the wrist camera, the table's geom rgba, the arm's link masses."""
    wrist = name2id(m, "camera", "wrist")
    return {"wrist_pos": m.cam_pos[wrist], "wrist_quat": m.cam_quat[wrist],
            "table_rgba": m.geom_rgba[name2id(m, "geom", "table")], "arm_mass": m.body_mass[m.body_mass > 0.5]}


@pytest.fixture(scope="module")
def default_env():
    env = make_env("lift", num_envs=2, seed=0)
    env.reset(seed=0)
    yield env
    env.close()


@pytest.mark.parametrize("knob", KNOBS, ids=lambda k: k.field)
def test_knob_is_off_by_default(knob, default_env):
    env = default_env
    assert getattr(getattr(RandomizationConfig(), knob.section), knob.field) in ((1.0, 1.0), 0.0)
    assert not env.randomizer.needs_model_copies
    for m in env.models:
        assert m is env.nominal  # no per-env copies: nothing to randomize
        np.testing.assert_array_equal(knob.read(m, env), knob.read(env.nominal, env))


@pytest.mark.parametrize("knob", KNOBS, ids=lambda k: k.field)
def test_knob_changes_its_field_per_env_and_per_reset(knob, make):
    env = make(**{knob.section: {knob.field: knob.value}})
    env.reset(seed=0)
    nom = knob.read(env.nominal, env).copy()
    first = [knob.read(m, env).copy() for m in env.models]
    for val in first:
        assert not np.allclose(val, nom), "the knob left its field at the nominal value"
        knob.check(nom, val, knob.value)
    assert not np.allclose(first[0], first[1]), "both envs drew the same value"
    env.reset()
    for i, m in enumerate(env.models):
        again = knob.read(m, env)
        assert not np.allclose(again, first[i]), "the next reset did not draw a new value"
        knob.check(nom, again, knob.value)
    np.testing.assert_array_equal(knob.read(env.nominal, env), nom)  # the nominal model is never changed
    # every other knob's fields stay nominal
    for other in KNOBS:
        if other is not knob:
            for m in env.models:
                np.testing.assert_array_equal(other.read(m, env), other.read(env.nominal, env), err_msg=other.field)
    for k, v in untouched(env.nominal).items():
        for m in env.models:
            np.testing.assert_array_equal(untouched(m)[k], v, err_msg=k)


def test_redrawn_from_nominal_not_accumulated(make):
    """apply() twice with the same random state gives the same model: draws are relative to nominal."""
    env = make(physics={"friction_scale": (0.5, 1.5), "mass_scale": (0.5, 2.0)},
               visual={"camera_position_jitter": 0.05, "object_color_jitter": 0.2})
    m = env.models[0]
    env.randomizer.apply(m, np.random.default_rng(1))
    once = {k.field: k.read(m, env).copy() for k in KNOBS}
    env.randomizer.apply(m, np.random.default_rng(1))
    for k in KNOBS:
        np.testing.assert_array_equal(k.read(m, env), once[k.field], err_msg=k.field)
    for _ in range(10):  # many resets stay within one draw's range of nominal
        env.reset()
    KNOBS[0].check(KNOBS[0].read(env.nominal, env), KNOBS[0].read(m, env), (0.5, 1.5))
    KNOBS[1].check(KNOBS[1].read(env.nominal, env), KNOBS[1].read(m, env), (0.5, 2.0))


def test_deterministic_for_a_seed(make):
    everything = dict(
        physics={"friction_scale": (0.5, 1.5), "mass_scale": (0.5, 2.0), "joint_damping_scale": (0.5, 2.0),
                 "actuator_gain_scale": (0.8, 1.2), "action_latency_steps": (0, 2), "observation_noise_std": 0.01},
        visual={"light_intensity_scale": (0.5, 1.5), "light_position_jitter": 0.1, "object_color_jitter": 0.1,
                "camera_position_jitter": 0.02, "camera_rotation_jitter": 0.05},
        cameras=["front"], image_size=SIZE,
    )
    a, b, c = make(**everything, seed=7), make(**everything, seed=7), make(**everything, seed=8)
    oa, _ = a.reset()
    ob, _ = b.reset()
    oc, _ = c.reset()
    for k in KNOBS:
        for ma, mb, mc in zip(a.models, b.models, c.models):
            np.testing.assert_array_equal(k.read(ma, a), k.read(mb, b), err_msg=k.field)
            assert not np.array_equal(k.read(ma, a), k.read(mc, c)), k.field
    for key in oa:
        np.testing.assert_array_equal(oa[key], ob[key], err_msg=key)
    action = np.tile(np.array([0.3, 0, -0.2, 0, 0, 0, -1.0]), (2, 1))
    for _ in range(3):
        oa, *_ = a.step(action)
        ob, *_ = b.step(action)
    for key in oa:
        np.testing.assert_array_equal(oa[key], ob[key], err_msg=key)
    # reset(seed=7) replays the first episode's draws
    a.reset(seed=7)
    for k in KNOBS:
        for ma, mb in zip(a.models, b.models):
            b_first = k.read(mb, b)
            np.testing.assert_array_equal(k.read(ma, a), b_first, err_msg=k.field)


# ---- physics effects -------------------------------------------------------------------------------
def cube_table_contact_friction(env, i: int) -> float:
    m, d = env.models[i], env.datas[i]
    pair = {name2id(m, "geom", "cube_geom"), name2id(m, "geom", "table")}
    found = [d.contact.friction[k, 0] for k in range(d.ncon) if set(d.contact.geom[k]) == pair]
    assert found, "the cube does not rest on the table"
    return float(found[0])


def test_friction_scale_scales_the_contact_friction(make):
    """MuJoCo takes the larger friction of two touching geoms; scaling only the cube (1.2) would leave
    its contact with the table (1.0) or the finger pads (2.0) unchanged below some scale."""
    hold = np.tile(np.array([0, 0, 0, 0, 0, 0, -1.0]), (2, 1))
    nominal, low = make(), make(physics={"friction_scale": (0.5, 0.5)})
    for env in (nominal, low):
        env.reset(seed=0)
        env.step(hold)
    assert cube_table_contact_friction(nominal, 0) == pytest.approx(1.2)
    assert cube_table_contact_friction(low, 0) == pytest.approx(0.6)


def test_mass_scale_changes_the_cube_weight_on_the_table(make):
    hold = np.tile(np.array([0, 0, 0, 0, 0, 0, -1.0]), (1, 1))
    weights = []
    for scale in (1.0, 2.0):
        env = make(physics={"mass_scale": (scale, scale)}, num_envs=1)
        env.reset(seed=0)
        for _ in range(3):
            env.step(hold)
        m, d = env.models[0], env.datas[0]
        cube = name2id(m, "body", "cube")
        force = np.zeros(6)
        total = 0.0
        for k in range(d.ncon):
            if cube in m.geom_bodyid[d.contact.geom[k]]:
                mujoco.mj_contactForce(m, d, k, force)
                total += force[0]  # normal force, N
        weights.append(total)
    assert weights[0] == pytest.approx(0.08 * 9.81, rel=0.05)
    assert weights[1] == pytest.approx(2 * weights[0], rel=0.05)


def test_actuator_gain_changes_how_far_one_step_moves_the_arm(make):
    """Same joint_pos action from the same pose: a softer position servo covers less of the way in one
    control step. The step is small (0.01 rad) so that no joint hits its torque limit, where the
    gain would no longer matter."""
    delta = np.array([1.0, 1.0, 0, -1.0, 0, 0, 0]) * 0.01
    joints = [0, 1, 3]
    covered = {}
    for k in (1.0, 0.3):
        env = make(physics={"actuator_gain_scale": (k, k)}, action_mode="joint_pos", num_envs=1,
                   task_options={"robot_init_noise": 0.0})
        env.reset(seed=0)
        q0 = env.state.q[0].copy()
        env.step(np.append(q0 + delta, -1.0)[None])
        covered[k] = (env.state.q[0] - q0)[joints] / delta[joints]  # fraction of the commanded step
    assert np.all(covered[1.0] > 0.75), covered
    assert np.all(covered[0.3] < covered[1.0] - 0.15), covered


def test_joint_damping_scale_scales_the_damping_torque(make):
    """qfrc_damper = -dof_damping * qvel on the arm joints, so its ratio to qvel is the damping."""
    for k in (1.0, 3.0):
        env = make(physics={"joint_damping_scale": (k, k)}, num_envs=1)
        env.reset(seed=0)
        env.step(np.array([[1.0, 0, 0, 0, 0, 0, -1.0]]))
        m, d, dofs = env.models[0], env.datas[0], env.ids.arm_dof
        mujoco.mj_forward(m, d)  # passive forces of the current velocity (mj_step left the previous one's)
        moving = np.abs(d.qvel[dofs]) > 1e-3
        assert moving.any()
        np.testing.assert_allclose(-d.qfrc_damper[dofs][moving] / d.qvel[dofs][moving],
                                   k * env.nominal.dof_damping[dofs][moving], rtol=1e-6)


def joint_trajectory(env, actions) -> np.ndarray:
    out = []
    for a in actions:
        env.step(a)
        out.append(np.concatenate([env.state.q, env.state.fingers], axis=1))
    return np.stack(out)


def test_action_latency_delays_actions_by_exactly_its_steps(make):
    """With latency 2, the env moves under actions a0, a1, ... exactly as a latency-free env with the
    same seed moves under (hold, hold, a0, a1, ...)."""
    late = make(physics={"action_latency_steps": (2, 2)}, action_mode="joint_pos")
    ref = make(action_mode="joint_pos")
    default = make(action_mode="joint_pos")
    for env in (late, ref, default):
        env.reset(seed=3)
    np.testing.assert_array_equal(late.state.q, ref.state.q)
    q0 = ref.state.q.copy()
    hold = np.concatenate([q0, -np.ones((2, 1))], axis=1)
    offsets = np.array([[0.1, 0, 0, -0.1, 0, 0.1, 0, 1.0], [0.2, 0.1, 0, -0.2, 0, 0.1, 0.1, 1.0],
                        [0.1, 0.2, 0.1, -0.1, 0, 0, 0.2, -1.0], [0, 0.1, 0, 0, 0.1, 0, 0, 1.0]])
    actions = [np.concatenate([q0 + o[:7], np.full((2, 1), o[7])], axis=1) for o in offsets]
    got = joint_trajectory(late, actions)
    expected = joint_trajectory(ref, [hold, hold, *actions[:-2]])
    np.testing.assert_array_equal(got, expected)
    # and it really is a delay of 2: neither 0 (the default) nor 1 step matches
    undelayed = joint_trajectory(default, actions)
    assert not np.allclose(got, undelayed, atol=1e-4)
    assert not np.allclose(got[1:], undelayed[:-1], atol=1e-4)
    assert default.randomizer.max_latency == 0


def test_latency_is_drawn_per_env_and_episode_within_its_range(make):
    env = make(physics={"action_latency_steps": (0, 3)}, num_envs=8)
    seen = set()
    for seed in range(3):
        env.reset(seed=seed)
        lat = env._latency.copy()
        assert lat.min() >= 0 and lat.max() <= 3
        seen |= set(lat.tolist())
    assert seen == {0, 1, 2, 3}


def test_observation_noise_perturbs_observation_state_only(make):
    noisy, clean = make(physics={"observation_noise_std": 0.01}), make()
    for env in (noisy, clean):
        obs, _ = env.reset(seed=0)
        s = env.state
        true_state = np.concatenate([s.q, s.dq, s.tcp_pos, s.tcp_quat, s.fingers], axis=1).astype(np.float32)
        # the privileged BatchState is the simulator's own, never noisy
        np.testing.assert_array_equal(s.q, np.stack([d.qpos[env.ids.arm_qpos] for d in env.datas]))
        np.testing.assert_array_equal(obs["observation.environment_state"],
                                      env.task.environment_state(s).astype(np.float32))
        if env is clean:
            np.testing.assert_array_equal(obs["observation.state"], true_state)
        else:
            err = obs["observation.state"] - true_state
            assert np.all(err != 0)
            assert 0.005 < err.std() < 0.02
            obs2 = env.step(np.zeros((2, 7)) + [0, 0, 0, 0, 0, 0, -1])[0]
            s = env.state
            true2 = np.concatenate([s.q, s.dq, s.tcp_pos, s.tcp_quat, s.fingers], axis=1).astype(np.float32)
            assert not np.allclose(obs2["observation.state"] - true2, err)  # fresh noise every step


# ---- visual effects on the rendered images ---------------------------------------------------------
def render_with_nominal(env, fields: list[str], camera: str = "front") -> tuple[np.ndarray, np.ndarray]:
    """env 0's image as randomized, and after putting `fields` back to their nominal values."""
    m, d = env.models[0], env.datas[0]
    randomized = env.render(camera)[0].astype(int)
    for f in fields:
        getattr(m, f)[:] = getattr(env.nominal, f)
    mujoco.mj_forward(m, d)  # light and camera poses in data follow the model
    return randomized, env.render(camera)[0].astype(int)


@pytest.mark.parametrize(
    ("field", "value", "model_fields"),
    [
        ("light_intensity_scale", (0.2, 0.2), ["light_diffuse"]),
        ("light_position_jitter", 0.3, ["light_pos"]),
        ("object_color_jitter", 0.3, ["geom_rgba", "mat_rgba"]),
        ("camera_position_jitter", 0.05, ["cam_pos"]),
        ("camera_rotation_jitter", 0.05, ["cam_quat"]),
    ],
)
def test_visual_knob_changes_the_image(field, value, model_fields, make):
    env = make(visual={field: value}, cameras=["front"], image_size=SIZE)
    env.reset(seed=0)
    randomized, nominal = render_with_nominal(env, model_fields)
    assert np.abs(randomized - nominal).mean() > 0.5, f"{field} did not change the rendered image"
    if field == "light_intensity_scale":
        assert randomized.mean() < nominal.mean() - 10  # dimmer lights, darker image
    if field == "object_color_jitter":
        cube = (nominal[..., 0] > 120) & (nominal[..., 1] < 80)  # the red cube's pixels
        assert cube.sum() >= 3
        assert np.abs(randomized[cube] - nominal[cube]).max() > 5


def test_visual_randomization_is_off_by_default(make):
    env = make(cameras=["front"], image_size=SIZE)
    env.reset(seed=0)
    randomized, nominal = render_with_nominal(
        env, ["light_diffuse", "light_pos", "geom_rgba", "mat_rgba", "cam_pos", "cam_quat"])
    np.testing.assert_array_equal(randomized, nominal)


# ---- invalid configurations --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("physics", "visual", "message"),
    [
        ({"friction_scale": (1.5, 0.5)}, {},
         r"physics\.friction_scale=\[1\.5, 0\.5\] is invalid; it must be \[low, high\].*\[1\.0, 1\.0\] turns it off"),
        ({"friction_scale": (-0.1, 1.0)}, {}, r"physics\.friction_scale=.*0\.0 <= low <= high"),
        # shape and NaN problems are caught by the typed config builder, in the CLI's wording
        ({"friction_scale": 1.2}, {}, r"physics\.friction_scale=1\.2: expected a list of exactly 2 numbers"),
        ({"friction_scale": (1.0,)}, {}, r"physics\.friction_scale=\[1\.0\]: expected a list of exactly 2 numbers"),
        ({"mass_scale": (0.0, 1.0)}, {}, r"physics\.mass_scale=.*0\.0 < low <= high"),
        ({"joint_damping_scale": (float("nan"), 1.0)}, {}, r"physics\.joint_damping_scale=.*item 0 is \.nan"),
        ({"actuator_gain_scale": (1.0, float("inf"))}, {}, r"physics\.actuator_gain_scale=.*finite"),
        ({"action_latency_steps": (0.5, 2)}, {}, r"physics\.action_latency_steps=.*integers"),
        ({"action_latency_steps": (3, 1)}, {}, r"physics\.action_latency_steps=\[3, 1\] is invalid"),
        ({"action_latency_steps": (-1, 0)}, {}, r"physics\.action_latency_steps=\[-1, 0\] is invalid"),
        ({"observation_noise_std": -0.1}, {}, r"physics\.observation_noise_std=-0\.1 is invalid; it must be a finite"),
        ({"observation_noise_std": float("nan")}, {}, r"physics\.observation_noise_std=\.nan: .*NaN is not allowed"),
        ({}, {"light_intensity_scale": (2.0, 1.0)}, r"visual\.light_intensity_scale=\[2\.0, 1\.0\] is invalid"),
        ({}, {"light_position_jitter": -0.1}, r"visual\.light_position_jitter=-0\.1 is invalid"),
        ({}, {"object_color_jitter": 1.5}, r"visual\.object_color_jitter=1\.5 is invalid; .*<= 1"),
        ({}, {"camera_position_jitter": float("inf")}, r"visual\.camera_position_jitter=inf is invalid"),
        ({}, {"camera_rotation_jitter": 4.0}, r"visual\.camera_rotation_jitter=4\.0 is invalid; .*<= 3\.142"),
    ],
    ids=lambda v: "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "",
)
def test_invalid_ranges_raise_config_error(physics, visual, message):
    with pytest.raises(ConfigError, match=rf"randomization\.{message}"):
        make_env("lift", randomization=randomization(physics, visual))
