"""MuJoCo needle-into-eye-trocar simulator of a Meca500: scene, gymnasium env, scripted expert,
domain randomization and the HDF5 episode recorder.

Importing any part of the package selects EGL (headless OpenGL) for MuJoCo when no display is present:
the variable must be set before `mujoco` is first imported, so import `sim` before `mujoco`.
"""

import os
import sys
import warnings

if not os.environ.get("DISPLAY") and "MUJOCO_GL" not in os.environ:
    if "mujoco" in sys.modules:
        warnings.warn(
            "mujoco was imported before sim with no DISPLAY and no MUJOCO_GL: offscreen rendering will fail. "
            "Set MUJOCO_GL=egl in the environment, or import sim before mujoco.",
            stacklevel=2,
        )
    os.environ["MUJOCO_GL"] = "egl"
