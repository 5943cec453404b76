"""The simulated Panda: robosuite's Panda meshes (installed with robosuite, read at run time, never
copied into this repository), with joint names, limits and home pose taken from `hardware/`.

Differences from robosuite's model, and why:
- position actuators (PD in C, gains below) with gravity compensation replace robosuite's torque
  motors driven by a Python OSC loop every physics substep: the whole control period runs inside
  `mj_step(m, d, nstep)`, which is where our speed comes from;
- torque limits are the datasheet effort limits from `hardware/robots/panda.yaml`;
- arm links do not collide with each other (the real arm's controller prevents self-collision and
  it costs a third of the physics time); they do collide with the table and objects.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from robolearn.errors import RobolearnError
from robolearn.hardware import RobotSpec

# PD gains of the joint position actuators, N*m/rad and N*m*s/rad: a 0.05 rad step mostly
# settles within one 50 ms control period on robosuite's Panda inertias. The wrist (joints 5-7)
# saturates its 12 N*m effort limit at a few mrad of error, and a saturated PD brakes late, so it
# gets twice the damping time (kv/kp = 40 ms) and less rotor inertia: a 0.1 rad joint step then
# settles without overshoot instead of ringing to 0.2 rad.
ARM_KP = np.array([4500.0, 4500.0, 3500.0, 3500.0, 2000.0, 1500.0, 800.0])
ARM_KV = ARM_KP * np.array([0.02, 0.02, 0.02, 0.02, 0.04, 0.04, 0.04])
ARM_ARMATURE = np.array([0.1, 0.1, 0.1, 0.1, 0.02, 0.02, 0.02])  # reflected rotor inertia, kg*m^2
FINGER_KP = 1000.0  # N/m, as robosuite's Panda hand

PREFIX = "panda_"
TCP_SITE = PREFIX + "grip_site"  # tool centre point between the fingertips
EE_BODY = PREFIX + "eef"
WRIST_CAMERA = "wrist"


def robosuite_assets() -> Path:
    """Folder of robosuite's installed MJCF assets (found without importing robosuite, which is slow)."""
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise RobolearnError(
            "robosuite is not installed; the simulated Panda reuses its meshes. Fix: pip install robosuite==1.5.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "assets"
    if not (path / "robots" / "panda" / "robot.xml").is_file():
        raise RobolearnError(f"robosuite at {path.parent.parent} has no Panda model; reinstall robosuite==1.5.2")
    return path


@dataclass(frozen=True)
class RobotIds:
    """Indices of the arm in a compiled model (identical for every copy of one scene)."""

    arm_qpos: np.ndarray  # (7,) qpos addresses of the arm joints
    arm_dof: np.ndarray  # (7,) dof addresses
    finger_qpos: np.ndarray  # (2,)
    arm_act: np.ndarray  # (7,) actuator ids
    finger_act: np.ndarray  # (2,)
    tcp_site: int
    ee_body: int


def _panda_spec() -> mujoco.MjSpec:
    """robosuite's Panda arm with its hand attached, actuators and sensors removed."""
    assets = robosuite_assets()
    arm = mujoco.MjSpec.from_file(str(assets / "robots" / "panda" / "robot.xml"))
    hand = mujoco.MjSpec.from_file(str(assets / "grippers" / "panda_gripper.xml"))
    arm.meshdir = str(assets / "robots" / "panda") + "/"
    hand.meshdir = str(assets / "grippers") + "/"
    for act in list(arm.actuators):  # robosuite's torque motors; replaced by position actuators
        arm.delete(act)
    for act in list(hand.actuators):
        hand.delete(act)
    for sensor in list(hand.sensors):
        hand.delete(sensor)
    arm.body("right_hand").add_frame().attach_body(hand.body("right_gripper"), "", "")
    return arm


@functools.cache
def _merged_visuals() -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:  # body -> [(material, v, f)]
    """Per body: (material, vertices in the body frame, faces) of its visual meshes merged by material.

    robosuite's Panda draws ~55 visual sub-meshes; a software renderer pays per draw call about what
    it pays for a thousand triangles, so merging them per (body, material) roughly halves the cost
    of a small camera image without changing a pixel of geometry."""
    model = _panda_spec().compile()
    out: dict[str, dict[tuple, tuple[str, list, list, int]]] = {}
    for g in range(model.ngeom):
        if model.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH or model.geom_contype[g] or model.geom_conaffinity[g]:
            continue
        mesh, mat = model.geom_dataid[g], model.geom_matid[g]
        if mat < 0 or model.geom_group[g] != 1:
            continue  # only material-coloured visual meshes (the fingers use rgba and stay as they are)
        va, vn = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        fa, fn = model.mesh_faceadr[mesh], model.mesh_facenum[mesh]
        rot = np.zeros(9)
        mujoco.mju_quat2Mat(rot, model.geom_quat[g])
        vert = model.mesh_vert[va : va + vn] @ rot.reshape(3, 3).T + model.geom_pos[g]
        groups = out.setdefault(model.body(model.geom_bodyid[g]).name, {})
        # robosuite gives each sub-mesh its own material, many of them identical: group by appearance
        look = (*np.round(model.mat_rgba[mat], 3), round(float(model.mat_specular[mat]), 3),
                round(float(model.mat_shininess[mat]), 3))
        name, verts, faces, count = groups.get(look, (model.material(mat).name, [], [], 0))
        verts.append(vert)
        faces.append(model.mesh_face[fa : fa + fn] + count)
        groups[look] = (name, verts, faces, count + vn)
    return {
        body: [(name, np.concatenate(v), np.concatenate(f)) for name, v, f, _ in groups.values()]
        for body, groups in out.items()
    }


def _merge_visual_meshes(arm: mujoco.MjSpec) -> None:
    """Replace the arm's visual sub-meshes by one mesh per (body, material look)."""
    merged = _merged_visuals()
    replaced = set()
    for body_name, parts in merged.items():
        body = arm.body(body_name)
        for geom in list(body.geoms):
            if geom.type == mujoco.mjtGeom.mjGEOM_MESH and geom.contype == 0 and geom.conaffinity == 0 \
                    and geom.material and geom.group == 1:
                replaced.add(geom.meshname)
                arm.delete(geom)
        for k, (mat, vert, face) in enumerate(parts):
            name = f"{body_name}_visual_{k}"
            arm.add_mesh(name=name, uservert=vert.ravel().tolist(), userface=face.ravel().tolist())
            body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_MESH, meshname=name, material=mat,
                          contype=0, conaffinity=0, group=1)
    for mesh in list(arm.meshes):  # unused mesh assets would still be loaded and uploaded to every GL context
        if mesh.name in replaced:
            arm.delete(mesh)


def attach_panda(scene: mujoco.MjSpec, robot: RobotSpec, base_pos=(0.0, 0.0, 0.0)) -> None:
    """Attach the Panda arm and hand to `scene` at `base_pos` (world frame, m)."""
    arm = _panda_spec()
    _merge_visual_meshes(arm)
    frame = scene.worldbody.add_frame(pos=list(base_pos))
    frame.attach_body(arm.body("base"), PREFIX, "")

    arm_joints = [scene.joint(f"{PREFIX}joint{i + 1}") for i in range(7)]
    finger_joints = [scene.joint(f"{PREFIX}finger_joint{i + 1}") for i in range(2)]
    if robot.dof != 7 or len(robot.gripper_joint_names) != 2:
        raise RobolearnError(f"{robot.path}: the simulated Panda needs 7 arm joints and 2 finger joints")
    for j, name, lo, hi, arm in zip(arm_joints, robot.joint_names, robot.position_lower, robot.position_upper,
                                    ARM_ARMATURE):
        j.name = name
        j.range = [lo, hi]
        j.armature = arm  # also keeps the stiff PD stable at 2 ms steps
    half = robot.gripper_width_max / 2
    for j, name, rng in zip(finger_joints, robot.gripper_joint_names, ([0.0, half], [-half, 0.0])):
        j.name = name
        j.range = rng
    for i, (name, kp, kv, tau) in enumerate(zip(robot.joint_names, ARM_KP, ARM_KV, robot.effort_limit)):
        a = scene.add_actuator(name=f"{name}_pos", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.set_to_position(kp=kp, kv=kv)
        a.ctrlrange = [robot.position_lower[i], robot.position_upper[i]]
        a.forcerange = [-tau, tau]
    finger_force = robot.gripper_max_force / 2
    for name, rng in zip(robot.gripper_joint_names, ([0.0, half], [-half, 0.0])):
        a = scene.add_actuator(name=f"{name}_pos", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        a.set_to_position(kp=FINGER_KP, kv=0.0)
        a.ctrlrange = rng
        a.forcerange = [-finger_force, finger_force]

    base = scene.body(PREFIX + "base")
    for body in _subtree(base):
        body.gravcomp = 1.0  # the real arm compensates gravity in its own controller
    for g in scene.geoms:
        if not g.name.startswith(PREFIX) or g.contype == 0 and g.conaffinity == 0:
            continue
        g.group = 3  # collision hulls are not drawn: they double the render cost and stripe the images
        if "finger" in g.name:
            g.contype, g.conaffinity = 1, 3
        elif g.name in (f"{PREFIX}link0_collision", f"{PREFIX}link1_collision"):
            g.contype, g.conaffinity = 0, 0  # fixed to the bench; would touch the table forever
        else:
            g.contype, g.conaffinity = 2, 0
    for site in scene.sites:  # robosuite's debugging markers (grip cylinder, axes) must not show in images
        if site.name.startswith(PREFIX):
            site.rgba = [0, 0, 0, 0]
    cam = scene.camera(PREFIX + "eye_in_hand")
    if cam is not None:
        cam.name = WRIST_CAMERA


def _subtree(body):
    yield body
    for child in body.bodies:
        yield from _subtree(child)


def robot_ids(model: mujoco.MjModel, robot: RobotSpec) -> RobotIds:
    def jid(name):
        i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if i < 0:
            raise RobolearnError(f"joint {name!r} from {robot.path} is not in the simulated model")
        return i

    arm_j = [jid(n) for n in robot.joint_names]
    fin_j = [jid(n) for n in robot.gripper_joint_names]
    act = lambda n: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_ACTUATOR, f"{n}_pos")  # noqa: E731
    return RobotIds(
        arm_qpos=model.jnt_qposadr[arm_j].copy(),
        arm_dof=model.jnt_dofadr[arm_j].copy(),
        finger_qpos=model.jnt_qposadr[fin_j].copy(),
        arm_act=np.array([act(n) for n in robot.joint_names]),
        finger_act=np.array([act(n) for n in robot.gripper_joint_names]),
        tcp_site=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, TCP_SITE),
        ee_body=mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, EE_BODY),
    )
