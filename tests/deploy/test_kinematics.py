"""ArmKinematics: the Panda's FK is the sim's TCP, the UR5e's matches its DH tables at known poses,
Jacobians match finite differences, the IK is the sim's kernel; ur5e.yaml loads and is checked."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from robolearn.deploy.kinematics import DAMPING, NULLSPACE_GAIN, ArmKinematics, dls_ee_delta
from robolearn.errors import ActionError, ConfigError
from robolearn.hardware import HARDWARE_DIR, load_robot


@pytest.fixture(scope="module")
def panda():
    return ArmKinematics(load_robot("panda"))


@pytest.fixture(scope="module")
def ur5e():
    return ArmKinematics(load_robot("ur5e"))


def _random_q(robot, n, seed=0, margin=0.1):
    rng = np.random.default_rng(seed)
    return rng.uniform(robot.position_lower + margin, robot.position_upper - margin, (n, robot.dof))


def _dh_fk(dh: np.ndarray, q: np.ndarray, tcp: np.ndarray) -> np.ndarray:
    """Textbook standard DH: T = prod Rz(q) Tz(d) Tx(a) Rx(alpha), then the TCP offset."""
    t = np.eye(4)
    for (d, a, alpha), qi in zip(dh, q):
        c, s, ca, sa = np.cos(qi), np.sin(qi), np.cos(alpha), np.sin(alpha)
        t = t @ np.array([[c, -s * ca, s * sa, a * c], [s, c * ca, -c * sa, a * s], [0, sa, ca, d], [0, 0, 0, 1]])
    return (t @ np.append(tcp, 1.0))[:3]


# ---- UR5e -------------------------------------------------------------------------------------
def test_ur5e_hardware_file():
    r = load_robot("ur5e")
    assert r.dof == 6 and r.joint_names[0] == "shoulder_pan_joint" and r.joint_names[-1] == "wrist_3_joint"
    assert np.allclose(r.velocity_limit, np.pi, atol=1e-5)  # 180 deg/s
    assert np.allclose(r.position_upper[[0, 1, 3, 4, 5]], 2 * np.pi, atol=1e-5)
    assert np.isclose(r.position_upper[2], np.pi)
    assert (r.gripper_width_min, r.gripper_width_max) == (0.0, 0.085)
    assert r.topics["trajectory_command_topic"] == "/scaled_joint_trajectory_controller/joint_trajectory"
    assert r.topics["position_command_topic"] == "/forward_position_controller/commands"
    assert r.topics["joint_state_topic"] == "/joint_states"
    assert r.dh.shape == (6, 3) and r.workspace_lo is not None
    panda = load_robot("panda")  # no kinematics section: the sim's model, no default box
    assert panda.dh is None and panda.workspace_lo is None and panda.dof == 7


def test_ur5e_zero_pose_is_the_published_flange_position():
    """All joints at zero: the flange at (a2 + a3, -(d4 + d6), d1 - d5) in UR's base frame."""
    r = load_robot("ur5e")
    flange = ArmKinematics(_without_tcp_offset(r))
    pos, quat = flange.fk(np.zeros(6))
    assert np.allclose(pos, [-0.425 - 0.3922, -(0.1333 + 0.0996), 0.1625 - 0.0997], atol=1e-9)
    assert np.allclose(np.abs(quat), [np.sqrt(0.5), np.sqrt(0.5), 0, 0], atol=1e-9)  # tool z along -y
    pos, _ = ArmKinematics(r).fk(np.zeros(6))  # the TCP: 0.15 m further along the flange z (-y)
    assert np.allclose(pos, [-0.8172, -0.2329 - 0.15, 0.0628], atol=1e-9)


def test_ur5e_home_points_the_tool_down(ur5e):
    pos, quat = ur5e.fk(ur5e.robot.home)
    z_axis = _rotate(quat, [0, 0, 1])
    assert np.allclose(z_axis, [0, 0, -1], atol=1e-5)
    assert 0.2 < pos[2] < 0.6 and np.linalg.norm(pos[:2]) < 0.85


def test_ur5e_fk_matches_textbook_dh_and_moves_with_the_base():
    r = load_robot("ur5e")
    kin = ArmKinematics(r)
    moved = ArmKinematics(r, base_pos=(0.1, -0.2, 0.3))
    for q in _random_q(r, 20):
        pos, _ = kin.fk(q)
        assert np.allclose(pos, _dh_fk(r.dh, q, r.tcp_offset), atol=1e-9)
        assert np.allclose(moved.fk(q)[0], pos + [0.1, -0.2, 0.3], atol=1e-12)


@pytest.mark.parametrize("name", ["panda", "ur5e"])
def test_jacobian_matches_finite_differences(name, panda, ur5e):
    kin = {"panda": panda, "ur5e": ur5e}[name]
    eps = 1e-6
    for q in _random_q(kin.robot, 5, seed=1):
        jac = kin.jacobian(q)
        assert jac.shape == (6, kin.robot.dof)
        pos0, quat0 = kin.fk(q)
        for k in range(kin.robot.dof):
            dq = np.zeros(kin.robot.dof)
            dq[k] = eps
            pos1, quat1 = kin.fk(q + dq)
            assert np.allclose((pos1 - pos0) / eps, jac[:3, k], atol=1e-5)
            assert np.allclose(_angular_velocity(quat0, quat1, eps), jac[3:, k], atol=1e-5)


def test_bad_kinematics_sections(tmp_path):
    raw = yaml.safe_load((HARDWARE_DIR / "robots" / "ur5e.yaml").read_text())
    raw["kinematics"]["dh_a"] = [0.0, -0.425]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"kinematics.dh_a must be 6 finite numbers"):
        load_robot(path)
    raw = yaml.safe_load((HARDWARE_DIR / "robots" / "ur5e.yaml").read_text())
    raw["workspace"]["lo"] = [0.0, 0.0, 2.0]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"workspace.lo must be below workspace.hi"):
        load_robot(path)


# ---- Panda: the sim's own TCP, and the sim's IK ------------------------------------------------
def test_panda_fk_is_the_sims_observation():
    from robolearn.sim.registry import make_env

    env = make_env("lift", num_envs=2, seed=3)
    obs, _ = env.reset(seed=3)
    kin = ArmKinematics(env.robot)
    for i in range(2):
        pos, quat = kin.fk(env.state.q[i])
        assert np.array_equal(np.concatenate([pos, quat]).astype(np.float32), obs["observation.state"][i, 14:21])
    env.close()


def test_numpy_ik_is_the_compiled_kernel(panda):
    """dls_ee_delta (used for arms other than 7-joint ones) computes what the sim's kernel does."""
    r = panda.robot
    rng = np.random.default_rng(2)
    for q in _random_q(r, 20, seed=2):
        action = rng.uniform(-1, 1, 7)
        kernel = panda.ee_delta_to_joint(q, action, 0.05, 0.5, 0.05)
        mine = dls_ee_delta(panda.jacobian(q), q, action, np.array([0.05] * 3 + [0.5] * 3), r.home, NULLSPACE_GAIN,
                            DAMPING**2, r.velocity_limit * 0.05, r.position_lower, r.position_upper)
        assert np.allclose(kernel, mine, atol=1e-10)


def test_ur5e_ik_moves_the_tcp_as_commanded(ur5e):
    r = ur5e.robot
    q = r.home.copy()
    start, _ = ur5e.fk(q)
    for _ in range(5):  # 5 ticks of +x at half speed: 5 * 0.5 * 0.05 m
        q = ur5e.ee_delta_to_joint(q, [0.5, 0, 0, 0, 0, 0, 0], 0.05, 0.5, 0.05)
    end, _ = ur5e.fk(q)
    assert np.allclose(end - start, [0.125, 0, 0], atol=5e-3)  # damped least squares falls a little short
    with pytest.raises(ActionError, match="7 finite numbers"):
        ur5e.ee_delta_to_joint(q, [np.nan] * 7, 0.05, 0.5, 0.05)


# ---- helpers -------------------------------------------------------------------------------------
def _without_tcp_offset(robot):
    from dataclasses import replace

    return replace(robot, tcp_offset=np.zeros(3))


def _quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _rotate(quat, v):
    qv = _quat_mul(_quat_mul(quat, [0, *v]), quat * [1, -1, -1, -1])
    return qv[1:]


def _angular_velocity(q0, q1, dt):
    """World-frame angular velocity taking orientation q0 to q1 in dt."""
    d = _quat_mul(q1, q0 * [1, -1, -1, -1])
    d = d if d[0] >= 0 else -d
    return 2 * d[1:] / dt


def test_an_arm_without_kinematics_that_is_not_the_panda(tmp_path):
    raw = yaml.safe_load((HARDWARE_DIR / "robots" / "ur5e.yaml").read_text())
    del raw["kinematics"]
    path = tmp_path / "arm.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"no 'kinematics' section, and the arm is not the simulated Panda"):
        ArmKinematics(load_robot(path))


def test_state_names_are_the_sims():
    """The recorder names observation.state with state_names; at 7 joints it is the sim's own layout."""
    from robolearn.deploy.kinematics import state_names
    from robolearn.sim.vec_env import STATE_NAMES

    assert state_names(7) == list(STATE_NAMES)
    assert len(state_names(6)) == 2 * 6 + 9
