"""Compiled per-step kernels (numba). At one env a numpy call costs more than the arithmetic it
does, so the control law runs as one compiled call over the whole batch instead of ~30 numpy calls.
`cache=True` keeps the compiled code in __pycache__ so only the first run pays the ~1 s compile."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _chol_solve6(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve a x = b for a symmetric positive definite 6x6 `a` (Cholesky; `a` is overwritten)."""
    n = 6
    for j in range(n):
        s = a[j, j]
        for k in range(j):
            s -= a[j, k] * a[j, k]
        a[j, j] = np.sqrt(s)
        for i in range(j + 1, n):
            s = a[i, j]
            for k in range(j):
                s -= a[i, k] * a[j, k]
            a[i, j] = s / a[j, j]
    y = np.empty(n)
    for i in range(n):
        s = b[i]
        for k in range(i):
            s -= a[i, k] * y[k]
        y[i] = s / a[i, i]
    x = np.empty(n)
    for i in range(n - 1, -1, -1):
        s = y[i]
        for k in range(i + 1, n):
            s -= a[k, i] * x[k]
        x[i] = s / a[i, i]
    return x


# near-zero damping of the null-space projection: (I - J^T (J J^T + eps I)^-1 J) z
PROJECTION_EPS = 1e-6


@numba.njit(cache=True, nogil=True)
def ee_delta_to_ctrl(jac: np.ndarray, dofs: np.ndarray, q: np.ndarray, action: np.ndarray, scale: np.ndarray,
                     home: np.ndarray, nullspace_gain: float, damping2: float, max_step: np.ndarray,
                     lo: np.ndarray, hi: np.ndarray, half_width: float, out: np.ndarray) -> None:
    """Damped-least-squares IK with a null-space pull toward `home`, for every env.

    jac (N, 6, nv) TCP Jacobians; q (N, 7); action (N, 7) ee-delta in [-1, 1]; out (N, 9) actuator
    targets: 7 joints then the two fingers. Per env, with A = J J^T and z = k (home - q):
        dq = J^T (A + l^2 I)^-1 twist  +  z - J^T (A + eps I)^-1 J z
    The damped inverse serves the commanded twist (robust near singularities); the pull toward home
    is projected with an (almost) exact pseudo-inverse, because a damped projector leaks part of the
    pull into the end effector: a zero action would drift ~1 cm in five steps. The whole step is
    scaled down when a joint would exceed its velocity limit (clipping joints one by one would bend a
    straight-line command), then clipped to the joint limits."""
    n_env = q.shape[0]
    a = np.empty((6, 6))
    a_t = np.empty((6, 6))
    r = np.empty(6)
    jz = np.empty(6)
    z = np.empty(7)
    dq = np.empty(7)
    for e in range(n_env):
        for k in range(7):
            z[k] = nullspace_gain * (home[k] - q[e, k])
        for i in range(6):
            r[i] = action[e, i] * scale[i]
            t = 0.0
            for k in range(7):
                t += jac[e, i, dofs[k]] * z[k]
            jz[i] = t
            for j in range(6):
                t = 0.0
                for k in range(7):
                    t += jac[e, i, dofs[k]] * jac[e, j, dofs[k]]
                a[i, j] = t
                a_t[i, j] = t
            a[i, i] += PROJECTION_EPS
            a_t[i, i] += damping2
        y_t = _chol_solve6(a_t, r)
        y_z = _chol_solve6(a, jz)
        shrink = 1.0
        for k in range(7):
            t = z[k]
            for i in range(6):
                t += jac[e, i, dofs[k]] * (y_t[i] - y_z[i])
            dq[k] = t
            if abs(t) * shrink > max_step[k]:
                shrink = max_step[k] / abs(t)
        for k in range(7):
            out[e, k] = min(max(q[e, k] + dq[k] * shrink, lo[k]), hi[k])
        g = min(max(action[e, 6], -1.0), 1.0)
        out[e, 7] = half_width * (1.0 - g) / 2.0
        out[e, 8] = -out[e, 7]


@numba.njit(cache=True, nogil=True)
def gather_state(qpos_views, qvel_views, xpos_views, xquat_views, site_views, sensor_views, arm_qpos: np.ndarray,
                 arm_dof: np.ndarray, finger_qpos: np.ndarray, bodies: np.ndarray, tcp_site: int,
                 grasp_adr: np.ndarray, q: np.ndarray, dq: np.ndarray, fingers: np.ndarray, xpos: np.ndarray,
                 xquat: np.ndarray, tcp: np.ndarray, proprio: np.ndarray, contact: np.ndarray) -> None:
    """Copy every env's arm state, tracked body poses and TCP position out of its MjData buffers.

    *_views are typed lists of each MjData's own arrays (views made once; MjData never moves them);
    outputs are batch arrays: q, dq (N, 7), fingers (N, 2), xpos (N, B, 3), xquat (N, B, 4), tcp (N, 3),
    and proprio (N, 23) float32 = observation.state: q, dq, TCP position, TCP quaternion (the last
    gathered body, the end effector), fingers; contact (N, 2): the left / right finger touches any grasp
    geom, from the contact-sensor counts at grasp_adr (2, G) in sensordata."""
    for e in range(len(qpos_views)):
        qp, qv, xp, xq, st = qpos_views[e], qvel_views[e], xpos_views[e], xquat_views[e], site_views[e]
        sd = sensor_views[e]
        for side in range(2):
            touching = False
            for g in range(grasp_adr.shape[1]):
                if sd[grasp_adr[side, g]] > 0:
                    touching = True
            contact[e, side] = touching
        for k in range(arm_qpos.shape[0]):
            q[e, k] = qp[arm_qpos[k]]
            dq[e, k] = qv[arm_dof[k]]
        for k in range(finger_qpos.shape[0]):
            fingers[e, k] = qp[finger_qpos[k]]
        for b in range(bodies.shape[0]):
            for c in range(3):
                xpos[e, b, c] = xp[bodies[b], c]
            for c in range(4):
                xquat[e, b, c] = xq[bodies[b], c]
        for c in range(3):
            tcp[e, c] = st[tcp_site, c]
        for k in range(7):
            proprio[e, k] = q[e, k]
            proprio[e, 7 + k] = dq[e, k]
        for c in range(3):
            proprio[e, 14 + c] = tcp[e, c]
        for c in range(4):
            proprio[e, 17 + c] = xquat[e, bodies.shape[0] - 1, c]
        for k in range(2):
            proprio[e, 21 + k] = fingers[e, k]


@numba.njit(cache=True, nogil=True)
def write_ctrl(ctrl_views, act_ids: np.ndarray, values: np.ndarray) -> None:
    """ctrl_views[e][act_ids[k]] = values[e, k] for every env (typed list of each MjData's ctrl)."""
    for e in range(len(ctrl_views)):
        c = ctrl_views[e]
        for k in range(act_ids.shape[0]):
            c[act_ids[k]] = values[e, k]
