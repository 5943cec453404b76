"""Off-screen rendering of many envs through one OpenGL context, and point clouds from depth.

One context serves every env: textures and meshes are the same in all env models, while colours,
lights and camera poses (which visual randomization changes) are read from each env's own model
when its scene is updated. OSMesa contexts belong to the thread that made them, so rendering
happens on the env's main thread, once per control step.

Cost: OSMesa (llvmpipe) rasterizes on the CPU and its time goes into vertices, not pixels: the
Panda's visual meshes from robosuite have ~135k triangles and cost ~20 ms a frame even at 84x84.
The renderer therefore draws each mesh at a level of detail that suits the image size (quadric
decimation to about one triangle per 16 pixels of the image, never below 512 per mesh), which
makes small images ~5x cheaper and leaves large ones (videos) untouched. Only the drawing changes:
physics, and each env's model, keep the full meshes.
"""

from __future__ import annotations

import hashlib
import os
from copy import copy

import mujoco
import numpy as np

from robolearn.errors import RendererError, UnknownNameError, did_you_mean


def _no_backend(reason) -> RendererError:
    backend = os.environ.get("MUJOCO_GL", "(unset)")
    return RendererError(
        f"cannot create an off-screen OpenGL context with MUJOCO_GL={backend} ({reason}). Fix: install the "
        "backend (apt-get install libosmesa6 for osmesa, libegl1 for egl) and set MUJOCO_GL=osmesa "
        "PYOPENGL_PLATFORM=osmesa (or egl) before Python starts; `make demo` does both"
    )


def _gl_context(width: int, height: int):
    try:
        ctx = mujoco.GLContext(width, height)
        ctx.make_current()
    except Exception as e:  # the bindings raise plain errors with the backend's own text
        raise _no_backend(e) from None
    return ctx


_LOD_CACHE: dict[tuple[bytes, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
MIN_MESH_FACES = 32


def lod_face_budget(height: int, width: int) -> int:
    """Triangles worth drawing into an image of this size, over all meshes: one per four pixels.

    A software rasterizer pays ~0.13 us per triangle however few pixels it covers: the Panda's
    ~150k triangles cost ~20 ms per 84x84 frame, a ~2k-triangle budget ~0.6 ms. From about
    800x800 up the budget exceeds the scene and everything is drawn at full detail."""
    return height * width // 4


def mesh_face_caps(model: mujoco.MjModel, total_faces: int) -> np.ndarray:
    """Per-mesh triangle caps sharing `total_faces` in proportion to each mesh's own count (so big
    meshes keep their share of detail), rounded to a power of two so that nearby image sizes share
    one cached decimation, and never below MIN_MESH_FACES."""
    faces = model.mesh_facenum.astype(np.float64)
    share = total_faces * faces / max(faces.sum(), 1.0)
    caps = 1 << np.round(np.log2(np.maximum(share, MIN_MESH_FACES))).astype(np.int64)
    return np.minimum(caps, model.mesh_facenum)


def _decimate(vert: np.ndarray, face: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quadric-decimated (vertices, faces, vertex normals) of one mesh; cached across renderers."""
    key = (hashlib.blake2b(vert.tobytes() + face.tobytes(), digest_size=16).digest(), max_faces)
    if key not in _LOD_CACHE:
        import open3d as o3d

        tm = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vert.astype(np.float64)),
                                       o3d.utility.Vector3iVector(face))
        # robosuite's OBJ meshes are triangle soups (vertices repeated per face): weld them first, or
        # the decimation cannot collapse edges and deletes whole faces, leaving holes in the arm
        tm.merge_close_vertices(1e-6)
        tm.remove_degenerate_triangles()
        target = max_faces
        for _ in range(4):  # quadric decimation treats the target loosely; tighten until it holds
            out = tm.simplify_quadric_decimation(target)
            out.remove_unreferenced_vertices()
            out.remove_degenerate_triangles()
            if len(out.triangles) <= max_faces:
                break
            target = max(4, target * max_faces // len(out.triangles) - 1)
        tm = out
        tm.compute_vertex_normals()
        _LOD_CACHE[key] = (np.asarray(tm.vertices), np.asarray(tm.triangles), np.asarray(tm.vertex_normals))
    return _LOD_CACHE[key]


def lod_model(model: mujoco.MjModel, total_faces: int) -> mujoco.MjModel:
    """A copy of `model` whose meshes share about `total_faces` triangles (see `mesh_face_caps`), to
    build a render context from (the context uploads every mesh once; scenes then only name them).

    Decimated meshes are written into the slots of the originals (they only shrink). Meshes drawn
    with a textured material keep their full detail, since decimation drops texture coordinates."""
    out = copy(model)
    textured_mats = np.flatnonzero((model.mat_texid >= 0).any(axis=1))
    geoms = np.flatnonzero(model.geom_type == mujoco.mjtGeom.mjGEOM_MESH)
    textured = set(model.geom_dataid[geoms[np.isin(model.geom_matid[geoms], textured_mats)]].tolist())
    caps = mesh_face_caps(model, total_faces)
    for i in np.flatnonzero(model.mesh_facenum > caps):
        if i in textured:
            continue
        max_faces = int(caps[i])
        va, vn = model.mesh_vertadr[i], model.mesh_vertnum[i]
        fa, fn = model.mesh_faceadr[i], model.mesh_facenum[i]
        vert, face, normal = _decimate(model.mesh_vert[va : va + vn], model.mesh_face[fa : fa + fn], max_faces)
        if len(vert) > vn or len(normal) > model.mesh_normalnum[i] or len(face) == 0:
            continue  # cannot happen for a decimation; keep the original rather than overrun a slot
        na = model.mesh_normaladr[i]
        out.mesh_vert[va : va + len(vert)] = vert
        out.mesh_vertnum[i] = len(vert)
        out.mesh_normal[na : na + len(normal)] = normal
        out.mesh_normalnum[i] = len(normal)
        out.mesh_face[fa : fa + len(face)] = face
        out.mesh_facenormal[fa : fa + len(face)] = face
        out.mesh_facenum[i] = len(face)
        out.mesh_texcoordnum[i] = 0
    return out


class CameraRenderer:
    """Renders named cameras of a batch of (model, data) pairs to RGB uint8 and metric depth."""

    def __init__(self, model: mujoco.MjModel, cameras: list[str], height: int, width: int, depth: bool,
                 lod: bool = True):
        """lod: draw meshes at the level of detail of `lod_face_budget` (False: full detail)."""
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
        # depth feeds point clouds, where a decimated fingertip is centimetres off at the wrist
        # camera's range: 8x the triangles when depth is read (about the cost of one more RGB frame)
        self.face_budget = lod_face_budget(height, width) * (8 if depth else 1) if lod else None
        drawn = model if self.face_budget is None else lod_model(model, self.face_budget)
        try:
            self.ctx = mujoco.MjrContext(drawn, mujoco.mjtFontScale.mjFONTSCALE_150)
        except mujoco.FatalError as e:  # e.g. GLFW without a display only warns, then no GL loads here
            self.close()
            raise _no_backend(e) from None
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.ctx)
        # read depth back as mujoco.Renderer does (reversed Z: 1 at the near plane, 0 at the far one)
        self.ctx.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        self.scene = mujoco.MjvScene(model, maxgeom=2000)
        self.opt = mujoco.MjvOption()
        self.opt.sitegroup[:] = 0  # sites are markers (robosuite's green grip line), not things a camera sees
        self.cam = mujoco.MjvCamera()
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.rect = mujoco.MjrRect(0, 0, width, height)
        self._rgb = np.zeros((height, width, 3), np.uint8)
        self._depth = np.zeros((height, width), np.float32)
        extent = model.stat.extent
        self.znear, self.zfar = model.vis.map.znear * extent, model.vis.map.zfar * extent

    def render(self, model: mujoco.MjModel, data: mujoco.MjData,
               cam_index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB (H, W, 3) uint8 and depth (H, W) float32 metres (None unless depth was asked for)."""
        if self.ctx is None:
            raise RendererError("this CameraRenderer was closed; create a new one (or a new env) to render")
        self.gl.make_current()
        self.cam.fixedcamid = self.cam_ids[cam_index]
        mujoco.mjv_updateScene(model, data, self.opt, None, self.cam, mujoco.mjtCatBit.mjCAT_ALL, self.scene)
        mujoco.mjr_render(self.rect, self.scene, self.ctx)
        mujoco.mjr_readPixels(self._rgb, self._depth if self.want_depth else None, self.rect, self.ctx)
        rgb = self._rgb[::-1].copy()  # OpenGL's first row is the bottom one
        if not self.want_depth:
            return rgb, None
        # invert the reversed-Z perspective map z = near (far - d) / (d (far - near)) for the distance d
        # along the optical axis (in float64, as mujoco.Renderer does)
        n, f = self.znear, self.zfar
        depth = (n * f) / (n + (f - n) * self._depth[::-1].astype(np.float64))
        return rgb, depth.astype(np.float32)

    def intrinsics(self, model: mujoco.MjModel, cam_index: int) -> np.ndarray:
        """3x3 pinhole intrinsics of a camera at the rendered size."""
        fovy = np.deg2rad(model.cam_fovy[self.cam_ids[cam_index]])
        f = 0.5 * self.height / np.tan(fovy / 2)
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1.0]])

    def close(self) -> None:
        """Free this renderer's GL objects, then its GL context (idempotent).

        The order matters with several renderers in one process: freeing an MjrContext deletes
        buffer and list ids in whichever context is current, so freeing it (or letting the garbage
        collector free it) while another renderer's context is current would blank that renderer's
        images. Our own context is made current first."""
        ctx, gl = getattr(self, "ctx", None), getattr(self, "gl", None)
        self.ctx = self.gl = None
        if gl is not None:
            gl.make_current()
            if ctx is not None:
                ctx.free()
            gl.free()  # also releases it as the current context

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the GL library may already be gone
            pass


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
