"""The MuJoCo robot follows the Meca500's published modified-DH table, limits and conventions."""

import mujoco
import numpy as np
import pytest

from sim.kinematics import (
    JOINT_LIMITS,
    JOINT_LIMITS_DEG,
    euler_xyz_from_matrix,
    flange_pose,
    matrix_from_euler_xyz,
    matrix_from_rotvec,
    quat_from_rotvec,
    rot_x,
    rotvec_from_matrix,
)
from sim.scene import JOINT_NAMES, TIP_SITE, TOOL_LENGTH, scene_xml


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_string(scene_xml(64, 48))


def test_zero_pose_flange_is_where_the_meca500_manual_puts_it():
    pose = flange_pose(np.zeros(6))
    np.testing.assert_allclose(pose[:3, 3], [0.190, 0.0, 0.308], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 2], [1.0, 0.0, 0.0], atol=1e-12)  # tool axis along base +x


def test_mujoco_chain_matches_the_dh_table(model):
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        data.qpos[:] = q
        mujoco.mj_kinematics(model, data)
        pose = flange_pose(q)
        np.testing.assert_allclose(data.body("link6").xpos, pose[:3, 3], atol=1e-9)
        np.testing.assert_allclose(data.body("link6").xmat.reshape(3, 3), pose[:3, :3], atol=1e-9)
        tip = data.site(TIP_SITE)
        np.testing.assert_allclose(tip.xpos, pose[:3, 3] + TOOL_LENGTH * pose[:3, 2], atol=1e-9)
        np.testing.assert_allclose(tip.xmat.reshape(3, 3)[:, 2], pose[:3, 2], atol=1e-9)


def test_joint_limits_and_servo_ranges(model):
    for i, name in enumerate(JOINT_NAMES):
        joint = model.joint(name)
        np.testing.assert_allclose(np.degrees(joint.range), JOINT_LIMITS_DEG[i], atol=1e-4)
        np.testing.assert_allclose(np.degrees(model.actuator_ctrlrange[i]), JOINT_LIMITS_DEG[i], atol=1e-4)
    links = [model.body(f"link{i}").id for i in range(1, 7)]
    assert np.all(model.body_gravcomp[links] == 1.0)


def test_shadow_map_size_is_set_explicitly(model):
    assert model.vis.quality.shadowsize in (1024, 2048)


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        rotvec = rng.normal(size=3)
        rotvec *= rng.uniform(0, np.pi - 1e-3) / np.linalg.norm(rotvec)
        matrix = matrix_from_rotvec(rotvec)
        np.testing.assert_allclose(rotvec_from_matrix(matrix), rotvec, atol=1e-9)
        quat = quat_from_rotvec(rotvec)
        expected = np.empty(9)
        mujoco.mju_quat2Mat(expected, quat)
        np.testing.assert_allclose(expected.reshape(3, 3), matrix, atol=1e-12)
        a, b, c = rng.uniform(-3, 3), rng.uniform(-1.5, 1.5), rng.uniform(-3, 3)
        rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rot_z = matrix_from_rotvec([0, 0, c])
        np.testing.assert_allclose(euler_xyz_from_matrix(rot_x(a) @ rot_y @ rot_z), [a, b, c], atol=1e-9)
        np.testing.assert_allclose(matrix_from_euler_xyz([a, b, c]), rot_x(a) @ rot_y @ rot_z, atol=1e-12)
