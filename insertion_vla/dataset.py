"""A torch Dataset of (episode, frame) samples in lerobot's batch keys.

Sample at frame t: the cameras' images at t (uint8, 3xHxW, resized with padding as SmolVLA does), the state at
t, the actions t..t+horizon-1 (the last action repeated past the episode's end, `action_is_pad` true there),
the task, and where it came from (episode and frame index). Images stay uint8 so the worker-to-main transport
is 4x smaller; the training step turns them into float [0, 1] on the device.
"""

import bisect
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from episode_format.reader import EpisodeKeys, open_episode
from insertion_vla.errors import UserError

OPEN_EPISODES_PER_WORKER = 32  # bounded, so memory does not grow with the number of episodes


def resize_with_pad(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (height, width, 3): aspect kept, bilinear, zero padding on the left and top.

    The same geometry as lerobot's SmolVLA `resize_with_pad`, done once in the loader with OpenCV.
    """
    h, w = img.shape[:2]
    ratio = max(w / width, h / height)
    new_h, new_w = int(h / ratio), int(w / ratio)
    if (new_h, new_w) != (h, w):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if (new_h, new_w) == (height, width):
        return img
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[height - new_h:, width - new_w:] = img
    return out


def augment_image(img: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
    """Photometric jitter for real-robot data: brightness, contrast, saturation, hue, Gaussian noise."""
    x = img.astype(np.float32)
    x *= rng.uniform(1 - params["brightness"], 1 + params["brightness"])
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray.mean()) * rng.uniform(1 - params["contrast"], 1 + params["contrast"]) + gray.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - params["saturation"], 1 + params["saturation"])
    x = np.clip(x, 0, 255).astype(np.uint8)
    if params["hue"] > 0:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # OpenCV hue is 0..179
        shift = int(round(rng.uniform(-params["hue"], params["hue"]) * 180))
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if params["noise_std"] > 0:
        x = np.clip(x + rng.normal(0, params["noise_std"], x.shape), 0, 255).astype(np.uint8)
    return x


class EpisodeDataset(Dataset):
    """All frames of the given episodes. `episode_indices` are the episodes' indices in the full discovery
    list, carried in every sample so a loss spike can name the files it came from."""

    def __init__(self, paths, keys: EpisodeKeys, *, horizon: int, image_size, task_instruction=None,
                 episode_indices=None, augmentation: dict | None = None, seed: int = 0):
        self.paths = [Path(p) for p in paths]
        self.keys = keys
        self.horizon = horizon
        self.width, self.height = image_size  # lerobot's resize_imgs_with_padding order
        self.task_instruction = task_instruction
        self.episode_indices = list(episode_indices) if episode_indices is not None else list(range(len(self.paths)))
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

        self.lengths, dims = [], {}
        for path in self.paths:  # opening checks every file's schema up front, before any training step
            with open_episode(path, keys) as ep:
                ep.task(task_instruction)
                self.lengths.append(ep.length)
                dims.setdefault((ep.state.shape[1], ep.action.shape[1]), path)
        if len(dims) != 1:
            detail = "; ".join(f"{p} has state dim {s}, action dim {a}" for (s, a), p in dims.items())
            raise UserError(f"episodes disagree on dimensions: {detail}. Train on episodes of one format.")
        (self.state_dim, self.action_dim), = dims
        self._starts = np.concatenate([[0], np.cumsum(self.lengths)]).tolist()
        self._open = OrderedDict()
        self._pid = os.getpid()
        # The loader parallelizes over DataLoader workers; a per-core OpenCV pool in each of them oversubscribes
        # the CPU (3x slower loading on a GPU node). Set here, in the parent: changing the pool in a forked
        # worker can deadlock on the parent's pool state.
        cv2.setNumThreads(1)

    def __len__(self):
        return self._starts[-1]

    def set_epoch(self, epoch: int):
        """Augmentation noise is a function of (seed, epoch, sample), so a resumed run sees the same images."""
        self.epoch = epoch

    def locate(self, index: int) -> tuple[int, int]:
        """Sample index -> (position in self.paths, frame)."""
        pos = bisect.bisect_right(self._starts, index) - 1
        return pos, index - self._starts[pos]

    def _episode(self, pos: int):
        if os.getpid() != self._pid:  # a forked worker must not share the parent's HDF5 handles
            self._open, self._pid = OrderedDict(), os.getpid()
        ep = self._open.pop(pos, None) or open_episode(self.paths[pos], self.keys)
        self._open[pos] = ep
        if len(self._open) > OPEN_EPISODES_PER_WORKER:
            self._open.popitem(last=False)[1].close()
        return ep

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        pos, t = self.locate(index)
        ep = self._episode(pos)
        steps = np.arange(t, t + self.horizon)
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augmentation else None

        sample = {}
        for camera, name in self.keys.cameras.items():
            img = resize_with_pad(ep.read_image(camera, t), self.width, self.height)
            if rng is not None:
                img = augment_image(img, self.augmentation, rng)
            sample[f"observation.images.{name}"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        sample["observation.state"] = torch.from_numpy(ep.state[t])
        sample["action"] = torch.from_numpy(ep.action[np.minimum(steps, ep.length - 1)])
        sample["action_is_pad"] = torch.from_numpy(steps >= ep.length)
        sample["task"] = ep.task(self.task_instruction)
        sample["episode_index"] = self.episode_indices[pos]
        sample["frame_index"] = t
        return sample
