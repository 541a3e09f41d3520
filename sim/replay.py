"""Look at a recorded episode: the three cameras side by side with the joint and ee_pose trajectories.

    python -m sim.replay data/Eye_trocar_sim/episode_000000.h5 --out episode.png   # frames at 3 times + plots
    python -m sim.replay data/Eye_trocar_sim/episode_000000.h5 --out episode.mp4   # every frame, time cursor
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import imageio_ffmpeg
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the headless backend)
import numpy as np  # noqa: E402

from episode_format.atomic import atomic_output  # noqa: E402
from sim.recorder import decode_jpeg  # noqa: E402

CAMERAS_KEY = "observations/images"


@dataclass
class Episode:
    path: Path
    cameras: dict  # name -> h5py dataset of JPEG buffers (or uint8 frames)
    qpos: np.ndarray
    ee_pose: np.ndarray
    action: np.ndarray
    timestamp: np.ndarray
    attrs: dict

    def frame(self, camera: str, t: int) -> np.ndarray:
        data = self.cameras[camera][t]
        return decode_jpeg(data) if data.ndim == 1 else np.asarray(data)

    def cameras_side_by_side(self, t: int) -> np.ndarray:
        frames = [self.frame(name, t) for name in self.cameras]
        height = max(f.shape[0] for f in frames)
        return np.concatenate([np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in frames], axis=1)


def load_episode(file: h5py.File, path: Path) -> Episode:
    required = [CAMERAS_KEY, "observations/qpos", "observations/ee_pose", "action", "timestamp"]
    missing = [key for key in required if key not in file]
    if missing:
        raise SystemExit(f"error: {path} lacks {missing}; expected an episode written by `python -m sim.collect`")
    return Episode(
        path=path,
        cameras={name: file[CAMERAS_KEY][name] for name in sorted(file[CAMERAS_KEY])},
        qpos=file["observations/qpos"][:],
        ee_pose=file["observations/ee_pose"][:],
        action=file["action"][:],
        timestamp=file["timestamp"][:],
        attrs=dict(file.attrs),
    )


def plot_trajectories(episode: Episode, axes) -> None:
    t = episode.timestamp
    joints, position, rotation = axes
    for j in range(episode.action.shape[1]):
        line = joints.plot(t, np.degrees(episode.action[:, j]), label=f"J{j + 1}")[0]
        joints.plot(t, np.degrees(episode.qpos[:, j]), ".", markersize=2, color=line.get_color())
    joints.set_ylabel("joint, deg")
    joints.set_title("commanded (line) and measured (dots) joint positions", fontsize=9)
    joints.legend(fontsize=7, ncol=6, loc="best")
    for i, axis in enumerate("xyz"):
        position.plot(t, 1000.0 * episode.ee_pose[:, i], label=axis)
    position.set_ylabel("tip position, mm")
    position.legend(fontsize=7)
    for i, axis in enumerate(("rx", "ry", "rz")[: max(0, episode.ee_pose.shape[1] - 3)]):
        rotation.plot(t, np.degrees(episode.ee_pose[:, 3 + i]), label=axis)
    rotation.set_ylabel("tip XYZ Euler, deg")
    rotation.set_xlabel("time, s")
    if episode.ee_pose.shape[1] > 3:
        rotation.legend(fontsize=7)


def title(episode: Episode) -> str:
    a = episode.attrs
    return (
        f"{episode.path.name}: {len(episode.action)} frames, success={a.get('success')}, sim_seed={a.get('sim_seed')}, "
        f"final tip error {float(a.get('final_tip_error_mm', np.nan)):.3f} mm"
    )


def figure_to_rgb(figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def save_png(episode: Episode, out: Path) -> None:
    length = len(episode.action)
    times = sorted({0, length // 2, length - 1})
    strips = [episode.cameras_side_by_side(t) for t in times]
    strip_height = 12.0 * strips[0].shape[0] / strips[0].shape[1]  # inches, at a figure width of 12
    figure = plt.figure(figsize=(12, len(times) * strip_height + 3 * 2.5), dpi=100)
    grid = figure.add_gridspec(len(times) + 3, 1, height_ratios=[strip_height] * len(times) + [2.5] * 3)
    for row, (t, strip) in enumerate(zip(times, strips)):
        ax = figure.add_subplot(grid[row])
        ax.imshow(strip)
        ax.set_axis_off()
        ax.set_title(f"t = {episode.timestamp[t]:.2f} s ({', '.join(episode.cameras)})", fontsize=9)
    plot_axes = [figure.add_subplot(grid[len(times) + i]) for i in range(3)]
    plot_trajectories(episode, plot_axes)
    figure.suptitle(title(episode), fontsize=10)
    figure.tight_layout()
    with atomic_output(out) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)


def save_video(episode: Episode, out: Path, fps: float) -> None:
    first = episode.cameras_side_by_side(0)
    width = first.shape[1]
    figure, axes = plt.subplots(3, 1, figsize=(width / 100, 6), dpi=100, sharex=True)
    plot_trajectories(episode, axes)
    figure.suptitle(title(episode), fontsize=9)
    figure.tight_layout()
    plots = figure_to_rgb(figure)
    # Pixel columns of the start and end times, to draw a moving cursor on the pre-rendered plots.
    x0, x1 = (axes[0].transData.transform([(episode.timestamp[i], 0)])[0][0] for i in (0, -1))
    plt.close(figure)
    plots = cv2.resize(plots, (width, plots.shape[0] * width // plots.shape[1]))
    t_span = max(float(episode.timestamp[-1] - episode.timestamp[0]), 1e-9)

    def frame_at(t: int) -> np.ndarray:
        panel = plots.copy()
        x = int(round(x0 + (x1 - x0) * (episode.timestamp[t] - episode.timestamp[0]) / t_span))
        cv2.line(panel, (x, 0), (x, panel.shape[0] - 1), (220, 30, 30), 1)
        frame = np.concatenate([episode.cameras_side_by_side(t), panel], axis=0)
        return np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))  # H.264 wants even sizes

    height, width = frame_at(0).shape[:2]
    with atomic_output(out) as temporary:
        # The container is named explicitly: the temporary file's name does not end in .mp4.
        writer = imageio_ffmpeg.write_frames(
            str(temporary), (width, height), fps=fps, codec="libx264", quality=8, macro_block_size=1,
            output_params=["-f", "mp4"],
        )
        writer.send(None)
        for t in range(len(episode.action)):
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.episode, "r") as file:
        episode = load_episode(file, args.episode)
        if args.out.suffix.lower() == ".png":
            save_png(episode, args.out)
        else:
            save_video(episode, args.out, args.fps or float(episode.attrs.get("fps", 15.0)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
