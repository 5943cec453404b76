"""peg_insert judges in one numba kernel; its numpy rule, kept here as a plain oracle."""

from __future__ import annotations

import numpy as np

from robolearn.sim.registry import make_env
from robolearn.sim.rotations import quat_rotate, quat_to_yaw


def reference_judgement(task, s):
    """The numpy judgement peg_insert used before it was compiled: (stage, success, terms, env_state)."""
    o = task.options
    peg, peg_q, hole, hole_q = s.body_pos["peg"], s.body_quat["peg"], s.body_pos["hole"], s.body_quat["hole"]

    def on_axis(h):
        return peg + quat_rotate(peg_q, np.broadcast_to([0.0, 0.0, h], peg.shape))

    bottom = on_axis(-o.peg_half_length)
    grasp_point = on_axis(o.peg_half_length - o.grasp_offset)
    hole_yaw = quat_to_yaw(hole_q)
    d = bottom - hole
    c, sn = np.cos(hole_yaw), np.sin(hole_yaw)
    rel = np.stack([c * d[:, 0] + sn * d[:, 1], -sn * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    xy_err = np.linalg.norm(rel[:, :2], axis=1)
    yaw_err = np.abs((hole_yaw - quat_to_yaw(peg_q) + np.pi / 4) % (np.pi / 2) - np.pi / 4)
    reach_dist = np.linalg.norm(s.tcp_pos - grasp_point, axis=1)
    grasped = s.grasp_contact[:, 0] & s.grasp_contact[:, 1]
    in_footprint = np.all(np.abs(rel[:, :2]) < task.hole_half_width, axis=1)
    depth = -rel[:, 2]
    inserted = in_footprint & (depth > 0)
    success = in_footprint & (depth >= o.insert_depth)
    hovering = (rel[:, 2] > -0.001) & (rel[:, 2] < 0.03)
    aligned = grasped & hovering & (xy_err < task.xy_tol) & (yaw_err < task.yaw_tol)
    stage = np.select([aligned | inserted, grasped, reach_dist < 0.02], [3, 2, 1], 0)
    terms = {
        "reach": 1.0 - np.tanh(10.0 * reach_dist),
        "grasp": grasped.astype(float),
        "lift": grasped * np.clip(bottom[:, 2] / (o.hole_depth + 0.01), 0.0, 1.0),
        "align_xy": (grasped | inserted) * (1.0 - 0.5 * (np.tanh(10.0 * xy_err) + np.tanh(200.0 * xy_err))),
        "align_yaw": (grasped | inserted) * (1.0 - yaw_err / (np.pi / 4)),
        "insert": inserted * np.clip(depth / o.insert_depth, 0.0, 1.0),
        "success": success.astype(float),
    }
    env_state = np.concatenate([peg, peg_q, hole, hole_q, hole - bottom, s.tcp_pos - peg], axis=1)
    return stage, success, terms, env_state


def test_peg_insert_compiled_judgement_matches_a_numpy_reference():
    env = make_env("peg_insert", num_envs=20, seed=4, terminate_on_success=False)
    env.reset()
    expert = env.task.make_expert(20, env.cfg.max_dpos, env.cfg.max_drot)
    rng = np.random.default_rng(0)
    w = env.task.reward_weights
    seen_stages, seen_success = set(), False
    for _ in range(60):
        action, _ = expert.act(env.state)
        action[10:] = rng.uniform(-1, 1, action[10:].shape)  # half the envs wander
        env.step(action)
        s = env.state
        ev = env.task.evaluate(s)
        stage, success, terms, env_state = reference_judgement(env.task, s)
        np.testing.assert_array_equal(ev.stage, stage)
        np.testing.assert_array_equal(ev.success, success)
        assert set(ev.terms) == set(w)
        for k, v in terms.items():
            np.testing.assert_allclose(ev.terms[k], v, atol=1e-9, err_msg=k)
        np.testing.assert_allclose(ev.reward, sum(w[k] * v for k, v in terms.items()), atol=1e-9)
        np.testing.assert_allclose(env.task.reward(ev), ev.reward)
        assert ev.environment_state.dtype == np.float32
        assert ev.environment_state.shape[1] == len(env.task.environment_state_names)
        np.testing.assert_allclose(ev.environment_state, env_state, atol=1e-6)
        np.testing.assert_array_equal(env.task.environment_state(s), ev.environment_state)
        seen_stages |= set(stage.tolist())
        seen_success |= bool(success.any())
    env.close()
    assert seen_stages >= {0, 1, 2}, f"the rollout covers the early stages, saw {sorted(seen_stages)}"
