"""The safety checks: before moving (the policy's layout against the robot's, the start pose), on every
observation (stale camera frames, non-finite feedback) and on every command before it is sent.

A command is checked, in this order, for
  non-finite values   always a stop (there is nothing to clip to);
  joint limits        sim/kinematics.py JOINT_LIMITS;            clip: onto the limits
  joint step          at most max_joint_step rad per tick from the previous command (a velocity limit);
                      clip: the whole step scaled down, so that the arm keeps the direction and moves slower;
  workspace           the needle tip, by the simulator's kinematics of the command, inside the box;
                      clip: the previous command is held (the arm does not move this tick).
With on_violation "stop" any violation stops the run instead. Each violation says which check, joint and values.
"""

from dataclasses import dataclass, field

import numpy as np

from deploy.tool import tip_pose
from episode_format.errors import UserError
from evaluation.policy_io import PolicyInputs, policy_inputs
from insertion_vla.episodes import keys_from_config
from sim.kinematics import JOINT_LIMITS

# The needle tip's box (m, base frame) around the simulated scene: the phantom's whole placement range with the
# expert's approach and insertion paths, plus margin (docs/deployment.md: measure your own for the real setup).
DEFAULT_WORKSPACE = ((-0.15, 0.15), (0.10, 0.33), (0.08, 0.26))
DEFAULT_MAX_JOINT_SPEED_DEG_S = 40.0  # the scripted expert's fastest joint moves about 32 deg/s
STALE_FRAME_TICKS = 2.0  # a camera frame older than this many control periods stops the run


class SafetyStop(Exception):
    """A check failed and the run must stop; the message says which check and why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class SafetyLimits:
    max_joint_step: float  # rad per tick
    workspace: np.ndarray = field(default_factory=lambda: np.array(DEFAULT_WORKSPACE))  # (3, 2) m: x, y, z ranges
    joint_limits: np.ndarray = field(default_factory=lambda: JOINT_LIMITS.copy())  # (6, 2) rad
    on_violation: str = "stop"  # or "clip"

    def __post_init__(self):
        if self.on_violation not in ("stop", "clip"):
            raise ValueError(f"on_violation must be 'stop' or 'clip', got {self.on_violation!r}")
        if not self.max_joint_step > 0:
            raise UserError(f"the joint speed limit must be > 0, got {np.degrees(self.max_joint_step)} deg per tick")
        if np.asarray(self.workspace).shape != (3, 2) or np.any(self.workspace[:, 0] >= self.workspace[:, 1]):
            raise UserError(f"--workspace must be XMIN XMAX YMIN YMAX ZMIN ZMAX with each min < max, got "
                            f"{np.asarray(self.workspace).ravel().tolist()}")


@dataclass(frozen=True)
class Violation:
    kind: str  # joint_limit, joint_step, workspace
    detail: str
    response: str  # clipped, held


def check_command(command: np.ndarray, previous: np.ndarray, limits: SafetyLimits) -> tuple[np.ndarray, list]:
    """The command to send (clipped where allowed) and the violations found; SafetyStop when it must not be sent."""
    command = np.asarray(command, dtype=np.float64)
    if command.shape != (6,) or not np.all(np.isfinite(command)):
        raise SafetyStop("non_finite", f"the policy's command {command.tolist()} is not 6 finite joint positions")
    violations = []

    low, high = limits.joint_limits[:, 0], limits.joint_limits[:, 1]
    outside = np.flatnonzero((command < low) | (command > high))
    if len(outside):
        j = outside[0]
        detail = (f"joint {j + 1} at {np.degrees(command[j]):.2f} deg is outside its limits "
                  f"[{np.degrees(low[j]):.1f}, {np.degrees(high[j]):.1f}] deg"
                  + (f" ({len(outside)} joints outside)" if len(outside) > 1 else ""))
        command = _violated(limits, violations, "joint_limit", detail, np.clip(command, low, high), "clipped")

    step = command - previous
    largest = int(np.argmax(np.abs(step)))
    if abs(step[largest]) > limits.max_joint_step:
        detail = (f"joint {largest + 1} would move {np.degrees(step[largest]):+.2f} deg in one tick, more than "
                  f"{np.degrees(limits.max_joint_step):.2f} deg (the speed limit)")
        scaled = previous + step * (limits.max_joint_step / abs(step[largest]))
        command = _violated(limits, violations, "joint_step", detail, scaled, "clipped")

    tip = tip_pose(command)[:3, 3]
    box = limits.workspace
    if outside_workspace(tip, box):
        axis = int(np.argmax(np.maximum(box[:, 0] - tip, tip - box[:, 1])))
        detail = (f"the needle tip would be at {np.round(tip * 1000, 1).tolist()} mm, {'xyz'[axis]} outside the "
                  f"workspace [{box[axis, 0] * 1000:.0f}, {box[axis, 1] * 1000:.0f}] mm")
        command = _violated(limits, violations, "workspace", detail, np.array(previous, dtype=np.float64), "held")
    return command, violations


def outside_workspace(tip: np.ndarray, box: np.ndarray) -> bool:
    """The tip (3,) outside the box (3, 2 rows of min, max), m: the one workspace rule of commands and the start."""
    return bool(np.any(tip < box[:, 0]) or np.any(tip > box[:, 1]))


def _violated(limits: SafetyLimits, violations: list, kind: str, detail: str, corrected: np.ndarray,
              response: str) -> np.ndarray:
    if limits.on_violation == "stop":
        raise SafetyStop(kind, detail)
    violations.append(Violation(kind, detail, response))
    return corrected


def check_observation(observation: dict, now: float, period: float, cameras: tuple) -> None:
    """SafetyStop on a camera frame older than STALE_FRAME_TICKS periods, or non-finite feedback."""
    for camera in cameras:
        age = now - observation["image_times"][camera]
        if age > STALE_FRAME_TICKS * period:
            raise SafetyStop("stale_camera", f"camera {camera!r}: the newest frame is {age:.3f} s old, more than "
                                             f"{STALE_FRAME_TICKS:g} ticks ({STALE_FRAME_TICKS * period:.3f} s)")
    for key in ("qpos", "ee_pose"):
        if not np.all(np.isfinite(observation[key])):
            raise SafetyStop("feedback", f"the robot's {key} is not finite: {np.asarray(observation[key]).tolist()}")


def check_start(observation: dict, limits: SafetyLimits) -> None:
    """SafetyStop before the first command when the needle tip is outside the workspace (nothing could be held)."""
    tip = tip_pose(observation["qpos"])[:3, 3]
    box = limits.workspace
    if outside_workspace(tip, box):
        raise SafetyStop("workspace", f"at the start, the needle tip is at {np.round(tip * 1000, 1).tolist()} mm, "
                                      f"outside the workspace {np.round(box * 1000).astype(int).tolist()} mm (x, y, z "
                                      "ranges): move the arm into it, or set --workspace to your setup's box")


def check_layout(policy, dataset_cfg: dict, robot, jpeg_quality: int) -> PolicyInputs:
    """Refuse to move unless the policy's inputs and outputs are what this robot has: its cameras (by the training
    config's dataset.cameras, with advice for this robot), then the evaluator's checks of the state (qpos /
    ee_pose, its size) and of the action (6 joint positions). Returns the policy's inputs on this robot."""
    if dataset_cfg.get("placement_estimate") and robot.name == "meca500":
        raise UserError(
            f"the policy's state ends with the placement estimate of {dataset_cfg['placement_estimate']} "
            "(dataset.placement_estimate), a localizer trained on rendered frames of the simulated phantom: on the "
            "real robot its estimate means nothing, and the arm would go where it points. Deploy a policy trained "
            "without it (dataset.placement_estimate: null), or try this one on --robot sim.")
    if dataset_cfg.get("true_placement"):
        raise UserError("the policy's state ends with the simulator's true placement of the phantom "
                        "(dataset.true_placement), which no robot can give it: such a policy measures what a perfect "
                        "localizer would allow, in evaluate_smolvla_sim.py. Deploy a policy trained without it.")
    keys = keys_from_config(dataset_cfg)
    advice = ("name the cameras as the training episodes did: --cameras \"{" +
              ", ".join(f"{name}: DEVICE" for name in keys.cameras) + "}\"" if robot.name == "meca500" else
              "pass --config with the training config whose dataset.cameras names the simulator's cameras")
    return policy_inputs(policy, dataset_cfg, jpeg_quality, available_cameras=robot.cameras,
                         source=f"the {robot.name} robot", camera_advice=advice)
