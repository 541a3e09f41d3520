"""Every rollout as an episode of the toolkit's format (episode_format, through sim.recorder.EpisodeRecorder: JPEG
frames per camera, qpos, ee_pose, the executed action, timestamps), written atomically when the rollout ends, so
that compute_dataset_stats.py, training and evaluate_smolvla_sim.py --episodes_from read it as they are. And the
dry run's log: what the policy would have commanded, against the measured joints."""

import csv
import io
import re
from pathlib import Path

import numpy as np

from episode_format import EPISODE_SUFFIXES
from episode_format.atomic import atomic_write_text
from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from sim.recorder import EpisodeRecorder

EPISODE_NAME = re.compile(r"^episode_(\d+)$")


def next_episode_path(directory: Path) -> Path:
    """DIR/episode_NNNNNN.h5, one past the highest index there (the collector's naming)."""
    taken = [int(m.group(1)) for p in Path(directory).glob("episode_*")
             if p.suffix in EPISODE_SUFFIXES and (m := EPISODE_NAME.match(p.stem))]
    return Path(directory) / f"episode_{max(taken, default=-1) + 1:06d}.h5"


class RolloutRecording:
    """Frame t: the observation of tick t and the command executed at tick t (the `action` training reads)."""

    def __init__(self, path: Path, cameras: tuple, jpeg_quality: int = DEFAULT_JPEG_QUALITY):
        self.path = Path(path)
        self._recorder = EpisodeRecorder(cameras, jpeg_quality)

    def __len__(self) -> int:
        return len(self._recorder)

    def add(self, observation: dict, command: np.ndarray, time_s: float) -> None:
        self._recorder.add(observation, command, time_s)

    def write(self, attrs: dict) -> None:
        """The episode file, atomically; `attrs` join the recorder's (task, JPEG quality, ee_pose convention)."""
        self._recorder.write(self.path, attrs)


class DryRunLog:
    """A dry run's predictions: per tick, the measured joints and the command that would have been sent (deg)."""

    def __init__(self):
        self.rows: list[list[float]] = []

    def add(self, observation: dict, command: np.ndarray, time_s: float) -> None:
        measured, commanded = np.degrees(observation["qpos"]), np.degrees(command)
        self.rows.append([len(self.rows), round(time_s, 4), *measured.round(4), *commanded.round(4),
                          *(commanded - measured).round(4)])

    def write(self, path: Path) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["tick", "time_s", *(f"measured_q{j}_deg" for j in range(1, 7)),
                         *(f"command_q{j}_deg" for j in range(1, 7)), *(f"difference_q{j}_deg" for j in range(1, 7))])
        writer.writerows(self.rows)
        atomic_write_text(path, text.getvalue())
