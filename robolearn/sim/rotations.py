"""Batched rotation helpers. Quaternions are `wxyz` (MuJoCo's order); arrays are batch-first."""

from __future__ import annotations

import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternion -> (..., 3) rotation vector (axis * angle, angle in [0, pi])."""
    q = np.where(q[..., :1] < 0, -q, q)
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., :1])
    return np.where(s > 1e-12, v / np.maximum(s, 1e-12) * angle, 2.0 * v)


def axis_angle_to_quat(r: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(r, axis=-1, keepdims=True)
    half = angle / 2
    axis = np.where(angle > 1e-12, r / np.maximum(angle, 1e-12), 0.0)
    return np.concatenate([np.cos(half), axis * np.sin(half)], axis=-1)


def rotation_error(q_target: np.ndarray, q_current: np.ndarray) -> np.ndarray:
    """World-frame rotation vector that turns `q_current` into `q_target`: (..., 4) x2 -> (..., 3)."""
    return quat_to_axis_angle(quat_mul(q_target, quat_conj(q_current)))


def yaw_quat(yaw: np.ndarray) -> np.ndarray:
    """(...,) yaw angles -> (..., 4) quaternions about world z."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=-1)


def quat_to_yaw(q: np.ndarray) -> np.ndarray:
    """Yaw (rotation about world z) of (..., 4) quaternions."""
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate (..., 3) vectors by (..., 4) quaternions."""
    qv = q[..., 1:]
    t = 2.0 * np.cross(qv, v)
    return v + q[..., :1] * t + np.cross(qv, t)
