"""Would the trocar be located better near it, with the needle in view, than from an episode's first frame? A
supervised check of the image path on poses on the way in, apart from the policy.

    python -m benchmarks.bench_near_target_localization [--poses 2000] [--held_out 200] [--image_side 64]
           [--camera_sets tool_camera side_camera,top_camera,tool_camera] [--steps 2500] [--workers 2]
           [--models vit keypoints] [--keypoints_steps 6000] [--keypoints_crop 22 32 64]
           [sim.collect's --phantom_* and domain randomization flags; default: the narrow tier's placement]

Why: the localizer of insertion_vla.vision_pretrain sees the phantom from the start pose, where each fixed camera's
randomized pose (+/-2 mm, +/-1.15 deg: --camera_position, --camera_rotation) moves the trocar in its image by
several millimetres' worth: it locates the trocar to about 1.4 mm, and to 0.6 mm with the camera poses fixed
(benchmarks/README.md). Near the trocar the needle is in the same image: the trocar relative to the needle tip
hardly depends on where the camera is, the tool camera is 7-9 cm from it (1.3 mm per 64-pixel) instead of 35-50 cm.

What: poses rendered as `vision_pretrain --near_poses` renders them (render_near_pose: the scene placed and
randomized as sim.collect does, base seed 9100, held out 9200; the arm put by the expert's IK with its tip 10-30 mm
before the entry on the trocar axis, up to 4 mm across it, the needle tilted up to 4 deg; the recorder's JPEG). For every camera set a
Localizer (vision_pretrain's: the tiny-vision encoder and connector, a linear head) is trained to regress where the
entry is relative to the tip, in the tip's frame (x, y across the needle, z along it; mm). Prints the held-out
error per axis, across the needle (the distance in the x-y plane) and the share under 1 mm, beside a blind guess.

What the policy is given is the placement (dx, dy), so the table also has the error of the entry in the table's
plane, and where the error lies: its spread along the tool camera's viewing ray (depth, which one camera sees only
through the trocar's size) and across it. "height known": the entry's height does not depend on the placement (the
phantom moves and turns on the table), so the estimate's height error is known, and the part of its plane error
that goes with it can be taken out (the least-squares gain of the plane error on the height error, fitted on one
half of the held-out poses and applied to the other, both ways).

--models keypoints adds, for each camera set, a second model beside the toolkit's (vit): a small CNN on a crop of
each recorded frame around the needle tip at the recorded resolution (no downscaling; --keypoints_crop), spatial
soft-argmax keypoints into a two-layer head, the usual architecture for sub-pixel localization. Whether a different
image model would do better than SmolVLA's image path, apart from what the cameras can show; and with --width,
--height and the crop scaled, whether more pixels would.
"""

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from benchmarks.bench_learning import TIERS  # noqa: E402
from benchmarks.measure import load_average, machine, print_table  # noqa: E402
from insertion_vla.localizer import Localizer, as_pixels, localizer_images, trocar_of_placement  # noqa: E402
from insertion_vla.tiny_vlm import build_tiny_vlm  # noqa: E402
from insertion_vla.vision_pretrain import (  # noqa: E402
    NEAR_HELD_OUT_BASE_SEED,
    NEAR_RENDER_BASE_SEED,
    RenderSettings,
    image_side_problem,
    render_near_poses,
    train_localizer,
)
from sim.kinematics import matrix_from_euler_xyz, matrix_from_rotvec  # noqa: E402
from sim.randomization import add_randomization_args, randomization_from_args  # noqa: E402
from sim.scene import CAMERA_NAMES, TIP_FRAME_ROTVEC, TOOL_CAMERA_POSITION, TOOL_LENGTH  # noqa: E402

# The tool camera in the tip frame (m): the flange's mount less the tip's offset, turned into the tip's axes.
TOOL_CAMERA_IN_TIP = matrix_from_rotvec(TIP_FRAME_ROTVEC).T @ (
    np.asarray(TOOL_CAMERA_POSITION) - [0.0, 0.0, TOOL_LENGTH])


class KeypointLocalizer(torch.nn.Module):
    """A small CNN with spatial soft-argmax keypoints, the Localizer's interface (forward on [-1, 1] images
    (B, cameras, 3, H, W) -> normalized offsets; predict on uint8), each camera's crop through the same layers."""

    def __init__(self, cameras: tuple, width: int = 32, keypoints: int = 32):
        super().__init__()
        def block(i, o, stride):
            return [torch.nn.Conv2d(i, o, 3, stride, 1), torch.nn.GroupNorm(8, o), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 5, 1, 2), torch.nn.GroupNorm(8, width), torch.nn.ReLU(),
            *block(width, 2 * width, 2), *block(2 * width, 2 * width, 1), *block(2 * width, 2 * width, 1),
            torch.nn.Conv2d(2 * width, keypoints, 1))
        self.head = torch.nn.Sequential(torch.nn.Linear(len(cameras) * 2 * keypoints, 256), torch.nn.ReLU(),
                                        torch.nn.Linear(256, 3))
        self.register_buffer("target_mean", torch.zeros(3))
        self.register_buffer("target_std", torch.ones(3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.shape[0]
        maps = self.features(images.flatten(0, 1))
        weights = torch.softmax(maps.flatten(2), -1).view_as(maps)  # each keypoint's distribution over the pixels
        rows, cols = (torch.linspace(-1, 1, n) for n in maps.shape[2:])
        points = torch.cat([(weights.sum(3) * rows).sum(2), (weights.sum(2) * cols).sum(2)], 1)
        return self.head(points.reshape(batch, -1))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(as_pixels(images)) * self.target_std + self.target_mean


def keypoint_crops(frames: dict, cameras: tuple, crop: tuple[int, int, int]) -> np.ndarray:
    row, col, side = crop
    return np.stack([frames[c][row:row + side, col:col + side] for c in cameras]).transpose(0, 3, 1, 2)


def entry_errors(predicted_mm: torch.Tensor, poses: list) -> np.ndarray:
    """(N, 3) world-frame error (mm) of the entry each prediction (tip frame, mm) puts, from each pose's tip."""
    errors = []
    for offset, pose in zip(predicted_mm.numpy().astype(np.float64), poses):
        rotation = matrix_from_euler_xyz(pose.ee_pose[3:])
        entry, _ = trocar_of_placement(pose.placement)
        errors.append((pose.ee_pose[:3] + rotation @ (offset / 1000.0) - entry) * 1000.0)
    return np.array(errors)


def tool_camera_rays(poses: list) -> np.ndarray:
    """(N, 3) unit world directions from each pose's (nominal) tool camera to the entry."""
    rays = []
    for pose in poses:
        rotation = matrix_from_euler_xyz(pose.ee_pose[3:])
        entry, _ = trocar_of_placement(pose.placement)
        ray = entry - (pose.ee_pose[:3] + rotation @ TOOL_CAMERA_IN_TIP)
        rays.append(ray / np.linalg.norm(ray))
    return np.array(rays)


def height_known(errors: np.ndarray) -> np.ndarray:
    """The plane errors (N, 2) with the part that goes with the known height error taken out: the least-squares
    gain fitted on each half of the poses, applied to the other half."""
    halves = np.array_split(np.arange(len(errors)), 2)
    corrected = errors[:, :2].copy()
    for fit, apply in (halves, halves[::-1]):
        z = errors[fit, 2]
        gain = errors[fit, :2].T @ z / max(float(z @ z), 1e-12)
        corrected[apply] -= np.outer(errors[apply, 2], gain)
    return corrected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poses", type=int, default=2000, help="rendered poses to train on (default: %(default)s)")
    parser.add_argument("--held_out", type=int, default=200, help="poses of another seed to test on (default: %(default)s)")
    parser.add_argument("--camera_sets", nargs="+", default=["tool_camera", ",".join(CAMERA_NAMES)],
                        help="one localizer per set, cameras joined by commas (default: %(default)s)")
    parser.add_argument("--image_side", type=int, default=64, help="policy image side (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2500, help="training steps per set (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine decay (default: %(default)s)")
    parser.add_argument("--width", type=int, default=128, help="render width (default: %(default)s, the tiers')")
    parser.add_argument("--height", type=int, default=96, help="render height (default: %(default)s, the tiers')")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=("vit", "keypoints"), default=["vit"],
                        help="vit: the toolkit's localizer (SmolVLA's image path, a linear head); keypoints: a small "
                        "CNN with soft-argmax keypoints on a crop at the recorded resolution (--keypoints_crop) "
                        "(default: %(default)s)")
    parser.add_argument("--keypoints_crop", nargs=3, type=int, default=[22, 32, 64], metavar=("ROW", "COL", "SIDE"),
                        help="the keypoint model's square crop of each recorded frame: top-left pixel and side. The "
                        "default is the tool camera's 64x64 around the needle tip and the trocar in a 128x96 frame "
                        "(the tip about 5 pixels below the centre: the camera looks 15 mm past it); scale it with "
                        "--width and --height (default: %(default)s)")
    parser.add_argument("--keypoints_steps", type=int, default=6000,
                        help="training steps of the keypoint model (default: %(default)s)")
    parser.add_argument("--tmp_dir", type=Path, default=Path("/tmp"), help="where the VLM config is written")
    add_randomization_args(parser)
    parser.set_defaults(**TIERS["narrow"].placement)
    args = parser.parse_args()
    camera_sets = [tuple(s.split(",")) for s in args.camera_sets]
    unknown = sorted({c for s in camera_sets for c in s} - set(CAMERA_NAMES))
    if unknown:
        parser.error(f"--camera_sets: no camera {unknown}; the simulator's are {', '.join(CAMERA_NAMES)}")
    if args.poses < 2:
        parser.error(f"--poses {args.poses}: at least 2 (the targets are normalized by their spread)")
    if args.held_out < 4:
        parser.error(f"--held_out {args.held_out}: at least 4 (the height's gain is fitted on half of them)")
    row, col, side = args.keypoints_crop
    if "keypoints" in args.models and not (0 <= row and 0 <= col and side >= 8 and row + side <= args.height
                                           and col + side <= args.width):
        parser.error(f"--keypoints_crop {row} {col} {side}: the crop must lie within the {args.width}x{args.height} "
                     "frames (--width, --height) and be at least 8 pixels: e.g. 22 32 64 for 128x96, 44 64 128 for "
                     "256x192")
    vlm_dir = build_tiny_vlm(args.tmp_dir / "near_target_localization_tiny-vision", "tiny-vision")
    vlm_config = AutoConfig.from_pretrained(vlm_dir)
    problem = image_side_problem(vlm_config, args.image_side, "the tiny-vision preset")
    if problem:
        parser.error(problem)

    phantom, dr = randomization_from_args(args)
    settings = RenderSettings(phantom=phantom, dr=dr, width=args.width, height=args.height)
    started = time.perf_counter()
    train_poses = render_near_poses(args.poses, settings, NEAR_RENDER_BASE_SEED, args.workers)
    test_poses = render_near_poses(args.held_out, settings, NEAR_HELD_OUT_BASE_SEED, args.workers)
    train_offsets = torch.from_numpy(np.stack([pose.offset_mm for pose in train_poses]))
    test_offsets = torch.from_numpy(np.stack([pose.offset_mm for pose in test_poses]))
    rays = tool_camera_rays(test_poses)
    print(f"machine: {machine()}; {load_average()}; rendered {args.poses} + {args.held_out} held-out poses in "
          f"{time.perf_counter() - started:.0f} s; {args.image_side}x{args.image_side} images")

    def errors(predicted: torch.Tensor) -> list[str]:
        error = predicted - test_offsets
        across = error[:, :2].norm(dim=1)
        world = entry_errors(predicted, test_poses)
        along_ray = np.einsum("ij,ij->i", world, rays)
        across_ray = np.linalg.norm(world - along_ray[:, None] * rays, axis=1)
        in_plane = np.linalg.norm(world[:, :2], axis=1)
        return [*(f"{e:.2f}" for e in error.abs().mean(0)), f"{across.mean():.2f}", f"{(across < 1).float().mean():.0%}",
                f"{in_plane.mean():.2f}", f"{np.linalg.norm(height_known(world), axis=1).mean():.2f}",
                f"{along_ray.std():.2f} / {np.sqrt((across_ray**2).mean() / 2):.2f}"]

    rows = [["blind guess", "-", "-", *errors(train_offsets.mean(0).expand_as(test_offsets)), "-"]]
    for cameras in camera_sets:
        for name in args.models:
            torch.manual_seed(0)
            if name == "vit":
                def inputs(poses, cameras=cameras):
                    return np.stack([localizer_images(p.frames, cameras, args.image_side) for p in poses])
                model, steps = Localizer(vlm_config, cameras, args.image_side), args.steps
            else:
                def inputs(poses, cameras=cameras):
                    return np.stack([keypoint_crops(p.frames, cameras, tuple(args.keypoints_crop)) for p in poses])
                model, steps = KeypointLocalizer(cameras), args.keypoints_steps
            test_images = torch.from_numpy(inputs(test_poses))
            started = time.perf_counter()
            last = train_localizer(model, torch.from_numpy(inputs(train_poses)), train_offsets, steps=steps,
                                   batch_size=args.batch_size, lr=args.lr, seed=0,
                                   evaluate=lambda step, loss, predict: (loss, predict(test_images)), every=steps)[-1]
            rows.append([" + ".join(cameras), f"{name}, {steps} steps", f"{last[0]:.3f}", *errors(last[1]),
                         f"{time.perf_counter() - started:.0f}"])
    print("held-out error of the entry relative to the needle tip (mean absolute, mm; the entry in the plane: mean "
          "distance, mm; along / across the tool camera's ray: standard deviation per axis, mm)")
    print_table(["cameras", "model", "train loss (normalized)", "x", "y", "z (along)", "across the needle",
                 "under 1 mm", "entry in the plane", "height known", "along / across the ray", "train s"], rows)


if __name__ == "__main__":
    main()
