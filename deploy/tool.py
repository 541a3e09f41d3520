"""The needle on the flange: the tool frame at its tip (sim/scene.py's, which the Meca500's tool frame is set to)
and the tip pose for a joint set, from the simulator's kinematics (sim/kinematics.py)."""

import numpy as np

from sim.kinematics import euler_xyz_from_matrix, flange_pose, matrix_from_rotvec, rotvec_from_matrix
from sim.scene import TIP_FRAME_QUAT, TOOL_LENGTH


def _tip_in_flange() -> np.ndarray:
    w, *xyz = TIP_FRAME_QUAT  # (w, x, y, z): rotation vector = axis * angle
    angle = 2.0 * np.arctan2(np.linalg.norm(xyz), w)
    axis = np.asarray(xyz) / max(np.linalg.norm(xyz), 1e-12)
    transform = np.eye(4)
    transform[:3, :3] = matrix_from_rotvec(axis * angle)
    transform[:3, 3] = (0.0, 0.0, TOOL_LENGTH)
    return transform


TIP_IN_FLANGE = _tip_in_flange()  # 4x4: TOOL_LENGTH along the flange's z axis, turned -90 deg about it


def tip_pose(q: np.ndarray) -> np.ndarray:
    """4x4 pose of the needle-tip frame in the robot base frame for joint positions q (rad)."""
    return flange_pose(np.asarray(q, dtype=np.float64)) @ TIP_IN_FLANGE


def ee_pose_from_joints(q: np.ndarray) -> np.ndarray:
    """The env's ee_pose (x, y, z in m, mobile XYZ Euler angles in rad) of the tip for joint positions q."""
    pose = tip_pose(q)
    return np.concatenate([pose[:3, 3], euler_xyz_from_matrix(pose[:3, :3])])


def rotation_angle_between(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation taking rotation matrix a to b."""
    return float(np.linalg.norm(rotvec_from_matrix(a.T @ b)))
