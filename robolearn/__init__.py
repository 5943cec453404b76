"""robolearn: train manipulation policies in simulation and deploy them to real arms."""

import os

# MuJoCo chooses its OpenGL backend once, when `mujoco` is first imported, from MUJOCO_GL. OSMesa
# renders off-screen on every machine (CI, SSH, containers) without a display or GPU driver, so it
# is the default here; a user with a display or EGL sets MUJOCO_GL=glfw / egl themselves and we
# leave it alone. PyOpenGL (used by robosuite) needs the matching PYOPENGL_PLATFORM, but only when
# the backend is OSMesa: forcing it under EGL or GLFW would break those.
os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"].lower() == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

__version__ = "0.1.0"
