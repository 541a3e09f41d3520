import h5py
import numpy as np
import pytest
from episode_files import CAMERAS, frame, write_episode

from episode_format.errors import EpisodeFormatError
from episode_format.reader import EpisodeKeys, discover_episodes, open_episode
from insertion_vla.config import load_config
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError

KEYS = EpisodeKeys(cameras={c: f"camera{i + 1}" for i, c in enumerate(CAMERAS)}, state_keys=("observations/ee_pose",))


def test_discovery_is_recursive_sorted_and_stable(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "z").mkdir(parents=True)
    for rel in ["b/ep1.hdf5", "a/z/ep0.h5", "a/ep2.h5", "notes.txt", "a/ep.h5.tmp-12"]:
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_episodes(tmp_path)]
    assert found == ["a/ep2.h5", "a/z/ep0.h5", "b/ep1.hdf5"]


def test_no_files_names_the_directory(tmp_path):
    with pytest.raises(UserError, match=f"No HDF5 files found in {tmp_path}"):
        discover_episodes(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        discover_episodes(tmp_path / "missing")


@pytest.mark.parametrize("jpeg", [True, False])
def test_reads_state_action_and_frames(tmp_path, jpeg):
    path = write_episode(tmp_path / "e.h5", length=7, jpeg=jpeg)
    with open_episode(path, KEYS) as ep, h5py.File(path) as f:
        assert ep.length == 7
        np.testing.assert_array_equal(ep.state, f["observations/ee_pose"][()])
        np.testing.assert_array_equal(ep.action, f["action"][()])
        img = ep.read_image("tool_camera", 3)
        assert img.shape == (48, 64, 3) and img.dtype == np.uint8
        diff = np.abs(img.astype(int) - frame(3, 1, 48, 64)).mean()
        assert diff < (3 if jpeg else 1e-9)  # RGB order kept (BGR would differ by far more)
        assert ep.task(None) == "Insert needle into eye trocar in simulation"
        assert ep.task("other") == "other"


def test_state_from_flags_concatenates_ee_pose_first(tmp_path):
    path = write_episode(tmp_path / "e.h5", length=5, ee_dim=3)  # an older collector's 3-dim ee_pose
    cfg = load_config(None, ["--dataset.use_qpos=true"])
    keys = keys_from_config(cfg["dataset"])
    assert keys.state_keys == ("observations/ee_pose", "observations/qpos")
    with open_episode(path, keys) as ep, h5py.File(path) as f:
        assert ep.state.shape == (5, 9)
        np.testing.assert_array_equal(ep.state[:, :3], f["observations/ee_pose"][()])


def test_gzip_arrays_and_extra_keys_are_fine(tmp_path):
    path = write_episode(tmp_path / "e.h5", length=5, jpeg=False, compression="gzip")
    with h5py.File(path, "a") as f:
        f["observations/sensor/force"] = np.zeros((123, 3))  # another rate: ignored
    with open_episode(path, KEYS) as ep:
        assert ep.length == 5


def _break(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.__delitem__("action"), r"missing key 'action'. Keys present: .*observations/qpos"),
    (lambda f: f.__delitem__("observations/images/top_camera"), r"camera 'top_camera' .* Cameras present: side_camera, tool_camera"),
    (lambda f: (f.__delitem__("action"), f.create_dataset("action", data=np.zeros((9, 6), np.float32))), r"different lengths .*action: 9"),
    (lambda f: f["action"].__setitem__((4, 2), np.nan), r"action has NaN/Inf at frame 4 \(dim 2"),
    (lambda f: f["observations/ee_pose"].__setitem__((1, 0), np.inf), r"state has NaN/Inf at frame 1"),
    (lambda f: (f.__delitem__("observations/images/side_camera"),
                f.create_dataset("observations/images/side_camera", data=np.zeros((10, 8, 8), np.float32))), r"must be one JPEG per frame"),
])
def test_schema_errors_name_file_and_problem(tmp_path, damage, message):
    path = _break(write_episode(tmp_path / "e.h5", length=10), damage)
    with pytest.raises(EpisodeFormatError, match=message) as err:
        open_episode(path, KEYS)
    assert str(path) in str(err.value)


def test_empty_episode(tmp_path):
    path = write_episode(tmp_path / "e.h5", length=0, jpeg=False)
    with pytest.raises(EpisodeFormatError, match=r"no frames \(T = 0\)"):
        open_episode(path, KEYS)


def test_truncated_file(tmp_path):
    path = write_episode(tmp_path / "e.h5", length=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(EpisodeFormatError, match="truncated or damaged"):
        open_episode(path, KEYS)


def test_undecodable_jpeg_names_camera_and_frame(tmp_path):
    path = _break(write_episode(tmp_path / "e.h5", length=10),
                  lambda f: f["observations/images/tool_camera"].__setitem__(6, np.arange(50, dtype=np.uint8)))
    with open_episode(path, KEYS) as ep:
        ep.read_image("tool_camera", 5)
        with pytest.raises(EpisodeFormatError, match=r"camera 'tool_camera' frame 6 is not a decodable JPEG"):
            ep.read_image("tool_camera", 6)


def test_task_missing_everywhere(tmp_path):
    path = write_episode(tmp_path / "e.h5", length=3, task=None)
    with open_episode(path, KEYS) as ep, pytest.raises(EpisodeFormatError, match="dataset.task_instruction is null"):
        ep.task(None)
