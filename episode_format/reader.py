"""Reading episode files: discovery, schema check, lazy reading.

Opening an episode reads and checks only the low-dimensional arrays (state, action) and the metadata of the
camera datasets; a camera frame is read and decoded when asked for. Everything else in a file (timestamps, force
sensors at another rate, ...) is read only when asked for by name (`Episode.read_array`).
"""

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from episode_format import ACTION_KEY, EPISODE_SUFFIXES, IMAGES_GROUP
from episode_format.errors import EpisodeFormatError, UserError
from episode_format.jpeg import decode_jpeg


@dataclass(frozen=True)
class EpisodeKeys:
    """Where an episode's parts live in the file."""

    cameras: dict  # HDF5 camera name -> lerobot camera name (observation.images.<name>)
    state_keys: tuple  # concatenated in this order
    action_key: str = ACTION_KEY


TRAINING_ROOT = "dataset.root_dir in the config (or override it: --dataset.root_dir=DIR)"


def discover_episodes(root, source: str = TRAINING_ROOT) -> list[Path]:
    """Every *.h5 / *.hdf5 under root, recursively, sorted by relative path: index = position, stable.

    source: where root came from, for the error message (default: the training config, as train_smolvla_sim.py
    and compute_dataset_stats.py take it)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"No HDF5 files found in {root}: the directory does not exist. Check {source}, or collect episodes "
            f"with `python -m sim.collect --episodes 50 --out {root}`."
        )
    files = sorted(
        (p for p in root.rglob("*") if p.suffix in EPISODE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise UserError(
            f"No HDF5 files found in {root} (searched recursively for *.h5 and *.hdf5). Check {source}; "
            f"`ls -la {root}` shows what is there."
        )
    return files


class Episode:
    """One opened, schema-checked episode. Low-dimensional arrays in memory, frames read on demand.

    check_finite=False lets state/action rows with NaN/Inf through, for a reader that skips such rows itself."""

    def __init__(self, path, keys: EpisodeKeys, *, check_finite: bool = True):
        self.path = Path(path)
        self.keys = keys
        self.check_finite = check_finite
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise EpisodeFormatError(
                f"{self.path}: cannot open as HDF5 ({err}). The file is truncated or damaged: re-record or "
                "remove it (compute_dataset_stats.py --skip_bad lists every bad file)."
            ) from None
        try:
            self._check_and_load()
        except Exception:
            self._file.close()
            raise

    def _dataset(self, key: str) -> h5py.Dataset:
        obj = self._file.get(key)
        if not isinstance(obj, h5py.Dataset):
            present = []
            self._file.visititems(lambda name, o: present.append(name) if isinstance(o, h5py.Dataset) else None)
            raise EpisodeFormatError(
                f"{self.path}: missing key '{key}'. Keys present: {', '.join(present) or 'none'}. "
                "Set dataset.state_key / dataset.action_key (or use_ee_pose / use_qpos) to keys the file has."
            )
        return obj

    def _read_lowdim(self, key: str) -> np.ndarray:
        ds = self._dataset(key)
        try:
            arr = ds[()]
        except OSError as err:
            raise EpisodeFormatError(f"{self.path}: cannot read '{key}' ({err}); the file is damaged.") from None
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise EpisodeFormatError(f"{self.path}: '{key}' must be a numeric (T, D) array, got {arr.dtype} {arr.shape}.")
        return arr.astype(np.float32)

    def _check_and_load(self):
        parts = [self._read_lowdim(k) for k in self.keys.state_keys]
        self.action = self._read_lowdim(self.keys.action_key)
        lengths = {k: len(a) for k, a in zip(self.keys.state_keys, parts)}
        lengths[self.keys.action_key] = len(self.action)

        self._images = {}
        for camera in self.keys.cameras:
            key = f"{IMAGES_GROUP}/{camera}"
            if key not in self._file:
                group = self._file.get(IMAGES_GROUP)
                present = sorted(group.keys()) if isinstance(group, h5py.Group) else []
                raise EpisodeFormatError(
                    f"{self.path}: camera '{camera}' named in dataset.cameras is not in the file. Cameras present: "
                    f"{', '.join(present) or 'none'}. Fix the mapping, e.g. "
                    f"\"--dataset.cameras={{{', '.join(f'{c}: camera{i + 1}' for i, c in enumerate(present))}}}\"."
                )
            ds = self._file[key]
            is_jpeg = ds.ndim == 1 and h5py.check_vlen_dtype(ds.dtype) == np.uint8
            is_raw = ds.ndim == 4 and ds.shape[-1] == 3 and ds.dtype == np.uint8
            if not (is_jpeg or is_raw):
                raise EpisodeFormatError(
                    f"{self.path}: '{key}' must be one JPEG per frame (vlen uint8, shape (T,)) or uint8 RGB frames "
                    f"(T, H, W, 3), got dtype {ds.dtype} shape {ds.shape}."
                )
            self._images[camera] = ds
            lengths[key] = ds.shape[0]

        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise EpisodeFormatError(f"{self.path}: arrays have different lengths ({detail}); every array needs one row per frame.")
        self.length = len(self.action)
        if self.length == 0:
            raise EpisodeFormatError(f"{self.path}: the episode has no frames (T = 0). Remove it or re-record it.")
        self.state = np.concatenate(parts, axis=1)
        checked = (("state", self.state), (self.keys.action_key, self.action)) if self.check_finite else ()
        for name, arr in checked:
            bad = np.argwhere(~np.isfinite(arr))
            if len(bad):
                frame, dim = bad[0]
                raise EpisodeFormatError(
                    f"{self.path}: {name} has NaN/Inf at frame {frame} (dim {dim}; {len(bad)} bad values in all). "
                    "Fix or remove the episode."
                )
        self.attrs = {k: _plain(v) for k, v in self._file.attrs.items()}

    def is_jpeg(self, camera: str) -> bool:
        """Whether the camera stores one JPEG per frame (else raw RGB frames)."""
        return self._images[camera].ndim == 1

    def read_frame(self, camera: str, t: int) -> np.ndarray:
        """Frame t of an HDF5 camera as stored: JPEG bytes (1-D uint8) or raw uint8 RGB (H, W, 3)."""
        try:
            return self._images[camera][t]
        except OSError as err:
            raise EpisodeFormatError(f"{self.path}: cannot read camera '{camera}' frame {t} ({err}); the file is damaged.") from None

    def read_image(self, camera: str, t: int) -> np.ndarray:
        """Frame t of an HDF5 camera as uint8 RGB (H, W, 3)."""
        data = self.read_frame(camera, t)
        if not self.is_jpeg(camera):
            return data
        try:
            return decode_jpeg(data)
        except ValueError:
            raise EpisodeFormatError(
                f"{self.path}: camera '{camera}' frame {t} is not a decodable JPEG ({len(data)} bytes). "
                "Re-record the episode or remove it."
            ) from None

    def read_array(self, key: str) -> np.ndarray:
        """Another per-frame numeric array of the file (e.g. timestamp), as float32 (T, D), checked like the state."""
        arr = self._read_lowdim(key)
        if len(arr) != self.length:
            raise EpisodeFormatError(
                f"{self.path}: arrays have different lengths ({self.keys.action_key}: {self.length}, {key}: {len(arr)}); "
                "every array needs one row per frame."
            )
        return arr

    def task(self, task_instruction: str | None) -> str:
        """The instruction: the config's when set, else the episode's `task` attribute."""
        if task_instruction:
            return task_instruction
        task = self.attrs.get("task")
        if not task:
            raise EpisodeFormatError(
                f"{self.path}: no task instruction: dataset.task_instruction is null and the file has no 'task' "
                "attribute. Set dataset.task_instruction in the config."
            )
        return str(task)

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _plain(value):
    """HDF5 attribute -> plain Python (bytes -> str, numpy scalars -> Python numbers)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_episode(path, keys: EpisodeKeys, *, check_finite: bool = True) -> Episode:
    return Episode(path, keys, check_finite=check_finite)
