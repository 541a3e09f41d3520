"""Loss-spike detection and its log: which step, how far above the recent mean, and which samples did it.

A spike is a step (after the first few) whose loss exceeds `threshold` x the mean of the previous `window`
losses. The episodes and frames of the batch are written at once (flushed), so a run that dies right
after a spike still says where to look in the data.
"""

import csv
from collections import deque
from pathlib import Path

from insertion_vla.monitor import drop_rows_after

MIN_HISTORY = 5  # the first steps' losses are too noisy to define "normal"

CSV_HEADER = ["step", "loss", "avg", "ratio", "episode_indices", "files", "frame_indices"]


class LossSpikeDetector:
    def __init__(self, threshold: float, window: int, history=()):
        self.threshold = threshold
        self.recent = deque(history, maxlen=window)

    def update(self, loss: float):
        """-> (is_spike, recent mean, ratio); the loss then joins the history."""
        avg = sum(self.recent) / len(self.recent) if self.recent else float("nan")
        ratio = loss / avg if self.recent and avg > 0 else float("nan")
        is_spike = len(self.recent) >= MIN_HISTORY and ratio > self.threshold
        self.recent.append(loss)
        return is_spike, avg, ratio


def spike_line(step, loss, avg, ratio, episodes) -> str:
    return f"⚠️  LOSS SPIKE at step {step}: {loss:.4f} (avg: {avg:.4f}, {ratio:.1f}x) | Episodes: {sorted(set(episodes))}"


class SpikeLog:
    """loss_spikes.txt (the console lines) and loss_spikes.csv (one row per spike) in output_dir."""

    def __init__(self, output_dir: Path, resume_step: int):
        self.txt = Path(output_dir) / "loss_spikes.txt"
        self.csv = Path(output_dir) / "loss_spikes.csv"
        drop_rows_after(self.csv, resume_step)
        if self.txt.is_file():  # its lines carry the step after "at step"
            lines = self.txt.read_text().splitlines(keepends=True)
            self.txt.write_text("".join(ln for ln in lines if _txt_step(ln) <= resume_step))
        self.txt.touch()  # present even when nothing spiked: an empty file is the good news
        if not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(CSV_HEADER)

    def write(self, line: str, row: dict):
        with open(self.txt, "a") as f:
            f.write(line + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([row[k] if not isinstance(row[k], list) else " ".join(map(str, row[k]))
                                    for k in CSV_HEADER])


def _txt_step(line: str) -> int:
    try:
        return int(line.split("at step ", 1)[1].split(":", 1)[0])
    except (IndexError, ValueError):
        return -1
