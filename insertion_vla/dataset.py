"""A torch Dataset of (episode, frame) samples in lerobot's batch keys.

Sample at frame t: the cameras' images at t (uint8, 3xHxW, resized with padding as SmolVLA does), the state at
t, the actions t..t+horizon-1 (the last action repeated past the episode's end, `action_is_pad` true there),
the task, and where it came from (episode and frame index; the sample index asked for). Images stay uint8 so the worker-to-main transport
is 4x smaller; the training step turns them into float [0, 1] on the device. With decode="cuda" the images are
the stored JPEG bytes instead (1-D uint8), which insertion_vla.gpu_images decodes batched on the device.

With replace_bad_frames, a sample that needs a bad frame (a JPEG that does not decode, an unreadable frame, a
state or action row with NaN/Inf) is replaced by another sample, drawn as a function of (seed, epoch, index,
attempt) so a resumed run sees the same data; what was bad travels in the sample (`bad_frames`) for the
training loop to log and count (insertion_vla.bad_samples), since DataLoader workers cannot keep one log.
"""

import bisect
import json
import os
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from episode_format.errors import EpisodeFormatError
from episode_format.reader import EpisodeKeys, open_episode
from insertion_vla.errors import UserError

OPEN_EPISODES_PER_WORKER = 32  # bounded, so memory does not grow with the number of episodes
BAD_FRAMES = "bad_frames"  # sample key: JSON list of the bad frames met on the way to this sample ("[]": none)
MAX_REPLACEMENT_DRAWS = 20  # replacements tried for one sample before the data is called unusable


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


class BadFrame(Exception):
    """A frame a sample needs cannot be used; `record` says which: {file, camera, frame, problem} (camera is empty
    for a state/action row; the problem names the frame too)."""

    def __init__(self, path, camera: str, frame: int, problem: str):
        super().__init__(f"{path}: {problem}")
        self.record = {"file": str(path), "camera": camera, "frame": int(frame), "problem": problem}


class EpisodeDataset(Dataset):
    """All frames of the given episodes. `episode_indices` are the episodes' indices in the full discovery
    list, carried in every sample so a loss spike can name the files it came from.

    decode: "cpu" (images decoded and resized here) or "cuda" (JPEG bytes returned, see insertion_vla.gpu_images).
    replace_bad_frames: a sample needing a bad frame is replaced (see the module's doc); else its error is raised.
    estimator: an insertion_vla.localizer.PlacementEstimator (dataset.placement_estimate; or the TruePlacement of
    dataset.true_placement) whose estimate at each frame is appended to that frame's state; None: the recorded
    state alone. The estimate at a frame depends on the frames before it: with replace_bad_frames, one it cannot
    read is a bad frame of every sample from it on.
    """

    def __init__(self, paths, keys: EpisodeKeys, *, horizon: int, image_size, task_instruction=None,
                 episode_indices=None, augmentation: dict | None = None, seed: int = 0, decode: str = "cpu",
                 replace_bad_frames: bool = False, estimator=None):
        self.paths = [Path(p) for p in paths]
        self.keys = keys
        self.horizon = horizon
        self.width, self.height = image_size  # lerobot's resize_imgs_with_padding order
        self.task_instruction = task_instruction
        self.episode_indices = list(episode_indices) if episode_indices is not None else list(range(len(self.paths)))
        self._position = {e: pos for pos, e in enumerate(self.episode_indices)}
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        if decode not in ("cpu", "cuda"):
            raise UserError(f"dataset.decode={decode!r}: choose cpu or cuda.")
        if decode == "cuda" and augmentation:
            raise UserError("dataset.augment needs dataset.decode=cpu: the augmentation works on decoded images.")
        self.decode = decode
        self.replace_bad_frames = replace_bad_frames

        self.lengths, dims = [], {}
        self.estimates = []  # per episode: the placement estimates appended to its states, (T, 3) or (T, 0)
        self.estimate_bad_from = {}  # episode position -> the record of the bad frame from which its estimates are unknown
        for path in self.paths:  # opening checks every file's schema up front, before any training step
            with self._open_episode(path) as ep:
                ep.task(task_instruction)
                self.lengths.append(ep.length)
                self.estimates.append(self._estimates(ep, estimator) if estimator is not None
                                      else np.zeros((ep.length, 0), np.float32))
                dims.setdefault((ep.state.shape[1] + self.estimates[-1].shape[1], ep.action.shape[1]), path)
                raw = [camera for camera in keys.cameras if not ep.is_jpeg(camera)]
                if decode == "cuda" and raw:
                    raise UserError(f"{path}: camera {', '.join(raw)} stores raw RGB frames, but dataset.decode=cuda "
                                    "decodes JPEGs on the device. Use dataset.decode=cpu for this data.")
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

    def sample_index(self, position: int, frame: int) -> int:
        """(position in self.paths, frame) -> sample index: the inverse of locate."""
        return self._starts[position] + frame

    def index_of(self, episode_index: int, frame: int) -> int:
        """(episode index as carried in samples, frame) -> sample index."""
        return self.sample_index(self._position[episode_index], frame)

    def replacement(self, index: int, attempt: int) -> int:
        """The sample that stands in for `index` at its `attempt`-th replacement (1, 2, ...) in this epoch."""
        return int(np.random.default_rng([self.seed, self.epoch, index, attempt]).integers(len(self)))

    def _open_episode(self, path):
        # with replacement, NaN/Inf rows are skipped sample by sample instead of refusing the file
        return open_episode(path, self.keys, check_finite=not self.replace_bad_frames)

    def _episode(self, pos: int):
        if os.getpid() != self._pid:  # a forked worker must not share the parent's HDF5 handles
            self._open, self._pid = OrderedDict(), os.getpid()
        ep = self._open.pop(pos, None) or self._open_episode(self.paths[pos])
        self._open[pos] = ep
        if len(self._open) > OPEN_EPISODES_PER_WORKER:
            self._open.popitem(last=False)[1].close()
        return ep

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._first_usable(index, first_attempt=0, decode_images=self.decode == "cpu", bad=[])

    def replacement_for(self, delivered: dict, bad: dict) -> dict:
        """The sample that follows `delivered` (a sample of this dataset) in its index's replacements, once its frame
        `bad` (a BadFrame record) turned out bad after loading (a JPEG the device could not decode), as if met
        here; its images decoded here, on the CPU."""
        met = [*json.loads(delivered[BAD_FRAMES]), bad]  # one bad frame per attempt before it
        return self._first_usable(int(delivered["sample_index"]), first_attempt=len(met), decode_images=True, bad=met)

    def _first_usable(self, index: int, first_attempt: int, decode_images: bool, bad: list) -> dict:
        """Sample `index` (attempt 0), else its replacements in turn; `bad` collects the bad frames met."""
        for attempt in range(first_attempt, MAX_REPLACEMENT_DRAWS + 1):
            candidate = self.replacement(index, attempt) if attempt else index
            try:
                sample = self._sample(candidate, decode_images)
            except BadFrame as err:
                if not self.replace_bad_frames:
                    raise err.__cause__ or err from None
                bad.append(err.record)
                continue
            sample[BAD_FRAMES] = json.dumps(bad)
            sample["sample_index"] = index  # the index asked for; the sample may be a replacement
            return sample
        files = sorted({r["file"] for r in bad})
        raise UserError(f"sample {index} and {MAX_REPLACEMENT_DRAWS} replacements drawn for it all need bad frames "
                        f"(in {', '.join(files)}): most of the data is unreadable. Check the files "
                        "(compute_dataset_stats.py --skip_bad lists bad ones).")

    def _estimates(self, ep, estimator) -> np.ndarray:
        """(T, 3): the episode's estimates; NaN from a frame they cannot read (replace_bad_frames), kept as
        estimate_bad_from, else its error raised."""
        rows = []
        try:
            for row in estimator.frame_estimates(ep, lambda camera, t: read_image(ep, camera, t)):
                rows.append(row)
        except BadFrame as err:
            if not self.replace_bad_frames:
                raise err.__cause__ or err from None
            k = len(rows)
            self.estimate_bad_from[len(self.estimates)] = {
                **err.record, "problem": f"{err.record['problem']} (the placement estimate of frames {k}..{ep.length - 1} "
                                         "needs it: those samples are replaced)"}
            rows += [np.full(3, np.nan, np.float32)] * (ep.length - k)  # dx, dy, yaw
        return np.stack(rows)

    def _sample(self, index: int, decode_images: bool) -> dict:
        """Sample `index` as it is; BadFrame when a frame it needs is bad."""
        pos, t = self.locate(index)
        path = self.paths[pos]
        try:
            ep = self._episode(pos)
        except EpisodeFormatError as err:
            raise BadFrame(path, "", t, _problem(err, path)) from err
        steps = np.arange(t, t + self.horizon)
        rows = np.minimum(steps, ep.length - 1)
        for name, values, frames in (("state", ep.state[t:t + 1], [t]), (self.keys.action_key, ep.action[rows], rows)):
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                frame = frames[np.argmin(finite)]
                raise BadFrame(path, "", frame, f"{name} has NaN/Inf at frame {frame}.")
        bad = self.estimate_bad_from.get(pos)
        if bad is not None and t >= bad["frame"]:  # the estimate at t needs that frame
            raise BadFrame(path, bad["camera"], bad["frame"], bad["problem"])
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augmentation else None

        sample = {}
        for camera, name in self.keys.cameras.items():
            if decode_images:
                img = resize_with_pad(read_image(ep, camera, t), self.width, self.height)
                if rng is not None:
                    img = augment_image(img, self.augmentation, rng)
                image = self.image_tensor(img)
            else:
                image = torch.from_numpy(read_frame(ep, camera, t))
            sample[f"observation.images.{name}"] = image
        sample["observation.state"] = torch.from_numpy(np.concatenate([ep.state[t], self.estimates[pos][t]]))
        sample["action"] = torch.from_numpy(ep.action[rows])
        sample["action_is_pad"] = torch.from_numpy(steps >= ep.length)
        sample["task"] = ep.task(self.task_instruction)
        sample["episode_index"] = self.episode_indices[pos]
        sample["frame_index"] = t
        return sample

    @staticmethod
    def image_tensor(img: np.ndarray) -> torch.Tensor:
        """A decoded, resized uint8 (H, W, 3) image as samples carry it: (3, H, W), lerobot's layout.
        (benchmarks/bench_dataloader.py measures the (H, W, 3) alternative through this.)"""
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    def collate(self, samples: list[dict]) -> dict:
        """DataLoader collate_fn: torch's default, except that JPEG bytes (decode="cuda") stay lists per camera."""
        if self.decode == "cpu":
            return default_collate(samples)
        jpeg_keys = [f"observation.images.{name}" for name in self.keys.cameras.values()]
        rest = default_collate([{k: v for k, v in s.items() if k not in jpeg_keys} for s in samples])
        return {**{k: [s[k] for s in samples] for k in jpeg_keys}, **rest}


def bad_frames_of(batch: dict) -> list[dict]:
    """The bad-frame records of a collated batch, taken out of it (lerobot's preprocessor has no use for them)."""
    return [record for text in batch.pop(BAD_FRAMES) for record in json.loads(text)]


def read_image(ep, camera: str, t: int) -> np.ndarray:
    """Frame t of a camera, decoded; BadFrame when it cannot be."""
    return _frame(ep.read_image, ep, camera, t)


def read_frame(ep, camera: str, t: int) -> np.ndarray:
    """Frame t of a camera as stored (JPEG bytes); BadFrame when it cannot be read."""
    return _frame(ep.read_frame, ep, camera, t)


def _frame(read, ep, camera: str, t: int) -> np.ndarray:
    try:
        return read(camera, t)
    except EpisodeFormatError as err:
        raise BadFrame(ep.path, camera, t, _problem(err, ep.path)) from err


def _problem(err: EpisodeFormatError, path) -> str:
    """The reader's message without the file name in front (the record names the file)."""
    return str(err).removeprefix(f"{path}: ")
