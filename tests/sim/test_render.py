"""Cameras: RGB and depth observations, their geometry (depth in metres, intrinsics, back-projection,
point clouds against the privileged state), the cost contract (one render per camera, env and
control step) and the renderer's level of detail."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # before anything imports mujoco
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import gc  # noqa: E402

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robolearn.errors import RendererError  # noqa: E402
from robolearn.sim.config import PointCloudConfig  # noqa: E402
from robolearn.sim.registry import make_env  # noqa: E402
from robolearn.sim.render import (  # noqa: E402
    MIN_MESH_FACES,
    CameraRenderer,
    depth_to_points,
    lod_face_budget,
    lod_model,
    make_pointcloud,
    mesh_face_caps,
)
from robolearn.sim.rotations import quat_rotate  # noqa: E402

CAMERAS = ["front", "side", "top", "wrist"]
SIZE = (48, 64)  # (height, width): non-square, so that a swapped axis shows
TOP_HEIGHT = 1.2  # the top camera's height above the table surface (z = 0), m
HALF = 0.02  # the lift cube's half edge, m


@pytest.fixture(scope="module")
def env():
    """Two lift envs with every camera and depth; reset with seed 0 (the cubes lie apart)."""
    env = make_env("lift", num_envs=2, cameras=CAMERAS, image_size=SIZE, depth=True, seed=0)
    env.reset(seed=0)
    yield env
    env.close()


def is_red(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the lift cube (rgba 0.85 0.15 0.1), uint8 (..., 3) -> bool."""
    rgb = rgb.astype(int)
    return (rgb[..., 0] > 120) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)


def put_cube(env, i: int, xy, yaw: float = 0.0) -> None:
    a = env.task.cube_qpos
    d = env.datas[i]
    d.qpos[a : a + 7] = [xy[0], xy[1], HALF, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]
    mujoco.mj_forward(env.models[i], d)


# ---- RGB ---------------------------------------------------------------------------------------------
def test_images_per_camera_shape_dtype_and_content(env):
    obs = env._observe()
    h, w = SIZE
    for cam in CAMERAS:
        img = obs[f"observation.images.{cam}"]
        assert img.shape == (2, h, w, 3) and img.dtype == np.uint8, cam
        assert env.single_observation_space[f"observation.images.{cam}"].shape == (h, w, 3)
        for i in range(2):
            assert img[i].std() > 10 and 10 < img[i].mean() < 245, f"{cam} image of env {i} looks blank"
        # the cubes (and the arm's start poses) differ between the envs, so do the pictures
        assert np.abs(img[0].astype(int) - img[1]).mean() > 0.2, cam
    for cam in ("front", "top"):  # the cube is in view of the fixed workspace cameras
        assert is_red(obs[f"observation.images.{cam}"]).any(axis=(1, 2)).all(), cam


def test_image_size_is_configurable():
    env = make_env("lift", cameras=["front"], image_size=(40, 56))
    obs, _ = env.reset(seed=0)
    assert obs["observation.images.front"].shape == (1, 40, 56, 3)
    assert env.render().shape == (1, 40, 56, 3)
    env.close()


def test_one_render_per_camera_env_and_control_step(monkeypatch):
    """Rendering happens once per control step, never per physics substep (25 here)."""
    calls = []
    original = CameraRenderer.render

    def counting(self, model, data, cam_index):
        calls.append(cam_index)
        return original(self, model, data, cam_index)

    monkeypatch.setattr(CameraRenderer, "render", counting)
    env = make_env("lift", num_envs=2, cameras=["front", "top"], image_size=SIZE, physics_hz=500, control_hz=20)
    assert env.substeps == 25
    env.reset(seed=0)
    assert len(calls) == 2 * 2  # envs x cameras
    for _ in range(3):
        env.step(np.zeros((2, 7)))
    assert len(calls) == 2 * 2 * (1 + 3)
    env.close()


def test_matches_mujoco_renderer_at_full_detail(env):
    """Without level of detail, RGB is pixel-identical to mujoco.Renderer and depth (metres) agrees
    to float precision: checks the image flip and the reversed-Z depth linearization."""
    m, d = env.models[0], env.datas[0]
    h, w = SIZE
    ours = CameraRenderer(m, CAMERAS, h, w, depth=True, lod=False)
    got = [ours.render(m, d, c) for c in range(len(CAMERAS))]
    ours.close()
    ref = mujoco.Renderer(m, h, w)
    opt = mujoco.MjvOption()
    opt.sitegroup[:] = 0  # as ours: sites are markers, not scenery
    for c, cam in enumerate(CAMERAS):
        ref.disable_depth_rendering()
        ref.update_scene(d, camera=cam, scene_option=opt)
        np.testing.assert_array_equal(got[c][0], ref.render(), err_msg=cam)
        ref.enable_depth_rendering()
        ref.update_scene(d, camera=cam, scene_option=opt)
        np.testing.assert_allclose(got[c][1], ref.render(), rtol=1e-4, err_msg=cam)
    ref.close()


def test_renderers_do_not_free_each_others_buffers():
    """An env dropped without close() must not blank the images of another env's renderer."""
    a = make_env("lift", cameras=["front"], image_size=SIZE)
    a.reset(seed=0)
    b = make_env("lift", cameras=["front"], image_size=SIZE)
    b.reset(seed=0)
    before = b.render()
    del a
    gc.collect()
    np.testing.assert_array_equal(b.render(), before)
    assert before.std() > 10
    b.close()
    with pytest.raises(RendererError, match="closed"):
        b.renderer.render(b.models[0], b.datas[0], 0)


# ---- depth and geometry ------------------------------------------------------------------------------
def test_depth_shape_units_and_top_camera_centre(env):
    obs = env._observe()
    h, w = SIZE
    for cam in CAMERAS:
        dep = obs[f"observation.depth.{cam}"]
        assert dep.shape == (2, h, w, 1) and dep.dtype == np.float32, cam
        assert np.all(np.isfinite(dep)) and np.all(dep > 0), cam
    # the top camera looks straight down at (0.5, 0) from 1.2 m; with the cube elsewhere its centre sees the table
    r, c = env.renderer, CAMERAS.index("top")
    put_cube(env, 0, (0.6, 0.12))
    depth = r.render(env.models[0], env.datas[0], c)[1]
    centre = depth[h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1]
    np.testing.assert_allclose(centre, TOP_HEIGHT - 0.0, atol=2e-3)
    put_cube(env, 0, (0.5, 0.0))  # now under it: the cube's top face is 4 cm higher
    depth = r.render(env.models[0], env.datas[0], c)[1]
    centre = depth[h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1]
    np.testing.assert_allclose(centre, TOP_HEIGHT - 2 * HALF, atol=2e-3)


def test_depth_agrees_with_ray_casting(env):
    """Depth along the optical axis of every camera against mj_ray from the camera (sampled pixels)."""
    m, d = env.models[1], env.datas[1]
    mujoco.mj_forward(m, d)
    r = env.renderer
    rng = np.random.default_rng(0)
    for c, cam in enumerate(CAMERAS):
        depth = r.render(m, d, c)[1]
        K = r.intrinsics(m, c)
        cid = r.cam_ids[c]
        pos, mat = d.cam_xpos[cid].copy(), d.cam_xmat[cid].reshape(3, 3)
        pts = depth_to_points(depth, K, pos, mat).reshape(*depth.shape, 3)
        close = seen = 0
        for v, u in zip(rng.integers(0, SIZE[0], 40), rng.integers(0, SIZE[1], 40)):
            ray = pts[v, u] - pos
            ray /= np.linalg.norm(ray)
            geomid = np.zeros(1, np.int32)
            dist = mujoco.mj_ray(m, d, pos, ray, None, 1, -1, geomid)
            if dist < 0 or depth[v, u] > 50:
                continue  # background
            z_ray = dist * -(mat.T @ ray)[2]  # distance along the optical axis
            seen += 1
            close += abs(z_ray - depth[v, u]) < 0.01  # meshes are drawn decimated; boxes are exact
        assert seen >= 10 and close >= 0.9 * seen, f"{cam}: only {close}/{seen} sampled pixels agree with ray casting"


def test_intrinsics_project_a_known_point(env):
    """The cube's top-face centre projects (pinhole K, camera pose) onto the centre of the cube's
    pixels, and the depth there back-projects to that point (at 96x128, ~1.1 cm per pixel)."""
    i = 0
    put_cube(env, i, (0.55, -0.08), yaw=0.3)
    m, d = env.models[i], env.datas[i]
    h, w = 96, 128
    r = CameraRenderer(m, ["top"], h, w, depth=True, lod=False)
    rgb, depth = r.render(m, d, 0)
    K = r.intrinsics(m, 0)
    cid = r.cam_ids[0]
    r.close()
    R, t = d.cam_xmat[cid].reshape(3, 3), d.cam_xpos[cid]
    point = np.array([0.55, -0.08, 2 * HALF])
    x, y, z = R.T @ (point - t)  # camera frame: looks along -z, +y up, image rows go down
    u, v = K[0, 0] * x / -z + K[0, 2], -K[1, 1] * y / -z + K[1, 2]
    red = np.argwhere(is_red(rgb))
    assert len(red) >= 9
    np.testing.assert_allclose(red.mean(axis=0), [v, u], atol=0.5)  # the cube's pixels centre on it
    back = depth_to_points(depth, K, t, R).reshape(h, w, 3)[round(v), round(u)]
    np.testing.assert_allclose(back, point, atol=0.01)
    assert depth[round(v), round(u)] == pytest.approx(TOP_HEIGHT - 2 * HALF, abs=2e-3)


def test_depth_to_points_round_trip():
    """Pure geometry: project known points with K and a camera pose, back-project with their depth."""
    h, w = 30, 40
    K = np.array([[50.0, 0, (w - 1) / 2], [0, 50.0, (h - 1) / 2], [0, 0, 1]])
    angle = 0.4  # camera tilted about x, looking down-ish
    R = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    t = np.array([0.1, -0.2, 1.0])
    depth = np.full((h, w), 0.8) + np.linspace(0, 0.2, w)[None]
    pts = depth_to_points(depth, K, t, R).reshape(h, w, 3)
    cam = (pts - t) @ R  # world -> camera frame
    np.testing.assert_allclose(-cam[..., 2], depth)  # depth is the distance along the optical axis
    v, u = np.mgrid[0:h, 0:w]
    np.testing.assert_allclose(K[0, 0] * cam[..., 0] / -cam[..., 2] + K[0, 2], u, atol=1e-9)
    np.testing.assert_allclose(-K[1, 1] * cam[..., 1] / -cam[..., 2] + K[1, 2], v, atol=1e-9)
    # the principal point looks straight down the optical axis
    centre = depth_to_points(np.ones((3, 3)), np.array([[5.0, 0, 1], [0, 5.0, 1], [0, 0, 1]]), t, R)[4]
    np.testing.assert_allclose(centre, t + R @ [0, 0, -1.0])


# ---- point clouds --------------------------------------------------------------------------------------
def test_pointcloud_in_crop_box_and_on_the_cube():
    # a crop box just above the table keeps the cube (and any of the arm that reaches down)
    pc = PointCloudConfig(enabled=True, num_points=1024, voxel_size=0.005, crop_min=(0.3, -0.3, 0.005),
                          crop_max=(0.8, 0.3, 0.3))
    env = make_env("lift", num_envs=2, cameras=["front", "top"], image_size=(72, 96), pointcloud=pc, seed=1)
    obs, _ = env.reset(seed=1)
    cloud = obs["observation.pointcloud"]
    assert cloud.shape == (2, 1024, 6) and cloud.dtype == np.float32
    assert env.single_observation_space["observation.pointcloud"].shape == (1024, 6)
    xyz, rgb = cloud[..., :3], cloud[..., 3:]
    assert np.all(xyz >= np.array(pc.crop_min) - 1e-6) and np.all(xyz <= np.array(pc.crop_max) + 1e-6)
    assert np.all((rgb >= 0) & (rgb <= 1))
    for i in range(2):
        red = (rgb[i, :, 0] > 0.5) & (rgb[i, :, 1] < 0.35) & (rgb[i, :, 2] < 0.35)
        pts = np.unique(xyz[i, red], axis=0)  # the cloud repeats points to reach its fixed count
        assert len(pts) >= 10, f"env {i}: only {len(pts)} cube points"
        centre = env.state.body_pos["cube"][i]  # privileged state
        quat = env.state.body_quat["cube"][i]
        local = quat_rotate(quat * [1, -1, -1, -1], pts - centre)  # into the cube's frame
        assert np.all(np.abs(local) <= HALF + 0.01), "cube points lie more than 1 cm off the cube"
        # seen from above and from +x: the centroid sits on the top face, pulled toward +x by the side face
        np.testing.assert_allclose(pts[:, :2].mean(axis=0), centre[:2], atol=0.015)
        assert HALF < pts[:, 2].mean() <= 2 * HALF + 0.005
    env.close()


def top_view_points(env):
    m, d, r = env.models[0], env.datas[0], env.renderer
    c = CAMERAS.index("top")
    rgb, depth = r.render(m, d, c)
    cid = r.cam_ids[c]
    return depth_to_points(depth, r.intrinsics(m, c), d.cam_xpos[cid], d.cam_xmat[cid]), rgb.reshape(-1, 3)


def test_pointcloud_voxel_downsampling_and_fixed_count(env):
    points, colors = top_view_points(env)
    lo, hi = (0.0, -0.5, -0.01), (0.9, 0.5, 0.6)
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    rng = np.random.default_rng(0)
    distinct = {}
    for voxel in (0.0, 0.03):
        out = make_pointcloud(points, colors, lo, hi, voxel, 20000, rng)
        assert out.shape == (20000, 6)
        distinct[voxel] = len(np.unique(out[:, :3], axis=0))
    assert distinct[0.0] == inside.sum()  # nothing merged without a voxel size
    kept = points[inside]
    occupied = len(np.unique(np.floor((kept - kept.min(axis=0) + 0.015) / 0.03), axis=0))  # open3d's grid
    assert distinct[0.03] <= occupied < distinct[0.0]  # at most one point per occupied 3 cm voxel
    # a fixed count however many points the crop keeps: repeats when few, zeros when none
    few = make_pointcloud(points, colors, (0.45, -0.05, -0.01), (0.55, 0.05, 0.6), 0.0, 4096, rng)
    assert few.shape == (4096, 6) and np.all(few[:, :3] >= (0.45, -0.05, -0.01))
    none = make_pointcloud(points, colors, (5, 5, 5), (6, 6, 6), 0.005, 64, rng)
    assert none.shape == (64, 6) and not none.any()


# ---- level of detail -------------------------------------------------------------------------------------
def test_level_of_detail_keeps_the_picture(env):
    m, d = env.models[0], env.datas[0]
    budget = env.renderer.face_budget  # this renderer reads depth: 8x the RGB-only budget
    assert budget == 8 * lod_face_budget(*SIZE)
    assert lod_face_budget(800, 800) > m.mesh_facenum.sum()  # large images: full detail
    light = lod_model(m, budget)
    assert light.mesh_facenum.sum() < m.mesh_facenum.sum() / 3
    caps = mesh_face_caps(m, budget)
    assert np.all((light.mesh_facenum <= caps) | (light.mesh_facenum == m.mesh_facenum))
    assert light.mesh_facenum.sum() <= 2 * budget + MIN_MESH_FACES * m.nmesh
    np.testing.assert_array_equal(m.mesh_facenum, env.nominal.mesh_facenum)  # the env's model is untouched
    full = CameraRenderer(m, CAMERAS, *SIZE, depth=True, lod=False)
    for c in range(len(CAMERAS)):
        a_rgb, a_depth = env.renderer.render(m, d, c)
        b_rgb, b_depth = full.render(m, d, c)
        assert np.abs(a_rgb.astype(int) - b_rgb).mean() < 4, CAMERAS[c]
        assert np.median(np.abs(a_depth - b_depth)) < 1e-3, CAMERAS[c]
    full.close()
