"""Look at a recorded episode: the three cameras side by side with the joint and ee_pose trajectories.

    python -m sim.replay data/Eye_trocar_sim/episode_000000.h5 --out episode.png   # frames at 3 times + plots
    python -m sim.replay data/Eye_trocar_sim/episode_000000.h5 --out episode.mp4   # every frame, time cursor
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio_ffmpeg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the headless backend)
import numpy as np  # noqa: E402

from episode_format import EE_POSE_KEY, QPOS_KEY, TIMESTAMP_KEY  # noqa: E402
from episode_format.atomic import atomic_output  # noqa: E402
from episode_format.errors import exit_on_user_error  # noqa: E402
from episode_format.reader import Episode, EpisodeKeys, open_episode  # noqa: E402
from sim.scene import CAMERA_NAMES  # noqa: E402

# The simulator's cameras under their own names; qpos as the state, ee_pose and timestamp read by name.
REPLAY_KEYS = EpisodeKeys(cameras={name: name for name in CAMERA_NAMES}, state_keys=(QPOS_KEY,))


@dataclass
class Recording:
    """An opened episode (frames read on demand) and the arrays the plots show."""

    episode: Episode
    qpos: np.ndarray
    ee_pose: np.ndarray
    timestamp: np.ndarray

    @classmethod
    def of(cls, episode: Episode) -> "Recording":
        return cls(episode, episode.state, episode.read_array(EE_POSE_KEY), episode.read_array(TIMESTAMP_KEY)[:, 0])

    def cameras_side_by_side(self, t: int) -> np.ndarray:
        frames = [self.episode.read_image(name, t) for name in self.episode.keys.cameras]
        height = max(f.shape[0] for f in frames)
        return np.concatenate([np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames], axis=1)


def plot_trajectories(recording: Recording, axes) -> None:
    t = recording.timestamp
    joints, position, rotation = axes
    for j in range(recording.episode.action.shape[1]):
        line = joints.plot(t, np.degrees(recording.episode.action[:, j]), label=f"J{j + 1}")[0]
        joints.plot(t, np.degrees(recording.qpos[:, j]), ".", markersize=2, color=line.get_color())
    joints.set_ylabel("joint, deg")
    joints.set_title("commanded (line) and measured (dots) joint positions", fontsize=9)
    joints.legend(fontsize=7, ncol=6, loc="best")
    for i, axis in enumerate("xyz"):
        position.plot(t, 1000.0 * recording.ee_pose[:, i], label=axis)
    position.set_ylabel("tip position, mm")
    position.legend(fontsize=7)
    for i, axis in enumerate(("rx", "ry", "rz")[: max(0, recording.ee_pose.shape[1] - 3)]):
        rotation.plot(t, np.degrees(recording.ee_pose[:, 3 + i]), label=axis)
    rotation.set_ylabel("tip XYZ Euler, deg")
    rotation.set_xlabel("time, s")
    if recording.ee_pose.shape[1] > 3:
        rotation.legend(fontsize=7)


def title(recording: Recording) -> str:
    episode = recording.episode
    a = episode.attrs
    return (
        f"{episode.path.name}: {episode.length} frames, success={a.get('success')}, sim_seed={a.get('sim_seed')}, "
        f"final tip error {float(a.get('final_tip_error_mm', np.nan)):.3f} mm"
    )


def figure_to_rgb(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_png(recording: Recording, out: Path) -> None:
    length = recording.episode.length
    times = sorted({0, length // 2, length - 1})
    strips = [recording.cameras_side_by_side(t) for t in times]
    strip_height = 12.0 * strips[0].shape[0] / strips[0].shape[1]  # inches, at a figure width of 12
    figure = plt.figure(figsize=(12, len(times) * strip_height + 3 * 2.5), dpi=100)
    grid = figure.add_gridspec(len(times) + 3, 1, height_ratios=[strip_height] * len(times) + [2.5] * 3)
    for row, (t, strip) in enumerate(zip(times, strips)):
        ax = figure.add_subplot(grid[row])
        ax.imshow(strip)
        ax.set_axis_off()
        ax.set_title(f"t = {recording.timestamp[t]:.2f} s ({', '.join(recording.episode.keys.cameras)})", fontsize=9)
    plot_axes = [figure.add_subplot(grid[len(times) + i]) for i in range(3)]
    plot_trajectories(recording, plot_axes)
    figure.suptitle(title(recording), fontsize=10)
    figure.tight_layout()
    with atomic_output(out) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def save_video(recording: Recording, out: Path, fps: float) -> None:
    first = recording.cameras_side_by_side(0)
    width = first.shape[1]
    figure, axes = plt.subplots(3, 1, figsize=(width / 100, 6), dpi=100, sharex=True)
    plot_trajectories(recording, axes)
    figure.suptitle(title(recording), fontsize=9)
    figure.tight_layout()
    plots = figure_to_rgb(figure)
    # Pixel columns of the start and end times, to draw a moving cursor on the pre-rendered plots.
    x0, x1 = (axes[0].transData.transform([(recording.timestamp[i], 0)])[0][0] for i in (0, -1))
    plt.close(figure)
    plots = cv2.resize(plots, (width, plots.shape[0] * width // plots.shape[1]))
    t_span = max(float(recording.timestamp[-1] - recording.timestamp[0]), 1e-9)

    def frame_at(t: int) -> np.ndarray:
        panel = plots.copy()
        x = int(round(x0 + (x1 - x0) * (recording.timestamp[t] - recording.timestamp[0]) / t_span))
        cv2.line(panel, (x, 0), (x, panel.shape[0] - 1), (220, 30, 30), 1)
        frame = np.concatenate([recording.cameras_side_by_side(t), panel], axis=0)
        return np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))  # H.264 wants even sizes

    height, width = frame_at(0).shape[:2]
    with atomic_output(out) as temporary:
        # The container is named explicitly: the temporary file's name does not end in .mp4.
        writer = imageio_ffmpeg.write_frames(
            str(temporary), (width, height), fps=fps, codec="libx264", quality=8, macro_block_size=1,
            output_params=["-f", "mp4"],
        )
        writer.send(None)
        for t in range(recording.episode.length):
            writer.send(np.ascontiguousarray(frame_at(t)))
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render a recorded episode to a PNG summary or an MP4 video.")
    parser.add_argument("episode", type=Path, help="an episode .h5/.hdf5 file")
    parser.add_argument("--out", type=Path, required=True, help="output file: .png (summary) or .mp4 (video)")
    parser.add_argument("--fps", type=float, default=None, help="video frame rate (default: the file's fps, else 15)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() not in {".png", ".mp4"}:
        parser.error(f"--out must end in .png or .mp4, got {args.out}")
    if not args.episode.is_file():
        parser.error(f"episode file not found: {args.episode}")
    with open_episode(args.episode, REPLAY_KEYS) as episode:
        recording = Recording.of(episode)
        if args.out.suffix.lower() == ".png":
            save_png(recording, args.out)
        else:
            save_video(recording, args.out, args.fps or float(episode.attrs.get("fps", 15.0)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error(main))
