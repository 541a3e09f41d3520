"""Scripted expert: damped-least-squares IK on the needle-tip position and the needle axis.

Phases (times in seconds from the episode start):
  align   minimum-jerk from the start pose to a stand-off point on the trocar axis, position and needle
          axis interpolated together (the axis turns about the shortest rotation);
  insert  minimum-jerk along the trocar axis from the stand-off to the depth target (27.5 mm past the entry);
  hold    stay at the target (the environment terminates after the success condition held for 1 s).

The expert plans from privileged state (the trocar sites and the commanded joints at reset) and outputs
commanded joint positions; it ignores the noisy measurements in the observation. Each command is solved from the
joints the arm was last commanded to, its own last command unless `act(from_q=...)` says otherwise: so from any
nearby state (a perturbed command, a policy that handed over) it steers back onto the path at the current time.
"""

from dataclasses import dataclass

import mujoco
import numpy as np

from sim.kinematics import JOINT_LIMITS, matrix_from_rotvec, rotation_between
from sim.scene import TIP_SITE


def minimum_jerk(fraction: float) -> float:
    """Minimum-jerk profile s(0) = 0, s(1) = 1, zero velocity and acceleration at both ends."""
    x = float(np.clip(fraction, 0.0, 1.0))
    return x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


class DampedLeastSquaresIK:
    """Iterative IK for the tip position (3) and the needle axis direction (2); the roll about the needle
    is left free, and the damped minimum-norm step resolves it."""

    def __init__(self, model: mujoco.MjModel, damping: float = 1e-3, axis_weight: float = 0.05):
        self.model = model
        self.data = mujoco.MjData(model)  # private: planning never touches the simulated state
        self.site_id = model.site(TIP_SITE).id
        self.damping = damping
        self.axis_weight = axis_weight  # m per rad: makes 1 mrad of axis error cost as much as 0.05 mm of tip error
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def tip_pose(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tip position and needle axis (unit, pointing to the tip) for joint positions q."""
        self.data.qpos[:] = q
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site_id].copy(), self.data.site_xmat[self.site_id].reshape(3, 3)[:, 2].copy()

    def solve(
        self,
        q_start: np.ndarray,
        position: np.ndarray,
        axis: np.ndarray,
        max_iterations: int = 100,
        position_tolerance: float = 1e-6,
        axis_tolerance: float = 1e-5,
    ) -> np.ndarray:
        q = np.array(q_start, dtype=np.float64)
        for _ in range(max_iterations):
            tip, needle_axis = self.tip_pose(q)
            position_error = position - tip
            axis_error = np.cross(needle_axis, axis)  # rotation (small angle) taking the needle onto the axis
            if np.linalg.norm(position_error) < position_tolerance and np.linalg.norm(axis_error) < axis_tolerance:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site_id)
            # Only rotations perpendicular to the needle change its axis: project the roll out.
            perpendicular = np.eye(3) - np.outer(needle_axis, needle_axis)
            jacobian = np.vstack([self._jacp, self.axis_weight * perpendicular @ self._jacr])
            error = np.concatenate([position_error, self.axis_weight * axis_error])
            step = jacobian.T @ np.linalg.solve(jacobian @ jacobian.T + self.damping**2 * np.eye(6), error)
            q = np.clip(q + step, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        return q


@dataclass(frozen=True)
class ExpertPlan:
    """Cartesian path of one episode, from the start pose and the trocar."""

    start_position: np.ndarray
    start_axis: np.ndarray
    standoff_position: np.ndarray
    target_position: np.ndarray
    trocar_axis: np.ndarray
    align_seconds: float
    insert_seconds: float

    def waypoint(self, time_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Desired tip position and needle axis at time_s."""
        if time_s <= self.align_seconds:
            s = minimum_jerk(time_s / self.align_seconds)
            turn = rotation_between(self.start_axis, self.trocar_axis)
            position = self.start_position + s * (self.standoff_position - self.start_position)
            return position, matrix_from_rotvec(s * turn) @ self.start_axis
        s = minimum_jerk((time_s - self.align_seconds) / self.insert_seconds)
        return self.standoff_position + s * (self.target_position - self.standoff_position), self.trocar_axis


class ScriptedExpert:
    """Policy-like expert: `reset(env)` after `env.reset(...)`, then `act(obs)` once per env step."""

    def __init__(
        self,
        align_seconds: float = 3.5,
        insert_seconds: float = 3.0,
        standoff: float = 0.02,
        control_hz: float = 15.0,
    ):
        self.align_seconds = align_seconds
        self.insert_seconds = insert_seconds
        self.standoff = standoff  # m before the entry site, on the trocar axis
        self.control_hz = control_hz
        self._ik: DampedLeastSquaresIK | None = None
        self._plan: ExpertPlan | None = None
        self._q = np.zeros(6)
        self._step = 0

    @property
    def duration_seconds(self) -> float:
        """Time at which the commanded path reaches the target (the hold follows)."""
        return self.align_seconds + self.insert_seconds

    def reset(self, env) -> None:
        env = env.unwrapped
        if self._ik is None or self._ik.model is not env.model:
            self._ik = DampedLeastSquaresIK(env.model)
        entry, target, trocar_axis = env.trocar_target()
        self._q = env.commanded_qpos()
        start_position, start_axis = self._ik.tip_pose(self._q)
        self._plan = ExpertPlan(
            start_position=start_position,
            start_axis=start_axis,
            standoff_position=entry - self.standoff * trocar_axis,
            target_position=target,
            trocar_axis=trocar_axis,
            align_seconds=self.align_seconds,
            insert_seconds=self.insert_seconds,
        )
        self._step = 0

    def act(self, obs=None, from_q: np.ndarray | None = None) -> np.ndarray:
        """Joint command (6,) in rad, float32: where the arm should be at the next frame.

        from_q: the joints actually commanded last (e.g. the expert's command plus injected noise); the IK starts
        there, so the command is the correction from that state. Default: the expert's own last command."""
        if from_q is not None:
            self._q = np.asarray(from_q, dtype=np.float64)
        self._step += 1
        position, axis = self._waypoint("act")
        self._q = self._ik.solve(self._q, position, axis)
        return self._q.astype(np.float32)

    @property
    def on_approach(self) -> bool:
        """Whether the command `act` just returned is on the way to the stand-off point (the align phase)."""
        return self._step / self.control_hz <= self.align_seconds

    def tip_before_entry_m(self) -> float:
        """How far before the entry site, along the trocar axis, the command `act` just returned puts the needle tip
        (m; negative past the entry)."""
        position, _ = self._waypoint("tip_before_entry_m")
        entry = self._plan.standoff_position + self.standoff * self._plan.trocar_axis
        return float((entry - position) @ self._plan.trocar_axis)

    def offset_command(self, tip_offset: np.ndarray) -> np.ndarray:
        """The command `act` just returned, solved again with the needle tip moved by tip_offset (m, world frame),
        the needle axis unchanged: a deviation from the path that lasts as long as the offset does (sim.collect
        --drift_mm). The expert's own state is untouched."""
        position, axis = self._waypoint("offset_command")
        return self._ik.solve(self._q, position + np.asarray(tip_offset, dtype=np.float64), axis).astype(np.float32)

    def _waypoint(self, caller: str) -> tuple[np.ndarray, np.ndarray]:
        if self._plan is None:
            raise RuntimeError(f"ScriptedExpert.{caller} called before ScriptedExpert.reset(env)")
        return self._plan.waypoint(self._step / self.control_hz)
