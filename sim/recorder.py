"""Records one simulated episode and writes it in the toolkit's episode format (episode_format, which documents the
layout), with the simulator's own attributes: task instruction, JPEG quality and the ee_pose convention.

Frame t holds the observation the action at t was computed from. Where the command sent to the arm differs from
the demonstrated action (the collector's injected noise or drift), both are kept: `action` and `executed_action`.
"""

from pathlib import Path

import numpy as np

from episode_format.jpeg import DEFAULT_JPEG_QUALITY, encode_jpeg
from episode_format.writer import write_episode

TASK_INSTRUCTION = "Insert needle into eye trocar in simulation"
EE_POSE_CONVENTION = (
    "needle-tip pose in the robot base frame: x, y, z in m, then rx, ry, rz in rad, "
    "mobile XYZ Euler angles R = Rx(rx) Ry(ry) Rz(rz) of the tip frame (z along the needle towards the tip, "
    "x and y the flange's turned -90 deg about z)"
)


class EpisodeRecorder:
    """Collects frames in memory (images JPEG-encoded as they arrive) and writes them in one go."""

    def __init__(self, camera_names: tuple[str, ...], jpeg_quality: int = DEFAULT_JPEG_QUALITY):
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"JPEG quality must be in [1, 100], got {jpeg_quality}")
        self.camera_names = camera_names
        self.jpeg_quality = jpeg_quality
        self.images: dict[str, list[np.ndarray]] = {name: [] for name in camera_names}
        self.qpos: list[np.ndarray] = []
        self.ee_pose: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.executed: list[np.ndarray] = []
        self.timestamps: list[float] = []

    def __len__(self) -> int:
        return len(self.actions)

    def add(self, observation: dict, action: np.ndarray, timestamp: float, executed: np.ndarray | None = None) -> None:
        """executed: the command sent, when it is not `action` (given for every frame or for none)."""
        for name in self.camera_names:
            self.images[name].append(encode_jpeg(observation["images"][name], self.jpeg_quality))
        self.qpos.append(np.asarray(observation["qpos"], dtype=np.float32))
        self.ee_pose.append(np.asarray(observation["ee_pose"], dtype=np.float32))
        self.actions.append(np.asarray(action, dtype=np.float32))
        if executed is not None:
            self.executed.append(np.asarray(executed, dtype=np.float32))
        self.timestamps.append(timestamp)

    def write(self, path: str | Path, attrs: dict) -> None:
        """Write the episode to `path` atomically (temp file, fsync, rename); `attrs` join the simulator's."""
        write_episode(
            path,
            images=self.images,
            qpos=np.asarray(self.qpos, dtype=np.float32),
            ee_pose=np.asarray(self.ee_pose, dtype=np.float32),
            action=np.asarray(self.actions, dtype=np.float32),
            timestamp=np.asarray(self.timestamps, dtype=np.float32),
            executed_action=np.asarray(self.executed, dtype=np.float32) if self.executed else None,
            attrs={
                "task": TASK_INSTRUCTION,
                "jpeg_quality": self.jpeg_quality,
                "ee_pose_convention": EE_POSE_CONVENTION,
                **attrs,
            },
        )
