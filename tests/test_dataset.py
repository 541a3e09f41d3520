import numpy as np
import pytest
import torch
from episode_files import CAMERAS, write_dataset
from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad as lerobot_resize_with_pad
from torch.utils.data import DataLoader

from episode_format.reader import EpisodeKeys, open_episode
from insertion_vla.dataset import EpisodeDataset, augment_image, resize_with_pad

KEYS = EpisodeKeys(cameras={c: f"camera{i + 1}" for i, c in enumerate(CAMERAS)}, state_keys=("observations/ee_pose",))


@pytest.mark.parametrize("src_hw, size", [((480, 640), (512, 512)), ((48, 64), (32, 32)), ((64, 48), (40, 30)), ((30, 30), (64, 64))])
def test_resize_with_pad_matches_lerobot(src_hw, size):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    img = np.asarray(np.cumsum(img, axis=1) % 256, dtype=np.uint8)  # some structure, not only noise
    ours = resize_with_pad(img, *size).astype(np.float32) / 255
    ref = lerobot_resize_with_pad(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, *size, pad_value=0)
    ref = ref[0].permute(1, 2, 0).numpy()
    assert ours.shape == ref.shape
    padded_rows = ref.shape[0] - int(src_hw[0] / max(src_hw[1] / size[0], src_hw[0] / size[1]))
    assert np.all(ours[:padded_rows] == 0) and np.all(ref[:padded_rows] == 0)  # padding on top, as lerobot
    assert np.abs(ours - ref).max() <= 2.5 / 255  # uint8 rounding only


def test_samples_have_lerobot_keys_and_chunks(tmp_path):
    paths = write_dataset(tmp_path, n=3)  # lengths 20, 21, 22
    ds = EpisodeDataset(paths, KEYS, horizon=8, image_size=(32, 32), episode_indices=[5, 6, 7])
    assert len(ds) == 20 + 21 + 22 and (ds.state_dim, ds.action_dim) == (6, 6)
    assert ds.sample_index(1, 18) == ds.index_of(6, 18) == 20 + 18 and ds.locate(20 + 18) == (1, 18)
    s = ds[20 + 18]  # episode 1, frame 18: 3 real actions, then 5 repeats of the last
    assert s["episode_index"] == 6 and s["frame_index"] == 18
    for i in range(1, 4):
        img = s[f"observation.images.camera{i}"]
        assert img.dtype == torch.uint8 and img.shape == (3, 32, 32)
    with open_episode(paths[1], KEYS) as ep:
        np.testing.assert_array_equal(s["observation.state"].numpy(), ep.state[18])
        np.testing.assert_array_equal(s["action"][:3].numpy(), ep.action[18:21])
        np.testing.assert_array_equal(s["action"][3:].numpy(), np.repeat(ep.action[20:21], 5, axis=0))
        expected = resize_with_pad(ep.read_image("tool_camera", 18), 32, 32)
    assert s["action_is_pad"].tolist() == [False] * 3 + [True] * 5
    np.testing.assert_array_equal(s["observation.images.camera2"].permute(1, 2, 0).numpy(), expected)
    assert s["task"] == "Insert needle into eye trocar in simulation"


def test_loader_workers_collate_and_cover_every_frame(tmp_path):
    paths = write_dataset(tmp_path, n=3)
    ds = EpisodeDataset(paths, KEYS, horizon=4, image_size=(16, 16))
    seen = set()
    for batch in DataLoader(ds, batch_size=7, num_workers=2, shuffle=True):
        assert batch["observation.images.camera1"].dtype == torch.uint8
        assert len(batch["task"]) == len(batch["episode_index"])
        seen |= set(zip(batch["episode_index"].tolist(), batch["frame_index"].tolist()))
    assert seen == {(e, t) for e, n in enumerate([20, 21, 22]) for t in range(n)}


def test_open_files_stay_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr("insertion_vla.dataset.OPEN_EPISODES_PER_WORKER", 2)
    paths = write_dataset(tmp_path, n=5, length=3)
    ds = EpisodeDataset(paths, KEYS, horizon=2, image_size=(8, 8))
    for i in range(len(ds)):
        ds[i]
    assert len(ds._open) == 2


def test_episodes_of_different_dims_are_refused(tmp_path):
    from episode_files import write_episode

    a = write_episode(tmp_path / "a.h5", length=5)
    b = write_episode(tmp_path / "b.h5", length=5, ee_dim=3)
    with pytest.raises(Exception, match="disagree on dimensions"):
        EpisodeDataset([a, b], KEYS, horizon=2, image_size=(8, 8))


def test_augmentation_changes_images_reproducibly(tmp_path):
    paths = write_dataset(tmp_path, n=1)
    params = {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "noise_std": 3.0}
    plain = EpisodeDataset(paths, KEYS, horizon=2, image_size=(32, 32))
    aug = EpisodeDataset(paths, KEYS, horizon=2, image_size=(32, 32), augmentation=params, seed=1)
    a1, a2 = aug[4]["observation.images.camera1"], aug[4]["observation.images.camera1"]
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, plain[4]["observation.images.camera1"])
    aug.set_epoch(1)
    assert not torch.equal(a1, aug[4]["observation.images.camera1"])
    img = np.full((8, 8, 3), 128, np.uint8)
    assert augment_image(img, {**params, "noise_std": 0, "hue": 0, "contrast": 0, "saturation": 0},
                         np.random.default_rng(0)).std() == 0  # brightness alone keeps a flat image flat
