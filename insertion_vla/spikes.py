"""Each step's averaged loss watched: spikes and non-finite steps, with the samples that caused them.

A spike is a step (after the first few) whose loss exceeds `threshold` x the mean of the previous `window`
losses. A non-finite step (NaN/Inf loss or gradient) made no update; too many in a row stop the run. Both are
printed, logged and written with the episodes and frames of the batch at once (flushed), so a run that dies
right after one still says where to look in the data.
"""

import csv
import math
from collections import deque
from pathlib import Path

from insertion_vla import distributed as dist
from insertion_vla.errors import UserError
from insertion_vla.monitor import drop_rows_after

MIN_HISTORY = 5  # the first steps' losses are too noisy to define "normal"

CSV_HEADER = ["step", "loss", "avg", "ratio", "episode_indices", "files", "frame_indices"]


class LossSpikeDetector:
    def __init__(self, threshold: float, recent: deque):
        """recent: the previous losses, a deque bounded by the window; each update appends to it."""
        self.threshold = threshold
        self.recent = recent

    def update(self, loss: float):
        """-> (is_spike, recent mean, ratio); the loss then joins the history."""
        avg = sum(self.recent) / len(self.recent) if self.recent else float("nan")
        ratio = loss / avg if self.recent and avg > 0 else float("nan")
        is_spike = len(self.recent) >= MIN_HISTORY and ratio > self.threshold
        self.recent.append(loss)
        return is_spike, avg, ratio


class LossWatch:
    """What happens after each step: a finite loss is checked for a spike, a non-finite one counted.

    Every rank calls `check` with the same averaged loss, so all take part in the gathers of the batch's samples.
    """

    def __init__(self, training: dict, loss_history: deque, monitor, spike_log: "SpikeLog | None", paths: list[Path]):
        self.spikes = LossSpikeDetector(training["loss_spike_threshold"], loss_history)
        self.max_nonfinite_steps = training["max_nonfinite_steps"]
        self.nonfinite_in_a_row = 0
        self.monitor, self.spike_log, self.paths = monitor, spike_log, paths

    def check(self, step: int, loss: float, finite: bool, episodes: list[int], frames: list[int]):
        """episodes, frames: this rank's samples of the step. Raises UserError at max_nonfinite_steps in a row."""
        if finite:
            self.nonfinite_in_a_row = 0
            is_spike, avg, ratio = self.spikes.update(loss)
            if is_spike:
                episodes, frames = dist.gather_lists(episodes), dist.gather_lists(frames)
                row = sample_row(step, loss, avg, ratio, episodes, frames, self.paths)
                self._report(spike_line(step, loss, avg, ratio, episodes), step, {"spike/loss": loss, "spike/ratio": ratio}, row)
            return
        self.nonfinite_in_a_row += 1
        episodes, frames = dist.gather_lists(episodes), dist.gather_lists(frames)
        line = (f"⚠️  NON-FINITE loss/gradient at step {step}: update skipped ({self.nonfinite_in_a_row} in a row) | "
                f"Episodes: {sorted(set(episodes))}")
        self._report(line, step, {"train/nonfinite_steps": self.nonfinite_in_a_row},
                     sample_row(step, loss, math.nan, math.nan, episodes, frames, self.paths))
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise UserError(
                f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient (last at step {step}); "
                f"the last batch came from episodes {sorted(set(episodes))}, frames {frames}. Check those "
                "files (compute_dataset_stats.py flags NaN/Inf), lower optimizer.lr, or resume from an earlier checkpoint."
            )

    def _report(self, line: str, step: int, metrics: dict, row: dict):
        self.monitor.print(line)
        self.monitor.log(step, metrics)
        if self.spike_log:
            self.spike_log.write(line, row)


def spike_line(step, loss, avg, ratio, episodes) -> str:
    return f"⚠️  LOSS SPIKE at step {step}: {loss:.4f} (avg: {avg:.4f}, {ratio:.1f}x) | Episodes: {sorted(set(episodes))}"


def sample_row(step, loss, avg, ratio, episodes, frames, paths) -> dict:
    """A loss_spikes.csv row: the batch's samples by episode index, file name and frame."""
    return {"step": step, "loss": loss, "avg": avg, "ratio": ratio, "episode_indices": episodes,
            "files": [paths[e].name for e in episodes], "frame_indices": frames}


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
