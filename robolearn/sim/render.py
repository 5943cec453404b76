"""Off-screen rendering of many envs through one OpenGL context, and point clouds from depth.

One context serves every env: textures and meshes are the same in all env models, while colours,
lights and camera poses (which visual randomization changes) are read from each env's own model
when its scene is updated. OSMesa contexts belong to the thread that made them, so rendering
happens on the env's main thread, once per control step.
"""

from __future__ import annotations

import os

import mujoco
import numpy as np

from robolearn.errors import RendererError, UnknownNameError, did_you_mean


def _gl_context(width: int, height: int):
    backend = os.environ.get("MUJOCO_GL", "(unset)")
    try:
        ctx = mujoco.GLContext(width, height)
        ctx.make_current()
    except Exception as e:  # the bindings raise plain errors with the backend's own text
        raise RendererError(
            f"cannot create an off-screen OpenGL context with MUJOCO_GL={backend} ({e}). Fix: install the "
            "backend (apt-get install libosmesa6 for osmesa, libegl1 for egl) and set MUJOCO_GL=osmesa "
            "PYOPENGL_PLATFORM=osmesa (or egl) before Python starts; `make demo` does both"
        ) from None
    return ctx


class CameraRenderer:
    """Renders named cameras of a batch of (model, data) pairs to RGB uint8 and metric depth."""

    def __init__(self, model: mujoco.MjModel, cameras: list[str], height: int, width: int, depth: bool):
        self.cam_ids = []
        names = [model.camera(i).name for i in range(model.ncam)]
        for name in cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
            if cid < 0:
                raise UnknownNameError(
                    f"unknown camera {name!r}; this scene has cameras: {', '.join(names)}." + did_you_mean(name, names)
                )
            self.cam_ids.append(cid)
        self.cameras, self.height, self.width, self.want_depth = list(cameras), height, width, depth
        if model.vis.global_.offwidth < width or model.vis.global_.offheight < height:
            raise RendererError(
                f"image_size {height}x{width} exceeds the scene's off-screen buffer "
                f"{model.vis.global_.offheight}x{model.vis.global_.offwidth}; raise <global offwidth/offheight>"
            )
        self.gl = _gl_context(width, height)
        self.ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        self.scene = mujoco.MjvScene(model, maxgeom=2000)
        self.opt = mujoco.MjvOption()
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.zeros((height, width, 3), np.uint8)
        self._depth = np.zeros((height, width), np.float32)
        extent = model.stat.extent
        self.znear, self.zfar = model.vis.map.znear * extent, model.vis.map.zfar * extent

    def render(self, model: mujoco.MjModel, data: mujoco.MjData, cam_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB (H, W, 3) uint8 and depth (H, W) float32 metres (None unless depth was asked for)."""
        self.gl.make_current()
        self.cam.fixedcamid = self.cam_ids[cam_index]
        mujoco.mjv_updateScene(model, data, self.opt, None, self.cam, mujoco.mjtCatBit.mjCAT_ALL, self.scene)
        mujoco.mjr_render(self.rect, self.scene, self.ctx)
        mujoco.mjr_readPixels(self._rgb, self._depth if self.want_depth else None, self.rect, self.ctx)
        rgb = np.flipud(self._rgb).copy()
        if not self.want_depth:
            return rgb, None
        z = np.flipud(self._depth)
        depth = self.znear / (1.0 - z * (1.0 - self.znear / self.zfar))  # OpenGL depth -> metres
        return rgb, depth.astype(np.float32)

    def intrinsics(self, model: mujoco.MjModel, cam_index: int) -> np.ndarray:
        """3x3 pinhole intrinsics of a camera at the rendered size."""
        fovy = np.deg2rad(model.cam_fovy[self.cam_ids[cam_index]])
        f = 0.5 * self.height / np.tan(fovy / 2)
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1.0]])

    def close(self) -> None:
        if getattr(self, "ctx", None) is not None:
            self.ctx.free()
            self.ctx = None
        if getattr(self, "gl", None) is not None:
            self.gl.free()
            self.gl = None


def depth_to_points(depth: np.ndarray, K: np.ndarray, cam_pos: np.ndarray, cam_mat: np.ndarray) -> np.ndarray:
    """Back-project a metric depth image (H, W) to world-frame points (H*W, 3).

    MuJoCo cameras look along their -z axis with +y up; image rows go downward."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    x = (u - K[0, 2]) * depth / K[0, 0]
    y = -(v - K[1, 2]) * depth / K[1, 1]
    pts_cam = np.stack([x, y, -depth], axis=-1).reshape(-1, 3)
    return pts_cam @ cam_mat.reshape(3, 3).T + cam_pos


def make_pointcloud(points: np.ndarray, colors: np.ndarray, crop_min, crop_max, voxel_size: float,
                    num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Crop to the workspace box, voxel-downsample with open3d, and resample to a fixed count.

    points (P, 3) world metres, colors (P, 3) uint8 -> (num_points, 6) float32 xyz + rgb in [0, 1].
    An empty crop gives all-zero points (the policy sees 'nothing there' rather than an error)."""
    import open3d as o3d

    keep = np.all((points >= np.asarray(crop_min)) & (points <= np.asarray(crop_max)), axis=1)
    points, colors = points[keep], colors[keep]
    out = np.zeros((num_points, 6), np.float32)
    if len(points) == 0:
        return out
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(points.astype(np.float64))
    pcd.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    if voxel_size > 0:
        pcd = pcd.voxel_down_sample(voxel_size)
    xyz, rgb = np.asarray(pcd.points), np.asarray(pcd.colors)
    idx = rng.choice(len(xyz), num_points, replace=len(xyz) < num_points)
    out[:, :3], out[:, 3:] = xyz[idx], rgb[idx]
    return out
