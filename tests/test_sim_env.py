"""The gymnasium environment: API, determinism for a seed, domain randomization ranges, servo tracking, the
needle's penetration of the eye beside the trocar."""

import cv2
import numpy as np
import pytest
from needle_paths import PokeBesideTheTrocar

from sim.env import NeedleInsertionEnv
from sim.expert import DampedLeastSquaresIK
from sim.kinematics import JOINT_LIMITS, matrix_from_euler_xyz
from sim.randomization import DomainRandomization, PhantomPlacement
from sim.safety import EyeGeometry, penetration_outside_trocar
from sim.scene import (
    CAMERA_NAMES,
    HOME_QPOS_DEG,
    INSERTION_DEPTH,
    MATERIALS,
    TEXTURED_MATERIALS,
    TIP_SITE,
    along_and_across,
    trocar_in_world,
)

WIDTH, HEIGHT = 64, 48


@pytest.fixture(scope="module")
def env():
    env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT)
    yield env
    env.close()


def run(env, seed, steps=4):
    """Reset with `seed` and apply a fixed joint motion; returns the observations."""
    observations = [env.reset(seed=seed)[0]]
    command = np.deg2rad(np.array(HOME_QPOS_DEG))
    for k in range(steps):
        command = command + np.deg2rad([1.0, -0.5, 0.5, 1.0, -1.0, 2.0])
        observations.append(env.step(command.astype(np.float32))[0])
    return observations


def assert_same(a, b):
    for camera in CAMERA_NAMES:
        np.testing.assert_array_equal(a["images"][camera], b["images"][camera])
    np.testing.assert_array_equal(a["qpos"], b["qpos"])
    np.testing.assert_array_equal(a["ee_pose"], b["ee_pose"])


def test_reset_and_step_follow_the_gymnasium_api(env):
    observation, info = env.reset(seed=3)
    assert set(observation) == {"images", "qpos", "ee_pose"}
    assert set(observation["images"]) == set(CAMERA_NAMES)
    for image in observation["images"].values():
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        assert image.std() > 5  # a rendered scene, not a blank frame
    assert observation["qpos"].shape == (6,) and observation["qpos"].dtype == np.float32
    assert observation["ee_pose"].shape == (6,) and observation["ee_pose"].dtype == np.float32
    assert env.observation_space.contains(observation)
    assert info["seed"] == 3 and info["success"] is False and info["tip_error_mm"] > 10

    observation, reward, terminated, truncated, info = env.step(env.commanded_qpos().astype(np.float32))
    assert env.observation_space.contains(observation)
    assert isinstance(reward, float) and terminated is False and truncated is False
    for key in ("success", "in_tolerance", "tip_error_mm", "axis_error_deg", "tracking_error_mm", "time_s",
                "penetration_outside_trocar_mm"):
        assert key in info
    assert info["time_s"] == pytest.approx(1 / 15)
    # Cameras see different things.
    images = observation["images"]
    assert not np.array_equal(images["side_camera"], images["top_camera"])


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 6)), np.array([0, 0, np.nan, 0, 0, 0])])
def test_bad_joint_command_is_a_clear_error(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="joint command must be 6 finite joint positions"):
        env.step(bad)


def test_same_seed_same_observations_even_after_other_episodes(env):
    first = run(env, seed=11)
    run(env, seed=12)  # a different episode in between must leave no trace
    again = run(env, seed=11)
    fresh_env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT)
    fresh = run(fresh_env, seed=11)
    fresh_env.close()
    for a, b, c in zip(first, again, fresh):
        assert_same(a, b)
        assert_same(a, c)
    other = run(env, seed=12)
    assert not np.array_equal(other[0]["images"]["side_camera"], first[0]["images"]["side_camera"])


def test_image_rendering_does_not_change_the_physics_or_noise():
    with_images = NeedleInsertionEnv(width=WIDTH, height=HEIGHT)
    without = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, render_images=False)
    for a, b in zip(run(with_images, seed=5), run(without, seed=5)):
        np.testing.assert_array_equal(a["qpos"], b["qpos"])
        np.testing.assert_array_equal(a["ee_pose"], b["ee_pose"])
        assert b["images"] == {}
    with_images.close()


def test_start_pose_is_home_or_drawn_within_the_range_from_the_seed(env):
    home = np.deg2rad(np.array(HOME_QPOS_DEG))
    varied = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, render_images=False, start_joint_range_deg=5)
    starts = []
    for seed in range(8):
        env.reset(seed=seed)
        np.testing.assert_array_equal(env.commanded_qpos(), home)  # the default: always home
        varied.reset(seed=seed)
        starts.append(varied.commanded_qpos())
        assert varied.scene_params == env.scene_params  # the start has its own stream: the scene is the seed's
    starts = np.degrees(np.array(starts) - home)
    assert np.abs(starts).max() <= 5 and starts.std(axis=0).min() > 1  # every joint varies, within +/-5 deg
    varied.reset(seed=3)
    np.testing.assert_array_equal(np.degrees(varied.commanded_qpos() - home), starts[3])  # reproducible
    with pytest.raises(ValueError, match="start_joint_range_deg"):
        NeedleInsertionEnv(width=WIDTH, height=HEIGHT, start_joint_range_deg=-1)
    varied.close()


def test_dr_values_stay_in_their_ranges_and_vary(env):
    dr, phantom = DomainRandomization(), PhantomPlacement()
    samples = [env.reset(seed=seed)[1]["scene_params"] for seed in range(8)]
    for params in samples:
        assert abs(params["phantom_dx"]) <= phantom.x_range
        assert phantom.y_min <= params["phantom_dy"] <= phantom.y_max
        assert abs(params["phantom_yaw"]) <= np.deg2rad(phantom.yaw_range_deg)
        for key, value in params.items():
            if key.endswith(("_dx", "_dy", "_dz")) and "light" in key:
                assert abs(value) <= dr.light_position
            elif key.endswith(("_dx", "_dy", "_dz")) and "camera" in key:
                assert abs(value) <= dr.camera_position
            elif "_rot" in key:
                pass  # checked as a vector below
            elif key.endswith(("_dr", "_dg", "_db", "_dspecular", "_dshininess")):
                assert abs(value) <= dr.color
            elif key.endswith("_damping_scale"):
                assert 1 - dr.damping <= value <= 1 + dr.damping
        for camera in CAMERA_NAMES:
            angle = np.linalg.norm([params[f"dr_{camera}_rot{a}"] for a in "xyz"])
            assert angle <= dr.camera_rotation + 1e-12
        assert params["dr_image_noise_std"] == dr.image_noise_std
        assert params["dr_qpos_noise_std"] == dr.qpos_noise_std
    for key in samples[0]:
        if key not in ("dr_image_noise_std", "dr_qpos_noise_std", "dr_from_images"):
            assert len({params[key] for params in samples}) > 1, f"{key} does not vary between episodes"
    # The sampled values are what the model holds, and the camera quaternions stay unit.
    assert np.allclose(np.linalg.norm(env.model.cam_quat, axis=1), 1.0, atol=1e-12)
    for material in MATERIALS:
        rgba = env.model.mat_rgba[env.model.material(material).id]
        assert np.all((0 <= rgba) & (rgba <= 1))


def test_without_dr_only_the_phantom_moves():
    env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=None)
    observations, params = [], []
    for seed in (1, 2):
        observation, info = env.reset(seed=seed)
        observations.append(observation)
        params.append(info["scene_params"])
        np.testing.assert_array_equal(observation["qpos"], np.deg2rad(HOME_QPOS_DEG).astype(np.float32))
    assert params[0]["phantom_dx"] != params[1]["phantom_dx"]
    for key in params[0]:
        if key.startswith("dr_") and not key.endswith(("_damping_scale", "_texture")):
            assert params[0][key] == params[1][key] == 0.0, key
        elif key.endswith("_damping_scale"):
            assert params[0][key] == 1.0
    # No image noise: a static scene renders identically on consecutive frames.
    command = env.commanded_qpos()
    first = env.step(command)[0]["images"]["side_camera"]
    second = env.step(command)[0]["images"]["side_camera"]
    np.testing.assert_array_equal(first, second)
    env.close()


def test_servos_track_a_joint_step_to_well_under_a_millimetre(env):
    env.reset(seed=0)
    target = env.commanded_qpos() + np.deg2rad([2.0, 2.0, -2.0, 3.0, 3.0, 3.0])  # about a 1 cm tip move
    errors = [env.step(target.astype(np.float32))[4]["tracking_error_mm"] for _ in range(5)]
    assert max(errors) < 1.0
    assert errors[-1] < 0.05


def test_place_arm_puts_the_arm_at_rest_where_the_ik_puts_the_tip(env):
    """A chosen pose to render: the observation's tip is the kinematics' for q, its images are of that pose (not of
    the start pose), and the arm stays there when commanded to it."""
    start = env.reset(seed=3)[0]
    q = env.commanded_qpos() + np.deg2rad([5.0, 5.0, -5.0, 5.0, 5.0, 5.0])
    placed = env.place_arm(q)
    tip, _ = DampedLeastSquaresIK(env.model).tip_pose(q)
    np.testing.assert_allclose(placed["ee_pose"][:3], tip, atol=1e-6)
    np.testing.assert_array_equal(env.commanded_qpos(), q)
    assert np.abs(placed["images"]["side_camera"].astype(int) - start["images"]["side_camera"]).mean() > 1.0
    assert env.step(q.astype(np.float32))[4]["tracking_error_mm"] < 0.05


def test_the_trocar_where_a_placement_puts_it_and_the_tip_frame_of_the_ee_pose(env):
    """sim.scene.trocar_in_world (the placement estimate's geometry) against the env's own sites, and the ee_pose's
    angles against its tip frame; a placement 1 mm off is 1 mm off."""
    for seed in range(4):
        observation, info = env.reset(seed=seed)
        p = info["scene_params"]
        entry, _, axis = env.trocar_target()
        placed_entry, placed_axis = trocar_in_world(p["phantom_dx"], p["phantom_dy"], p["phantom_yaw"])
        np.testing.assert_allclose(placed_entry, entry, atol=1e-7)
        np.testing.assert_allclose(placed_axis, axis, atol=1e-6)
        assert abs(np.linalg.norm(trocar_in_world(p["phantom_dx"] + 0.001, p["phantom_dy"], p["phantom_yaw"])[0]
                                  - entry) - 0.001) < 1e-7
        tip_frame = env.data.site_xmat[env.model.site(TIP_SITE).id].reshape(3, 3)
        np.testing.assert_allclose(matrix_from_euler_xyz(observation["ee_pose"][3:]), tip_frame, atol=1e-6)


def test_along_and_across_the_trocar_axis_of_the_depth_target_and_of_a_point_beside_the_entry(env):
    """The geometry the near-target window and probe_entry_crossing share: the depth target lies 27.5 mm past the
    entry on the axis; a point 2 mm beside the entry and 3 mm before it is 3 mm before, 2 mm across."""
    env.reset(seed=1)
    entry, target, axis = env.trocar_target()
    assert np.allclose(along_and_across(target, entry, axis), (INSERTION_DEPTH * 1000, 0.0), atol=1e-3)  # float32 sites
    side = np.cross(axis, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    assert np.allclose(along_and_across(entry + 0.002 * side - 0.003 * axis, entry, axis), (-3.0, 2.0), atol=1e-9)


def test_truncated_at_the_timeout_and_commands_clipped_to_the_limits():
    env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, max_episode_seconds=0.2, render_images=False)
    env.reset(seed=0)
    beyond = JOINT_LIMITS[:, 1] + 1.0
    results = [env.step(beyond) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results)
    np.testing.assert_allclose(env.commanded_qpos(), JOINT_LIMITS[:, 1])


def test_backgrounds_come_from_the_given_images(tmp_path):
    colors = [(200, 30, 30), (30, 200, 30)]
    for i, color in enumerate(colors):
        cv2.imwrite(str(tmp_path / f"bg{i}.png"), np.full((20, 30, 3), color[::-1], np.uint8))  # BGR on disk
    env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=DomainRandomization(backgrounds=str(tmp_path)))
    used = set()
    for seed in range(6):
        params = env.reset(seed=seed)[1]["scene_params"]
        assert params["dr_from_images"] == 1
        for material, texture in TEXTURED_MATERIALS.items():
            index = params[f"dr_{material}_texture"]
            used.add(index)
            t = env.model.texture(texture)
            pixels = env.model.tex_data[t.adr[0] : t.adr[0] + t.height[0] * t.width[0] * 3].reshape(-1, 3)
            assert np.all(pixels == colors[index])
    assert used == {0, 1}
    env.close()


def test_a_backgrounds_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no images"):
        NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=DomainRandomization(backgrounds=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=DomainRandomization(backgrounds=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    "make",
    [
        lambda: DomainRandomization(color=-0.1),
        lambda: DomainRandomization(damping=1.5),
        lambda: PhantomPlacement(y_min=0.05, y_max=0.0),
    ],
)
def test_invalid_ranges_are_refused(make):
    with pytest.raises(ValueError, match="fix"):
        make()


def test_rendering_can_be_switched_on_mid_episode_with_this_episodes_textures():
    dr = DomainRandomization(image_noise_std=0.0)
    env = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=dr, render_images=False)
    reference = NeedleInsertionEnv(width=WIDTH, height=HEIGHT, dr=dr)
    for seed in (1, 2):  # the second episode must not reuse the first one's textures
        env.reset(seed=seed)
        reference.reset(seed=seed)
        command = env.commanded_qpos()
        env.render_images = True
        late = env.step(command)[0]["images"]
        env.render_images = False
        expected = reference.step(command)[0]["images"]
        for camera in CAMERA_NAMES:
            np.testing.assert_array_equal(late[camera], expected[camera])
    env.close()
    reference.close()


# An eye of radius 10 mm at the origin, its cannula coming in from above along -z through the wall at z = 10 mm.
HAND_EYE = EyeGeometry(center=np.zeros(3), radius=0.010, cannula_outer=np.array([0.0, 0.0, 0.014]),
                       cannula_inner=np.array([0.0, 0.0, 0.009]), cannula_radius=0.0008)


@pytest.mark.parametrize(
    "base, tip, depth_mm",
    [
        ((0, 0, 20), (0, 0, -5), 0.0),  # down the cannula, deep into the eye
        ((4, 0, 30), (-2, 0, -5), 0.0),  # tilted, pivoting in the cannula (it crosses the wall at x = 0.57 mm)
        ((3, 0, 30), (3, 0, 12), 0.0),  # above the eye
        ((3, 0, 30), (3, 0, 4), 5.0),  # 3 mm beside the cannula: the tip is 5 mm from the centre
        ((3, 0, 30), (3, 0, -30), 7.0),  # straight through the eye beside it: nearest point (3, 0, 0)
        ((0, 0, -30), (0, 0, -6), 4.0),  # on the cannula's axis, but in through the far wall
        ((20, 0, 0), (9, 0, 0), 1.0),  # sideways
    ],
)
def test_penetration_outside_the_trocar_by_hand(base, tip, depth_mm):
    depth = penetration_outside_trocar(np.array(base) / 1000, np.array(tip) / 1000, HAND_EYE)
    assert depth * 1000 == pytest.approx(depth_mm, abs=1e-9)


def test_a_needle_pushed_through_the_eye_wall_beside_the_trocar_is_measured(env):
    """The tip pushed 2 mm deep through the wall 3 mm beside the trocar, commanded through sim's IK: the step info
    reports 2 mm at the deepest (the servos settle within 0.01 mm), 0 before and after."""
    poke = PokeBesideTheTrocar(offset=0.003, depth=0.002, then_expert=False)
    observation, info = env.reset(seed=4)
    assert info["penetration_outside_trocar_mm"] == 0.0
    poke.reset(env, seed=4)
    depths = []
    for _ in range(len(poke.path) + 5):
        observation, _, _, _, info = env.step(poke.act(observation))
        depths.append(info["penetration_outside_trocar_mm"])
    assert max(depths) == pytest.approx(2.0, abs=0.01)
    assert depths[0] == 0.0 and depths[-1] == 0.0
    inside = np.flatnonzero(depths)
    assert len(inside) >= 0.5 * 15 and np.all(np.diff(inside) == 1)  # in once, for the hold at least, then out
