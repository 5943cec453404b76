"""Shared test setup.

MuJoCo picks its OpenGL backend once, at its first import, and several test modules import mujoco
before robolearn (which would otherwise set the default): set the headless backend here, before any
test module is imported, so a plain `pytest` renders off-screen like `make test` does."""

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")
if os.environ["MUJOCO_GL"].lower() == "osmesa":
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

# session fixtures of a small annotated dataset and a trained reward model (tests/reward_fixtures.py), used
# by tests/rewards and tests/eval: one plugin, so they are built once per session
pytest_plugins = ["reward_fixtures"]
