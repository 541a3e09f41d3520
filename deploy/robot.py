"""What the control loop needs from a robot, whichever it is (sim_robot.SimRobot, meca500.Meca500Robot).

    robot.connect()                  ready to move: activated, homed, feedback and cameras running
    observation = robot.observe()    the latest measurements (below); raises RobotFault
    robot.send_joints(q)             one joint target (6,) rad, to be reached within one control period
    robot.stop(reason)               motion paused and cleared, the arm holding where it is (idempotent)
    robot.close()                    feedback and cameras closed, disconnected

An observation is a dict in the simulator's terms (what evaluation.policy_io.observation_batch and
sim.recorder.EpisodeRecorder read), with the times of its parts:
    images       {camera: uint8 (H, W, 3) RGB}
    image_times  {camera: time.monotonic() seconds when that frame was captured}
    qpos         float32 (6,): measured joint positions, rad
    ee_pose      float32 (6,): needle-tip x, y, z (m) and mobile XYZ Euler angles rx, ry, rz (rad) in the base
                 frame, sim/env.py's convention (the Meca500's own)
    time         time.monotonic() seconds when qpos and ee_pose were measured
"""

from typing import Protocol

import numpy as np


class RobotFault(Exception):
    """The robot reported an error, stopped sending feedback, or refused a command: the run stops."""


class Robot(Protocol):
    name: str  # "sim" or "meca500", recorded with every episode
    cameras: tuple[str, ...]  # camera names, as the episode files name them (dataset.cameras' keys)

    def connect(self) -> None: ...

    def observe(self) -> dict: ...

    def send_joints(self, q: np.ndarray) -> None: ...

    def stop(self, reason: str) -> None: ...

    def close(self) -> None: ...

    def facts(self) -> dict:
        """What the run report and the episode's attributes should say about this robot (scene seed, address, ...)."""
        ...
