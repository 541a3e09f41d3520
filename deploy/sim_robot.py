"""The simulator as a robot: sim/'s NeedleInsertionEnv (the collector's scene, cameras and domain randomization)
stepped on the wall clock, one physics frame of 1/hz per control tick.

The target sent in a tick is held by the servos until the next observe(), which steps the physics over that
period and renders the cameras: as on the real arm, the observation at tick t+1 shows where the target of tick t
got the arm. A tick without a target (a dry run, a held tick) holds the previous one. The state is stamped with the
tick's time, each frame with when its rendering finished. Rendering happens inside the control loop's tick: where
this machine cannot render and infer within a period, the loop reports overruns.
"""

import math
import time

import numpy as np

from episode_format.errors import UserError
from sim.env import NeedleInsertionEnv
from sim.randomization import DomainRandomization, PhantomPlacement
from sim.scene import CAMERA_NAMES, PHYSICS_TIMESTEP


def physics_substeps(hz: float) -> int:
    """Physics steps per control tick at `hz` (the env's 1/600 s timestep must divide the period)."""
    substeps = 1.0 / (hz * PHYSICS_TIMESTEP)
    if substeps < 1 or not math.isclose(substeps, round(substeps), abs_tol=1e-6):
        allowed = [600 // n for n in (40, 60, 120, 200, 300, 600)]
        raise UserError(f"--hz {hz}: the simulator steps physics in 1/600 s, so a control period must be a whole "
                        f"number of them: use e.g. --hz {' / '.join(map(str, allowed))} (15 is the collector's)")
    return int(round(substeps))


class SimRobot:
    name = "sim"
    cameras = CAMERA_NAMES

    def __init__(self, hz: float, width: int, height: int, seed: int, dr: DomainRandomization | None,
                 phantom: PhantomPlacement):
        self.seed, self.width, self.height = seed, width, height
        # The env's success and timeout flags are not used (it keeps stepping past them): the run ends on the
        # control loop's terms, and the report takes the env's tip and axis errors.
        self.env = NeedleInsertionEnv(width=width, height=height, dr=dr, phantom=phantom)
        self.env.substeps = physics_substeps(hz)  # one tick of physics per control period
        self._target: np.ndarray | None = None
        self._observation: dict | None = None
        self._unread_reset = False  # the reset observation, not yet observed: no period has passed since
        self._info: dict = {}
        self._max_penetration_mm = 0.0

    def connect(self) -> None:
        observation, self._info = self.env.reset(seed=self.seed)
        self._target = self.env.commanded_qpos()  # the home pose the servos hold after reset
        self._observation = self._stamped(observation)
        self._unread_reset = True

    def observe(self) -> dict:
        if not self._unread_reset:  # the physics of the period since the last observation
            measured_at = time.monotonic()
            observation, _, _, _, self._info = self.env.step(self._target)
            self._max_penetration_mm = max(self._max_penetration_mm, self._info["penetration_outside_trocar_mm"])
            self._observation = self._stamped(observation, measured_at)
        self._unread_reset = False
        return self._observation

    def send_joints(self, q: np.ndarray) -> None:
        self._target = np.asarray(q, dtype=np.float64)

    def stop(self, reason: str) -> None:
        self._target = self.env.commanded_qpos()  # hold

    def close(self) -> None:
        self.env.close()

    def facts(self) -> dict:
        params = self.env.scene_params
        return {
            "sim_seed": self.seed, "width": self.width, "height": self.height,
            "phantom_dx_mm": params.get("phantom_dx", math.nan) * 1000,
            "phantom_dy_mm": params.get("phantom_dy", math.nan) * 1000,
            "final_tip_error_mm": self._info.get("tip_error_mm", math.nan),
            "final_axis_error_deg": self._info.get("axis_error_deg", math.nan),
            "max_penetration_outside_trocar_mm": self._max_penetration_mm,
        }

    @staticmethod
    def _stamped(observation: dict, measured_at: float | None = None) -> dict:
        """The state is the arm's at the tick (the end of the simulated period); the frames arrive once rendered."""
        rendered_at = time.monotonic()
        return {**observation, "time": measured_at or rendered_at,
                "image_times": {camera: rendered_at for camera in observation["images"]}}
