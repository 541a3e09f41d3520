"""Meca500 kinematics (modified DH, Craig convention) and the rotation helpers the scene and expert share.

Frame i is reached from frame i-1 by Rx(alpha_{i-1}) Tx(a_{i-1}) Rz(theta_i + offset_i) Tz(d_i).
The published Meca500 table, in mm: d1 = 135; a2 = 135 (J2 offset -90 deg); a3 = 38, d4 = 120;
d6 = 70 (J6 offset 180 deg). At q = 0 the flange sits at (190, 0, 308) mm with its z axis along +x.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DHLink:
    alpha: float  # rad, twist about the previous x axis
    a: float  # m, length along the previous x axis
    d: float  # m, offset along this joint's z axis
    offset: float  # rad, added to the joint angle


MECA500_DH = (
    DHLink(alpha=0.0, a=0.0, d=0.135, offset=0.0),
    DHLink(alpha=-np.pi / 2, a=0.0, d=0.0, offset=-np.pi / 2),
    DHLink(alpha=0.0, a=0.135, d=0.0, offset=0.0),
    DHLink(alpha=-np.pi / 2, a=0.038, d=0.120, offset=0.0),
    DHLink(alpha=np.pi / 2, a=0.0, d=0.0, offset=0.0),
    DHLink(alpha=-np.pi / 2, a=0.0, d=0.070, offset=np.pi),
)

JOINT_LIMITS_DEG = np.array(
    [[-175, 175], [-70, 90], [-135, 70], [-170, 170], [-115, 115], [-180, 180]], dtype=np.float64
)
JOINT_LIMITS = np.deg2rad(JOINT_LIMITS_DEG)


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def dh_transform(link: DHLink, q: float) -> np.ndarray:
    """Homogeneous transform of frame i in frame i-1 for joint angle q."""
    t = np.eye(4)
    t[:3, :3] = rot_x(link.alpha) @ rot_z(q + link.offset)
    t[:3, 3] = joint_origin(link)
    return t


def joint_origin(link: DHLink) -> np.ndarray:
    """Origin of frame i in frame i-1 (independent of the joint angle: Rz(q) and Tz(d) commute)."""
    return np.array([link.a, 0.0, 0.0]) + rot_x(link.alpha) @ np.array([0.0, 0.0, link.d])


def joint_frame_quat(link: DHLink) -> np.ndarray:
    """Orientation of frame i in frame i-1 at joint angle 0, as a (w, x, y, z) quaternion."""
    return quat_from_matrix(rot_x(link.alpha) @ rot_z(link.offset))


def flange_pose(q: np.ndarray) -> np.ndarray:
    """4x4 pose of the flange frame in the robot base frame (forward kinematics from the DH table)."""
    t = np.eye(4)
    for link, qi in zip(MECA500_DH, q):
        t = t @ dh_transform(link, qi)
    return t


# Quaternions are (w, x, y, z), MuJoCo's order.


def quat_from_matrix(r: np.ndarray) -> np.ndarray:
    return quat_from_rotvec(rotvec_from_matrix(r))


def quat_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    axis = np.asarray(rotvec) / angle
    return np.concatenate([[np.cos(angle / 2)], np.sin(angle / 2) * axis])


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


def rotvec_from_matrix(r: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, rad) of a rotation matrix; angle in [0, pi]."""
    cos_angle = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos_angle)
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:
        # Near 180 deg the antisymmetric part vanishes: take the axis from the symmetric part.
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        k = int(np.argmax(axis))
        signs = np.sign(r[k] + r[:, k])
        signs[k] = 1.0
        return angle * axis * signs
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return angle * axis


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation vector turning unit vector a onto unit vector b."""
    axis = np.cross(a, b)
    s = np.linalg.norm(axis)
    c = float(np.dot(a, b))
    if s < 1e-12:
        if c > 0:
            return np.zeros(3)
        perpendicular = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        return np.pi * perpendicular / np.linalg.norm(perpendicular)
    return axis / s * np.arctan2(s, c)


def matrix_from_rotvec(rotvec: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.eye(3)
    k = np.asarray(rotvec) / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def euler_xyz_from_matrix(r: np.ndarray) -> np.ndarray:
    """Mobile (intrinsic) XYZ Euler angles (a, b, c) with R = Rx(a) Ry(b) Rz(c): the Meca500's own
    convention for poses. Singular only when the frame's z axis lies along the base x axis (|b| = 90 deg)."""
    a = np.arctan2(-r[1, 2], r[2, 2])
    b = np.arcsin(np.clip(r[0, 2], -1.0, 1.0))
    c = np.arctan2(-r[0, 1], r[0, 0])
    return np.array([a, b, c])


def matrix_from_euler_xyz(angles) -> np.ndarray:
    """R = Rx(a) Ry(b) Rz(c): the inverse of euler_xyz_from_matrix (an ee_pose's rotation)."""
    a, b, c = angles
    return rot_x(a) @ rot_y(b) @ rot_z(c)


def look_at_xyaxes(position: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """MuJoCo camera x and y axes (6 numbers) for a camera at `position` looking at `target`.
    MuJoCo cameras look along their -z axis with +y up in the image."""
    backward = np.asarray(position, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    backward /= np.linalg.norm(backward)
    x_axis = np.cross(up, backward)
    x_axis /= np.linalg.norm(x_axis)
    y_axis = np.cross(backward, x_axis)
    return np.concatenate([x_axis, y_axis])
