"""Time alignment, end to end: the action stored at frame t is the command the env executes after observation t, in
the collector's files, in EpisodeDataset's samples, as the first action of a predicted chunk and in the evaluator;
and each HDF5 camera reaches the policy under the lerobot name that dataset.cameras gives it.

Every convention has a negative control: the same check on data shifted by a frame (or on a swapped camera
mapping) fails, so a passing check means the convention holds, not that the check cannot see a violation.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from collected_runs import overfit_run, pretrained_vlm, randomized_episode
from episode_files import write_episode
from fixtures_policy import CAMERA_KEYS, make_policy_cfg, make_stats, tiny_vlm_dir  # noqa: F401  (session fixture)
from torch.utils.data import default_collate

from episode_format import ACTION_KEY, EE_POSE_KEY, IMAGES_GROUP, QPOS_KEY
from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from episode_format.reader import open_episode
from evaluation.drivers import PolicyDriver
from evaluation.policy_io import PolicyInputs, placement_estimate
from evaluation.rollout import run_episode
from insertion_vla.checkpoint import load_checkpoint, restore_policy
from insertion_vla.config import defaults
from insertion_vla.dataset import EpisodeDataset
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.localizer import NearTarget, PlacementEstimator, TruePlacement, load_localizer
from insertion_vla.policy import build_policy, predict_action_chunk, prepare_batch
from insertion_vla.stats import compute_stats
from sim.env import NeedleInsertionEnv
from sim.randomization import DomainRandomization, PhantomPlacement

CHUNK_SHIFT = 3  # frames: a predicted chunk's first action must be nearer the current frame's action than this off


@dataclass(frozen=True)
class Recording:
    """An episode file's arrays and attributes, read with h5py (not through the toolkit's reader)."""

    path: Path
    action: np.ndarray
    qpos: np.ndarray
    ee_pose: np.ndarray
    attrs: dict

    @classmethod
    def read(cls, path: Path) -> "Recording":
        with h5py.File(path, "r") as f:
            return cls(path, f[ACTION_KEY][()], f[QPOS_KEY][()], f[EE_POSE_KEY][()], dict(f.attrs))


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    return Recording.read(randomized_episode(tmp_path_factory))


def env_of(attrs: dict, render_images: bool) -> NeedleInsertionEnv:
    """The env an episode was collected in, from its attributes: image size, placement range, the collector's domain
    randomization, start range."""
    return NeedleInsertionEnv(width=int(attrs["image_width"]), height=int(attrs["image_height"]),
                              dr=DomainRandomization() if attrs["dr_enabled"] else None,
                              phantom=PhantomPlacement.from_attrs(attrs),
                              start_joint_range_deg=float(attrs["start_joint_range_deg"]), render_images=render_images)


@pytest.fixture(scope="module")
def collection_env(recording):
    """The env the episode was collected in, without images (the physics and the joint noise do not depend on
    rendering)."""
    env = env_of(recording.attrs, render_images=False)
    yield env
    env.close()


def shifted(actions: np.ndarray, frames: int) -> np.ndarray:
    """The actions `frames` later (frames > 0: a later frame's command executed now) or earlier, ends repeated."""
    return actions[np.clip(np.arange(len(actions)) + frames, 0, len(actions) - 1)]


def replay(env: NeedleInsertionEnv, seed: int, actions: np.ndarray):
    """Reset to `seed`, execute `actions` one per step -> (qpos and ee_pose observed before each action, the step
    (counted from 1) at which success was first declared or None, the last step's info)."""
    observation, _ = env.reset(seed=seed)
    qpos, ee_pose, success_step = [], [], None
    for step, action in enumerate(actions, start=1):
        qpos.append(observation["qpos"])
        ee_pose.append(observation["ee_pose"])
        observation, _, _, _, info = env.step(action)
        if info["success"] and success_step is None:
            success_step = step
    return np.array(qpos), np.array(ee_pose), success_step, info


def test_replaying_the_recorded_actions_from_the_recorded_seed_reproduces_the_episode(recording, collection_env):
    seed, attrs, length = int(recording.attrs["sim_seed"]), recording.attrs, len(recording.action)
    qpos, ee_pose, success_step, info = replay(collection_env, seed, recording.action)
    assert collection_env.scene_params == pytest.approx({key: attrs[key] for key in collection_env.scene_params})
    np.testing.assert_array_equal(qpos, recording.qpos)  # the observation before action t is frame t
    np.testing.assert_array_equal(ee_pose, recording.ee_pose)
    assert attrs["success"] and success_step == length  # the collector stops at the success (no --hold_seconds)
    assert (info["tip_error_mm"], info["axis_error_deg"]) == (attrs["final_tip_error_mm"], attrs["final_axis_error_deg"])

    # The start pose is the seed's too (drawn within start_joint_range_deg): from home the first frame differs.
    home_start = NeedleInsertionEnv(width=8, height=8, dr=collection_env.dr, phantom=collection_env.randomizer.phantom,
                                    render_images=False)
    assert np.abs(replay(home_start, seed, recording.action)[0][0] - recording.qpos[0]).max() > 0.01  # rad
    home_start.close()
    for frames in (1, -1):  # negative control: a frame's command executed one frame early, or late
        qpos, ee_pose, success_step, _ = replay(collection_env, seed, shifted(recording.action, frames))
        assert np.abs(qpos - recording.qpos).max() > 0.01, frames  # rad; the same sensor noise in every replay
        assert np.abs(ee_pose - recording.ee_pose).max() > 0.01, frames
        assert success_step != length, frames


def test_the_dataset_sample_at_frame_t_holds_action_t_and_state_t(recording):
    horizon, length = 50, len(recording.action)
    dataset = EpisodeDataset([recording.path], keys_from_config(defaults()["dataset"]), horizon=horizon,
                             image_size=(64, 64))
    assert len(dataset) == length
    for t in range(length):
        sample = dataset[t]
        assert sample["frame_index"] == t
        chunk, in_episode = sample["action"].numpy(), min(horizon, length - t)
        np.testing.assert_array_equal(sample["observation.state"].numpy(), recording.ee_pose[t])
        np.testing.assert_array_equal(chunk[0], recording.action[t])
        np.testing.assert_array_equal(chunk[:in_episode], recording.action[t:t + in_episode])
        np.testing.assert_array_equal(chunk[in_episode:], np.repeat(recording.action[-1:], horizon - in_episode, 0))
        np.testing.assert_array_equal(sample["action_is_pad"].numpy(), np.arange(horizon) >= in_episode)
    # Negative control: action and state change from frame to frame (all but the final hold), so a sample one frame
    # off would fail the equalities above.
    for array in (recording.action, recording.ee_pose):
        assert np.mean(np.any(array[1:] != array[:-1], axis=1)) > 0.8


def test_training_and_the_evaluator_append_the_same_placement_estimate_at_every_frame(recording, tmp_path_factory,
                                                                                    tiny_vlm_dir):  # noqa: F811
    """dataset.placement_estimate with near_target_estimate: every sample's state ends with the estimate at its frame,
    the statistics describe that state, and the evaluator's PolicyDriver, fed the episode's observations again
    (replayed from the recorded seed with the recorded actions, through the recorder's JPEG round trip), makes the
    same estimate at every frame, and predicts each chunk (every 5 frames) from the estimate at its frame. The
    near-target window is widened to the whole episode here, so that the refinement is compared at every frame (the
    tiny localizer's first estimate is too far off for the window it was trained on). Without the near-target
    localizer the estimate is frame 0's at every frame."""
    vlm = pretrained_vlm(tmp_path_factory)
    first = load_localizer(vlm)
    near = replace(NearTarget.load(vlm), standoff_mm=(-1e3, 1e3), across_mm=1e3, tilt_deg=180.0,
                   weights=np.array([0.5, 0.5], np.float32))
    estimator = PlacementEstimator(first, near)
    keys = keys_from_config(defaults()["dataset"])
    dataset = EpisodeDataset([recording.path], keys, horizon=4, image_size=(64, 64), estimator=estimator)
    states = np.stack([dataset[t]["observation.state"].numpy() for t in range(len(dataset))])
    assert dataset.state_dim == 9
    np.testing.assert_array_equal(states[:, :6], recording.ee_pose)
    estimates = states[:, 6:]
    with open_episode(recording.path, keys) as episode:
        frame0 = first.estimate({camera: episode.read_image(camera, 0) for camera in first.cameras})
    np.testing.assert_array_equal(estimates[0], frame0)
    np.testing.assert_array_equal(estimates[:, 2], frame0[2])  # the yaw stays the first frame's
    stats, _ = compute_stats([recording.path], keys, progress=False, estimator=estimator)
    np.testing.assert_allclose(stats["observation.state"]["mean"][6:], estimates.mean(0), rtol=1e-5)

    env = env_of(recording.attrs, render_images=True)
    inputs = PolicyInputs(cameras={camera: f"observation.images.{name}" for camera, name in keys.cameras.items()},
                          state=("ee_pose",), task="", image_side=64, jpeg_quality=DEFAULT_JPEG_QUALITY,
                          estimator=estimator)
    policy, preprocessor, postprocessor = build_policy(
        make_policy_cfg(tiny_vlm_dir), state_dim=9, action_dim=6, camera_keys=CAMERA_KEYS, stats=make_stats(9, 6))
    predicted_from = []  # the state of every chunk's input, as the driver hands it to lerobot's preprocessor

    def seeing_preprocessor(batch):
        predicted_from.append(batch["observation.state"][0, 6:].numpy().copy())
        return preprocessor(batch)

    driver = PolicyDriver(policy, seeing_preprocessor, postprocessor, inputs, n_action_steps=5)
    seed = int(recording.attrs["sim_seed"])
    observation, _ = env.reset(seed=seed)
    driver.reset(env, seed)
    raw_first = placement_estimate(observation, replace(inputs, jpeg_quality=0), estimator.tracker())
    driver_estimates = []
    for action in recording.action:
        driver.act(observation)  # its chunk is not executed: the recorded action is, so the frames are the same
        driver_estimates.append(driver.tracker.current.copy())
        assert driver.needs_images()  # every frame is rendered for the estimate
        observation, *_ = env.step(action)
    env.close()
    driver_estimates = np.array(driver_estimates)
    np.testing.assert_allclose(driver_estimates, estimates, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.array(predicted_from), estimates[::5], rtol=0, atol=1e-4)
    # Negative controls: the refined estimate changes from frame to frame, so a tracker a frame late, or one fed only
    # the frames a chunk is predicted from, would fail the equality above, and so would frames without the JPEG
    # round trip.
    assert np.abs(driver_estimates[1:] - estimates[:-1]).max() > 1e-3
    with open_episode(recording.path, keys) as episode:
        tracker = estimator.tracker()
        only_predictions = [tracker.update(recording.ee_pose[t], lambda cameras, t=t: {
            camera: episode.read_image(camera, t) for camera in cameras}) for t in range(0, len(estimates), 5)]
    assert np.abs(np.array(only_predictions) - estimates[::5]).max() > 1e-3
    assert np.abs(raw_first - estimates[0]).max() > 1e-4
    plain = EpisodeDataset([recording.path], keys, horizon=4, image_size=(64, 64), estimator=PlacementEstimator(first))
    for t in (0, len(plain) // 2, len(plain) - 1):
        np.testing.assert_array_equal(plain[t]["observation.state"].numpy()[6:], frame0)


def test_with_the_true_placement_training_and_the_evaluator_append_the_episodes_placement(recording, tiny_vlm_dir):  # noqa: F811
    """dataset.true_placement: every sample's state ends with the placement recorded in the episode's attributes
    (mm, mm, deg), and the evaluator's PolicyDriver, reset with the env of the episode's seed, predicts from the
    same values. Negative controls: the env of another seed gives another placement, and a driver never given the
    env (a robot's) refuses to predict."""
    keys = keys_from_config(defaults()["dataset"])
    dataset = EpisodeDataset([recording.path], keys, horizon=4, image_size=(64, 64), estimator=TruePlacement())
    states = np.stack([dataset[t]["observation.state"].numpy() for t in range(len(dataset))])
    truth = np.array([recording.attrs["phantom_dx"] * 1000, recording.attrs["phantom_dy"] * 1000,
                      np.degrees(recording.attrs["phantom_yaw"])], np.float32)
    assert np.abs(truth[:2]).max() > 1.0  # a placement away from the nominal one: the units show
    np.testing.assert_array_equal(states[:, :6], recording.ee_pose)
    np.testing.assert_allclose(states[:, 6:], np.tile(truth, (len(states), 1)), rtol=1e-6)
    stats, _ = compute_stats([recording.path], keys, progress=False, estimator=TruePlacement())
    np.testing.assert_allclose(stats["observation.state"]["mean"][6:], truth, rtol=1e-5)

    inputs = PolicyInputs(cameras={camera: f"observation.images.{name}" for camera, name in keys.cameras.items()},
                          state=("ee_pose",), task="", image_side=64, jpeg_quality=DEFAULT_JPEG_QUALITY,
                          estimator=TruePlacement())
    policy, preprocessor, postprocessor = build_policy(
        make_policy_cfg(tiny_vlm_dir), state_dim=9, action_dim=6, camera_keys=CAMERA_KEYS, stats=make_stats(9, 6))
    predicted_from = []

    def seeing_preprocessor(batch):
        predicted_from.append(batch["observation.state"][0, 6:].numpy().copy())
        return preprocessor(batch)

    driver = PolicyDriver(policy, seeing_preprocessor, postprocessor, inputs, n_action_steps=5)
    env = env_of(recording.attrs, render_images=True)
    seed = int(recording.attrs["sim_seed"])
    for episode_seed in (seed, seed + 1):
        observation, _ = env.reset(seed=episode_seed)
        driver.reset(env, episode_seed)
        driver.act(observation)
    with pytest.raises(UserError, match="true placement.*not given the simulator's scene"):
        driver.reset(None, seed)
        driver.act(observation)
    env.close()
    np.testing.assert_allclose(predicted_from[0], truth, rtol=1e-6)
    assert np.abs(predicted_from[1] - truth)[:2].max() > 0.5  # another seed's placement
    # offset_mm (benchmarks/probe_placement_tolerance.py) moves dx, dy and nothing else, in training and closed loop
    moved = TruePlacement((0.3, -0.4))
    np.testing.assert_allclose(moved.tracker(recording.attrs).update(None, None), truth + [0.3, -0.4, 0.0], rtol=1e-6)
    with open_episode(recording.path, keys) as episode:
        np.testing.assert_allclose(moved.episode_estimates(episode)[0], truth + [0.3, -0.4, 0.0], rtol=1e-6)
    with pytest.raises(UserError, match="robot.h5: .*phantom_dx is missing.*recorded by sim.collect"):
        TruePlacement().placement({"phantom_dy": 0.0, "phantom_yaw": 0.0}, "robot.h5")


class RecordedActionsDriver:
    """Drives an evaluator episode with an episode file's recorded actions, one per step from the first (the last
    one held past the end): a driver of recorded data, behind evaluation.drivers' interface."""

    uses_images = False
    n_action_steps = 1
    queries = 0

    def __init__(self, actions: np.ndarray):
        self.actions = actions
        self._step = 0

    def reset(self, env, seed: int) -> None:
        self._step = 0

    def needs_images(self) -> bool:
        return False

    def act(self, observation: dict) -> np.ndarray:
        action = self.actions[min(self._step, len(self.actions) - 1)]
        self._step += 1
        return action


def test_the_evaluator_driven_by_the_recorded_actions_reproduces_the_episode(recording, collection_env):
    seed, attrs, length = int(recording.attrs["sim_seed"]), recording.attrs, len(recording.action)
    result = run_episode(collection_env, RecordedActionsDriver(recording.action), 0, seed)
    assert result.success and result.steps == length
    assert result.final_tip_error_mm == attrs["final_tip_error_mm"]
    assert result.final_axis_error_deg == attrs["final_axis_error_deg"]
    for frames in (1, -1):  # negative control: the success is declared a frame early, or late
        shifted_result = run_episode(collection_env, RecordedActionsDriver(shifted(recording.action, frames)), 0, seed)
        assert shifted_result.steps != length, frames


def test_the_first_action_of_a_predicted_chunk_is_the_current_frames(tmp_path_factory, tiny_vlm_dir):  # noqa: F811
    """A tiny policy fitted to one fixed-tier episode: its chunk's first action at frame t is nearer the recorded
    action[t] than action[t + 3] and action[t - 3] at most frames where the arm moves (measured: 0.98, 0.91 and 0.92
    of them, fitted to three different episodes). Negative control: the predictions of frame t + 3 (or t - 3) taken
    as frame t's, as a chunk starting 3 frames off would give them (measured: 0.05 at most)."""
    run = overfit_run(tmp_path_factory, tiny_vlm_dir)
    policy, preprocessor, postprocessor = restore_policy(load_checkpoint(run.checkpoint))
    config, dataset_cfg = policy.config, run.cfg["dataset"]
    side = config.resize_imgs_with_padding[0]
    dataset = EpisodeDataset(run.train_files, keys_from_config(dataset_cfg), horizon=config.chunk_size,
                             image_size=(side, side), task_instruction=dataset_cfg["task_instruction"])
    batch = prepare_batch(default_collate([dataset[t] for t in range(len(dataset))]), preprocessor, "cpu")
    # Zero noise: the sampler's path from the prior's mean, so what is measured is what the policy learned, without
    # the scatter of one random draw on top.
    noise = torch.zeros(len(dataset), config.chunk_size, config.max_action_dim)
    first = predict_action_chunk(policy, batch, postprocessor, noise=noise)[:, 0].numpy()
    (path,) = run.train_files
    action = Recording.read(path).action

    t = np.arange(2 * CHUNK_SHIFT, len(action) - 2 * CHUNK_SHIFT)
    moving = np.minimum(np.abs(action[t + CHUNK_SHIFT] - action[t]).sum(axis=1),
                        np.abs(action[t - CHUNK_SHIFT] - action[t]).sum(axis=1)) > np.deg2rad(1.0)
    assert moving.sum() > len(t) / 2

    def share_nearest_action_t(predicted):
        """The share of moving frames t whose prediction is nearer action[t] than action[t +- CHUNK_SHIFT]."""
        def distance(frames):
            return np.abs(predicted - action[t + frames]).sum(axis=1)
        return np.mean(((distance(0) < distance(CHUNK_SHIFT)) & (distance(0) < distance(-CHUNK_SHIFT)))[moving])

    aligned = share_nearest_action_t(first[t])
    assert aligned > 0.75, f"chunk[0] is nearest action[t] at only {aligned:.0%} of the moving frames"
    for frames in (CHUNK_SHIFT, -CHUNK_SHIFT):
        assert share_nearest_action_t(first[t + frames]) < 0.25, frames


CAMERA_COLOURS = {"side_camera": (200, 40, 40), "tool_camera": (40, 200, 40), "top_camera": (40, 40, 200)}


def assert_cameras_follow(mapping: dict, dataset: EpisodeDataset) -> None:
    """Every sample shows HDF5 camera c (a constant colour) at observation.images.<mapping[c]>."""
    for t in range(len(dataset)):
        sample = dataset[t]
        for camera, name in mapping.items():
            image = sample[f"observation.images.{name}"].numpy()
            assert np.array_equal(image, np.broadcast_to(np.array(CAMERA_COLOURS[camera], np.uint8)[:, None, None],
                                                         image.shape)), f"frame {t}: {camera} is not at {name}"


def test_each_hdf5_camera_reaches_the_policy_under_its_mapped_name(tmp_path):
    path = write_episode(tmp_path / "episode.h5", length=3, jpeg=False)  # raw frames: the colours stay exact
    with h5py.File(path, "a") as f:
        for camera, colour in CAMERA_COLOURS.items():
            f[f"{IMAGES_GROUP}/{camera}"][...] = colour
    mapping = defaults()["dataset"]["cameras"]
    assert set(mapping) == set(CAMERA_COLOURS)

    def dataset(cameras):
        keys = keys_from_config({**defaults()["dataset"], "cameras": cameras})
        return EpisodeDataset([path], keys, horizon=4, image_size=(64, 48))  # the frames' own size: no padding

    assert_cameras_follow(mapping, dataset(mapping))
    # Negative control: a dataset built with two cameras swapped fails the same check.
    (first, name1), (second, name2), *rest = mapping.items()
    with pytest.raises(AssertionError, match="is not at"):
        assert_cameras_follow(mapping, dataset({first: name2, second: name1, **dict(rest)}))
