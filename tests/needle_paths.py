"""A deliberately wrong insertion for the safety tests, driven through sim/'s own IK: the needle pushed radially
through the eye wall beside the trocar to a known depth and pulled out again, then (optionally) sim's scripted
expert inserts it through the trocar, so that the episode still meets the env's success rule.
"""

import numpy as np

from sim.env import CONTROL_HZ
from sim.expert import DampedLeastSquaresIK, ScriptedExpert, minimum_jerk
from sim.kinematics import matrix_from_rotvec, rotation_between


def minimum_jerk_move(start, end, seconds: float) -> list:
    """(tip position, needle axis) per control step from `start` to `end`, both (position, axis)."""
    steps = int(round(seconds * CONTROL_HZ))
    turn = rotation_between(start[1], end[1])
    return [(start[0] + minimum_jerk(k / steps) * (end[0] - start[0]),
             matrix_from_rotvec(minimum_jerk(k / steps) * turn) @ start[1]) for k in range(1, steps + 1)]


class PokeBesideTheTrocar:
    """An evaluation driver (the interface of evaluation.drivers): the needle, along the eye's radius, goes
    `depth` m below the eye's surface at a wall point `offset` m from the trocar axis, sideways, holds there, comes
    out again; after that, with `then_expert`, the scripted expert takes over from where the arm is."""

    uses_images = False
    n_action_steps = 1
    queries = 0

    def __init__(self, offset: float = 0.003, depth: float = 0.002, then_expert: bool = True):
        self.offset, self.depth, self.then_expert = offset, depth, then_expert
        self.expert = ScriptedExpert()

    def reset(self, env, seed: int) -> None:
        self.env = env
        eye = env.eye_geometry()
        _, _, trocar_axis = env.trocar_target()
        outward = -trocar_axis
        up = np.array([0.0, 0.0, 1.0]) - outward[2] * outward  # turning about this moves the wall point sideways
        turn = up / np.linalg.norm(up) * np.arcsin(self.offset / eye.radius)
        normal = matrix_from_rotvec(turn) @ outward
        wall = eye.center + eye.radius * normal
        standoff, pushed = (wall + 0.02 * normal, -normal), (wall - self.depth * normal, -normal)
        self.ik = DampedLeastSquaresIK(env.model)
        self.q = env.commanded_qpos()
        start = self.ik.tip_pose(self.q)
        self.path = (minimum_jerk_move(start, standoff, 3.5) + minimum_jerk_move(standoff, pushed, 1.5)
                     + [pushed] * int(0.5 * CONTROL_HZ) + minimum_jerk_move(pushed, standoff, 1.5))
        self.step = 0

    def needs_images(self) -> bool:
        return False

    def act(self, observation: dict) -> np.ndarray:
        self.step += 1
        if self.step <= len(self.path):
            self.q = self.ik.solve(self.q, *self.path[self.step - 1])
            return self.q.astype(np.float32)
        if not self.then_expert:
            return self.q.astype(np.float32)
        if self.step == len(self.path) + 1:
            self.expert.reset(self.env)  # plans from the joints commanded now, beside the trocar
        return self.expert.act(observation)
