"""PNG figures a person would rather look at than read: loss curves and predicted vs. true joint trajectories."""

import csv
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from episode_format.atomic import atomic_output  # noqa: E402


def _save(fig, path: Path):
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_loss_curves(metrics_csv: Path, out_png: Path):
    """train/loss, train/action_loss and val/loss over steps, from metrics.csv (log scale)."""
    series = defaultdict(list)
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["metric"] in ("train/loss", "train/action_loss", "val/loss", "val/action_loss"):
                series[row["metric"]].append((int(row["step"]), float(row["value"])))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in sorted(series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, "o-" if name.startswith("val") else "-", label=name, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for pts in series.values() for _, v in pts) and series:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Training and validation loss")
    _save(fig, out_png)


def plot_trajectories(episodes: list[tuple[str, object, object]], out_png: Path, title: str):
    """One row per episode, one column per joint: recorded action (solid) vs. predicted chunks (dashed), degrees."""
    n_joints = episodes[0][1].shape[1]
    fig, axes = plt.subplots(len(episodes), n_joints, figsize=(2.6 * n_joints, 2.2 * len(episodes)), squeeze=False)
    for row, (name, true, pred) in enumerate(episodes):
        for j in range(n_joints):
            ax = axes[row][j]
            ax.plot(true[:, j] * 180 / math.pi, "k-", lw=1.2, label="recorded")
            ax.plot(pred[:, j] * 180 / math.pi, "r--", lw=1.0, label="predicted")
            if row == 0:
                ax.set_title(f"q{j + 1} (deg)", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, out_png)
