"""Writes one episode file atomically (temporary file, fsync, rename): a killed writer leaves no partial file."""

from pathlib import Path

import h5py
import numpy as np

from episode_format import (
    ACTION_KEY,
    EE_POSE_KEY,
    EXECUTED_ACTION_KEY,
    FORMAT_VERSION,
    IMAGES_GROUP,
    QPOS_KEY,
    TIMESTAMP_KEY,
)
from episode_format.atomic import atomic_output


def write_episode(
    path: str | Path,
    *,
    images: dict[str, list[np.ndarray]],
    qpos: np.ndarray,
    ee_pose: np.ndarray,
    action: np.ndarray,
    timestamp: np.ndarray,
    attrs: dict,
    executed_action: np.ndarray | None = None,
) -> None:
    """Write an episode of T frames: `images` maps each camera to its T JPEG buffers (episode_format.jpeg), the
    arrays have one row per frame, `attrs` become file attributes (next to format_version). executed_action: the
    commands actually sent, where they differ from `action` (the demonstrated one)."""
    if not len(action):
        raise ValueError(f"refusing to write {path}: the episode has no frames")
    with atomic_output(path) as temporary, h5py.File(temporary, "w") as f:
        for camera, buffers in images.items():
            frames = f.create_dataset(f"{IMAGES_GROUP}/{camera}", shape=(len(buffers),), dtype=h5py.vlen_dtype(np.uint8))
            for t, buffer in enumerate(buffers):
                frames[t] = buffer
        f.create_dataset(QPOS_KEY, data=qpos)
        f.create_dataset(EE_POSE_KEY, data=ee_pose)
        f.create_dataset(ACTION_KEY, data=action)
        f.create_dataset(TIMESTAMP_KEY, data=timestamp)
        if executed_action is not None:
            f.create_dataset(EXECUTED_ACTION_KEY, data=executed_action)
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in attrs.items():
            f.attrs[key] = value
