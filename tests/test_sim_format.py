"""What the simulator writes, the library's reader reads: insertion_vla.episodes on a collected episode."""

import h5py
import numpy as np
import pytest

from episode_format.jpeg import decode_jpeg
from episode_format.reader import EpisodeKeys, discover_episodes, open_episode
from sim.collect import CollectionSettings, collect
from sim.recorder import TASK_INSTRUCTION
from sim.scene import CAMERA_NAMES

KEYS = EpisodeKeys(
    cameras={"side_camera": "camera1", "tool_camera": "camera2", "top_camera": "camera3"},
    state_keys=("observations/ee_pose",),
    action_key="action",
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim_format")
    outcomes = collect(CollectionSettings(out_dir=out, base_seed=21, width=64, height=48), episodes=1)
    assert [o.saved for o in outcomes] == [True]
    return out


def test_reader_discovers_and_validates_the_collected_episode(dataset):
    paths = discover_episodes(dataset)
    assert [p.name for p in paths] == ["episode_000000.h5"]
    episode = open_episode(paths[0], KEYS)
    try:
        with h5py.File(paths[0], "r") as f:
            assert episode.length == len(f["action"]) >= 60
            np.testing.assert_array_equal(episode.state, f["observations/ee_pose"][()])
            np.testing.assert_array_equal(episode.action, f["action"][()])
            assert episode.state.shape == (episode.length, 6) and episode.state.dtype == np.float32
            for camera in CAMERA_NAMES:
                for t in (0, episode.length - 1):
                    image = episode.read_image(camera, t)
                    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
                    np.testing.assert_array_equal(image, decode_jpeg(f[f"observations/images/{camera}"][t]))
        assert episode.attrs["task"] == TASK_INSTRUCTION == episode.task(None)
        assert episode.attrs["success"] is True and episode.attrs["format_version"] == 1
        assert episode.attrs["sim_seed"] == 21_000_000_000
    finally:
        episode.close()


def test_reader_takes_qpos_as_state_too(dataset):
    keys = EpisodeKeys(cameras=KEYS.cameras, state_keys=("observations/qpos", "observations/ee_pose"))
    with open_episode(dataset / "episode_000000.h5", keys) as episode:
        assert episode.state.shape == (episode.length, 12)
