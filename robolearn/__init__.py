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

# Mesa's software rasterizer (llvmpipe, behind OSMesa) splits every frame over worker threads. Our
# frames are small and many, and the cores are busy stepping physics: at 84x84 rasterizing on the
# calling thread renders ~25% faster (measured in bench/). It is read when the first GL context is
# made, so setting it here (before any renderer exists) is enough; export it to override.
os.environ.setdefault("LP_NUM_THREADS", "0")

__version__ = "0.1.0"
