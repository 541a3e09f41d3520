"""dataset.decode=cuda's image path (insertion_vla.gpu_images), run on the CPU: torchvision's batched JPEG decode and
the torch resize with padding give the images of the OpenCV path (insertion_vla.dataset) to within a grey level."""

import json

import numpy as np
import pytest
import torch
from episode_files import CAMERAS, write_dataset
from lerobot.policies.smolvla.modeling_smolvla import resize_with_pad as lerobot_resize_with_pad
from test_bad_samples import corrupt_jpeg
from torch.utils.data import DataLoader

from benchmarks.synthetic import noise_field, noisy_frame
from episode_format.errors import EpisodeFormatError
from episode_format.jpeg import decode_jpeg, encode_jpeg
from episode_format.reader import EpisodeKeys
from insertion_vla.dataset import BAD_FRAMES, EpisodeDataset
from insertion_vla.dataset import resize_with_pad as opencv_resize_with_pad
from insertion_vla.gpu_images import DeviceImageDecoder, decode_resize_pad, resize_with_pad

KEYS = EpisodeKeys(cameras={c: f"camera{i + 1}" for i, c in enumerate(CAMERAS)}, state_keys=("observations/ee_pose",))
SIZES = [((480, 640), (512, 512)), ((48, 64), (32, 32)), ((64, 48), (40, 30)), ((30, 30), (64, 64))]


def noisy_jpegs(height, width, n=6):
    """JPEG q95 of the benchmark's noisy frames: what the simulator's cameras store."""
    noise = noise_field(height, width, 5.0, np.random.default_rng(0))
    return [encode_jpeg(noisy_frame(t, t % 3, height, width, noise), 95) for t in range(n)]


@pytest.mark.parametrize("src_hw, size", SIZES)
def test_torchvision_decode_and_resize_match_opencv_within_a_grey_level(src_hw, size):
    jpegs = noisy_jpegs(*src_hw)
    opencv = np.stack([opencv_resize_with_pad(decode_jpeg(j), *size) for j in jpegs]).astype(np.int16)
    images, problems = decode_resize_pad([torch.from_numpy(j) for j in jpegs], *size, device="cpu")
    assert problems == {} and images.dtype == torch.uint8 and images.shape == (len(jpegs), 3, size[1], size[0])
    diff = np.abs(images.permute(0, 2, 3, 1).numpy().astype(np.int16) - opencv)
    print(f"{src_hw} -> {size}: mean |torchvision - OpenCV| {diff.mean():.3f} grey levels, max {diff.max()}")
    assert diff.mean() <= 1.0 and diff.max() <= 1


@pytest.mark.parametrize("src_hw, size", SIZES)
def test_resize_with_pad_has_lerobots_geometry(src_hw, size):
    img = torch.from_numpy(np.cumsum(np.random.default_rng(0).integers(0, 256, (*src_hw, 3)), axis=1) % 256)
    img = img.to(torch.uint8).permute(2, 0, 1)[None]
    ours = resize_with_pad(img, *size).float() / 255
    ref = lerobot_resize_with_pad(img.float() / 255, *size, pad_value=0)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 0.5 / 255 + 1e-6  # rounding to uint8 only


def test_device_decoder_gives_the_cpu_paths_batch(tmp_path):
    paths = write_dataset(tmp_path, n=2, length=6)
    common = dict(horizon=4, image_size=(64, 64), seed=5, replace_bad_frames=True)
    cpu, device = EpisodeDataset(paths, KEYS, **common), EpisodeDataset(paths, KEYS, decode="cuda", **common)
    raw = next(iter(DataLoader(device, batch_size=len(device), collate_fn=device.collate)))
    assert all(isinstance(j, torch.Tensor) and j.dtype == torch.uint8 and j.ndim == 1 for j in raw["observation.images.camera1"])
    decoded = DeviceImageDecoder(device, "cpu")(raw)
    expected = next(iter(DataLoader(cpu, batch_size=len(cpu))))
    assert decoded.keys() == expected.keys()
    for key, value in expected.items():
        if key.startswith("observation.images."):
            assert decoded[key].shape == value.shape and decoded[key].dtype == torch.uint8
            assert (decoded[key].int() - value.int()).abs().max() <= 1, key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(decoded[key], value), key
        else:
            assert decoded[key] == value, key


def test_a_jpeg_that_does_not_decode_on_the_device_is_replaced_as_on_the_cpu(tmp_path):
    paths = write_dataset(tmp_path, n=2, length=6)
    corrupt_jpeg(paths[1], "top_camera", 2)
    common = dict(horizon=4, image_size=(32, 32), seed=5, replace_bad_frames=True)
    cpu, device = EpisodeDataset(paths, KEYS, **common), EpisodeDataset(paths, KEYS, decode="cuda", **common)
    bad = 6 + 2
    raw = device.collate([device[i] for i in (0, bad, 3)])
    assert json.loads(raw[BAD_FRAMES][1]) == []  # the worker read bytes only: nothing found yet
    decoded = DeviceImageDecoder(device, "cpu")(raw)
    replaced = cpu[bad]
    assert (int(decoded["episode_index"][1]), int(decoded["frame_index"][1])) == (replaced["episode_index"], replaced["frame_index"])
    assert torch.equal(decoded["observation.images.camera3"][1], replaced["observation.images.camera3"])  # decoded on the CPU
    [record] = json.loads(decoded[BAD_FRAMES][1])
    assert (record["file"], record["camera"], record["frame"]) == (str(paths[1]), "top_camera", 2)
    assert "not a decodable JPEG on cpu" in record["problem"]
    assert [json.loads(t) for t in decoded[BAD_FRAMES][::2]] == [[], []]

    strict = EpisodeDataset(paths, KEYS, horizon=4, image_size=(32, 32), decode="cuda")
    with pytest.raises(EpisodeFormatError, match=r"episode_0001.h5: camera 'top_camera' frame 2 is not a decodable JPEG"):
        DeviceImageDecoder(strict, "cpu")(strict.collate([strict[bad]]))


def test_raw_frames_need_cpu_decoding(tmp_path):
    paths = write_dataset(tmp_path, n=1, length=4, jpeg=False)
    with pytest.raises(Exception, match="stores raw RGB frames, but dataset.decode=cuda"):
        EpisodeDataset(paths, KEYS, horizon=2, image_size=(32, 32), decode="cuda")
