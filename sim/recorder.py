"""Writes one episode as an HDF5 file in the toolkit's format (../shared/DESIGN.md), atomically.

    observations/images/<camera>  vlen uint8 (T,): one JPEG per frame (RGB when decoded)
    observations/qpos             float32 (T, 6): measured joint positions, rad
    observations/ee_pose          float32 (T, 6): needle-tip x, y, z (m) and mobile XYZ Euler angles (rad)
    action                        float32 (T, 6): commanded joint positions, rad
    timestamp                     float32 (T,): seconds since the episode start
    attributes: task, sim_seed, success, format_version, fps, image size, and every sampled scene value.

Frame t holds the observation the action at t was computed from. The file is written under a temporary
name (`<name>.tmp-<pid>`, which no reader globs), fsynced, then renamed: a killed run leaves no partial `.h5`.
"""

import os
from pathlib import Path

import cv2
import h5py
import numpy as np

FORMAT_VERSION = 1
TASK_INSTRUCTION = "Insert needle into eye trocar in simulation"
EE_POSE_CONVENTION = (
    "needle-tip pose in the robot base frame: x, y, z in m, then rx, ry, rz in rad, "
    "mobile XYZ Euler angles R = Rx(rx) Ry(ry) Rz(rz) of the tip frame (z along the needle towards the tip, "
    "x and y the flange's turned -90 deg about z)"
)


def encode_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buffer.reshape(-1)


def decode_jpeg(buffer: np.ndarray) -> np.ndarray:
    image = cv2.imdecode(np.asarray(buffer, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("cannot decode JPEG frame")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class EpisodeRecorder:
    """Collects frames in memory (images JPEG-encoded as they arrive) and writes them in one go."""

    def __init__(self, camera_names: tuple[str, ...], jpeg_quality: int = 95):
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {jpeg_quality}")
        self.camera_names = camera_names
        self.jpeg_quality = jpeg_quality
        self.images: dict[str, list[np.ndarray]] = {name: [] for name in camera_names}
        self.qpos: list[np.ndarray] = []
        self.ee_pose: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.timestamps: list[float] = []

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, observation: dict, action: np.ndarray, timestamp: float) -> None:
        for name in self.camera_names:
            self.images[name].append(encode_jpeg(observation["images"][name], self.jpeg_quality))
        self.qpos.append(np.asarray(observation["qpos"], dtype=np.float32))
        self.ee_pose.append(np.asarray(observation["ee_pose"], dtype=np.float32))
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.timestamps.append(timestamp)

    def write(self, path: str | Path, attrs: dict) -> None:
        """Write the episode to `path` atomically (temp file, fsync, rename)."""
        if not self.actions:
            raise ValueError(f"refusing to write {path}: the episode has no frames")
        path = Path(path)
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(temporary, "w") as f:
                for name in self.camera_names:
                    frames = f.create_dataset(
                        f"observations/images/{name}", shape=(len(self),), dtype=h5py.vlen_dtype(np.uint8)
                    )
                    for t, buffer in enumerate(self.images[name]):
                        frames[t] = buffer
                f.create_dataset("observations/qpos", data=np.stack(self.qpos))
                f.create_dataset("observations/ee_pose", data=np.stack(self.ee_pose))
                f.create_dataset("action", data=np.stack(self.actions))
                f.create_dataset("timestamp", data=np.asarray(self.timestamps, dtype=np.float32))
                f.attrs["task"] = TASK_INSTRUCTION
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["jpeg_quality"] = self.jpeg_quality
                f.attrs["ee_pose_convention"] = EE_POSE_CONVENTION
                for key, value in attrs.items():
                    f.attrs[key] = value
            with open(temporary, "rb") as f:
                os.fsync(f.fileno())
            os.replace(temporary, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            if temporary.exists():
                temporary.unlink()
