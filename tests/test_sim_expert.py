"""The scripted expert inserts the needle: fixed seeds with all DR on, and every corner of the placement ranges."""

import itertools

import mujoco
import numpy as np
import pytest

from sim.env import NeedleInsertionEnv
from sim.expert import DampedLeastSquaresIK, ExpertPlan, ScriptedExpert, minimum_jerk
from sim.kinematics import JOINT_LIMITS, euler_xyz_from_matrix
from sim.randomization import PhantomPlacement
from sim.scene import HOME_QPOS_DEG


def test_minimum_jerk_profile():
    assert minimum_jerk(0.0) == 0.0 and minimum_jerk(1.0) == 1.0 and minimum_jerk(0.5) == pytest.approx(0.5)
    x = np.linspace(0, 1, 101)
    s = np.array([minimum_jerk(v) for v in x])
    assert np.all(np.diff(s) >= 0)
    assert minimum_jerk(-1.0) == 0.0 and minimum_jerk(2.0) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expert_succeeds_on_fixed_seeds_with_all_dr_on(seed):
    # Rendering does not affect the physics (tests/test_sim_env.py), so this runs without images.
    env = NeedleInsertionEnv(render_images=False)
    expert = ScriptedExpert()
    observation, _ = env.reset(seed=seed)
    expert.reset(env)
    poses, tracking = [observation["ee_pose"]], []
    while True:
        observation, _, terminated, truncated, info = env.step(expert.act(observation))
        poses.append(observation["ee_pose"])
        tracking.append(info["tracking_error_mm"])
        if terminated or truncated:
            break
    assert terminated and info["success"] and not truncated
    assert info["tip_error_mm"] < 1.0 and info["axis_error_deg"] < 2.0
    assert len(poses) - 1 >= 60  # several seconds at 15 Hz
    assert max(tracking) < 1.0  # the arm follows the commands to < 1 mm
    jumps = np.abs(np.diff(np.array(poses), axis=0))
    assert jumps[:, :3].max() < 0.01 and jumps[:, 3:].max() < 0.1  # smooth, no Euler-angle wrap


def test_expert_reaches_every_corner_of_the_placement_ranges():
    """Kinematic check of the whole path (IK only) at the extreme phantom positions and yaws."""
    env = NeedleInsertionEnv(render_images=False, dr=None)
    ik = DampedLeastSquaresIK(env.model)
    placement = PhantomPlacement()
    expert = ScriptedExpert()
    env.reset(seed=0)
    params = env.scene_params
    corners = itertools.product(
        (-placement.x_range, placement.x_range),
        (placement.y_min, placement.y_max),
        np.deg2rad((-placement.yaw_range_deg, placement.yaw_range_deg)),
    )
    for dx, dy, yaw in corners:
        env.randomizer.apply(env.model, {**params, "phantom_dx": dx, "phantom_dy": dy, "phantom_yaw": yaw})
        mujoco.mj_kinematics(env.model, env.data)
        entry, target, axis = env.trocar_target()
        q = np.deg2rad(np.array(HOME_QPOS_DEG))
        start, start_axis = ik.tip_pose(q)
        plan = ExpertPlan(
            start, start_axis, entry - expert.standoff * axis, target, axis, expert.align_seconds, expert.insert_seconds
        )
        for k in range(1, int(expert.duration_seconds * 15) + 1):
            position, direction = plan.waypoint(k / 15)
            new_q = ik.solve(q, position, direction)
            assert np.abs(new_q - q).max() < np.deg2rad(5), f"joint jump at corner {(dx, dy, yaw)}, frame {k}"
            q = new_q
            tip, needle = ik.tip_pose(q)
            assert np.linalg.norm(tip - position) < 1e-4, f"waypoint unreachable at corner {(dx, dy, yaw)}"
            # The ee_pose Euler angles stay clear of the +/-180 deg wrap and of the ry = +/-90 deg singularity.
            angles = np.degrees(euler_xyz_from_matrix(ik.data.site_xmat[ik.site_id].reshape(3, 3)))
            assert np.all(180 - np.abs(angles) > 25) and abs(angles[1]) < 45, f"ee_pose angles {angles}"
        assert np.all(q > JOINT_LIMITS[:, 0] + np.deg2rad(5)) and np.all(q < JOINT_LIMITS[:, 1] - np.deg2rad(5))
        assert np.linalg.norm(tip - target) < 1e-5 and np.degrees(np.arccos(min(1.0, needle @ axis))) < 0.01


def test_act_before_reset_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before ScriptedExpert.reset"):
        ScriptedExpert().act(None)
