"""The geometry benchmarks/bench_near_target_localization.py reports the localizer's errors in, on a rendered pose:
the entry in the world, the tool camera's ray, and the known height taken out."""

import numpy as np
import torch

from benchmarks.bench_near_target_localization import entry_errors, height_known, tool_camera_rays
from insertion_vla.vision_pretrain import NEAR_RENDER_BASE_SEED, RenderSettings, close_render_env, render_near_pose
from sim.kinematics import matrix_from_euler_xyz
from sim.randomization import DomainRandomization, PhantomPlacement


def test_an_offset_moved_along_the_tool_cameras_ray_is_an_error_along_it_only():
    settings = RenderSettings(phantom=PhantomPlacement(x_range=0.01, y_min=-0.01, y_max=0.01, yaw_range_deg=5),
                              dr=DomainRandomization(), width=64, height=48)
    pose = render_near_pose((NEAR_RENDER_BASE_SEED, 0, settings))
    close_render_env()
    exact = entry_errors(torch.from_numpy(pose.offset_mm)[None], [pose])[0]
    np.testing.assert_allclose(exact, 0.0, atol=1e-3)  # mm: the rendered offset puts the entry where it is
    ray = tool_camera_rays([pose])[0]
    rotation = matrix_from_euler_xyz(pose.ee_pose[3:])
    for direction, along in ((ray, 1.0), (np.cross(ray, [0.0, 0.0, 1.0]), 0.0)):
        direction = direction / np.linalg.norm(direction)
        moved = pose.offset_mm + (rotation.T @ direction).astype(np.float32)  # 1 mm in the world, in the tip frame
        error = entry_errors(torch.from_numpy(moved)[None], [pose])[0]
        np.testing.assert_allclose(np.linalg.norm(error), 1.0, atol=1e-3)
        np.testing.assert_allclose(error @ ray, along, atol=1e-3)
    # The camera looks down at the trocar: its ray has a height, which is what lets the known height help.
    assert abs(ray[2]) > 0.3


def test_the_known_height_takes_out_the_plane_error_that_goes_with_it_and_no_other():
    rng = np.random.default_rng(0)
    height = rng.normal(size=400)
    independent = rng.normal(scale=0.1, size=(400, 2))
    correlated = np.column_stack([independent + np.outer(height, [0.5, -1.5]), height])
    np.testing.assert_allclose(height_known(correlated), independent, atol=0.03)
    unrelated = np.column_stack([independent, height])  # control: nothing goes with the height, nothing changes
    np.testing.assert_allclose(height_known(unrelated), independent, atol=0.03)
