"""MuJoCo needle-into-eye-trocar simulator of a Meca500: scene, gymnasium env, scripted expert,
domain randomization and the HDF5 episode recorder.

Importing any part of the package selects EGL (headless OpenGL) for MuJoCo when no display is present:
the variable must be set before `mujoco` is first imported.
"""

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
