"""Simulation: native MuJoCo tasks, the batched VecEnv, and the robosuite adapter.

MuJoCo loads its OpenGL backend (MUJOCO_GL) when it is first imported, and a missing or unknown
backend fails right there with PyOpenGL's or MuJoCo's own words; this turns that into one message
that names the backend and the fix.
"""

import os

from robolearn.errors import RendererError, RobolearnError

try:
    import mujoco  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != "mujoco":
        raise
    raise RobolearnError("mujoco is not installed. Fix: pip install 'mujoco>=3.9,<3.10' (or make venv)") from None
except (ImportError, AttributeError, RuntimeError, OSError) as e:
    backend = os.environ.get("MUJOCO_GL", "(unset)")
    raise RendererError(
        f"mujoco cannot load its OpenGL backend MUJOCO_GL={backend} ({type(e).__name__}: {e}). Fix: install the "
        "backend (apt-get install libosmesa6 for osmesa, libegl1 for egl) or set MUJOCO_GL to one that works "
        "here (osmesa, egl, or glfw with a display) before Python starts"
    ) from None
