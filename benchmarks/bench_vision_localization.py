"""Can the tiny VLM's vision encoder, trained from scratch, see where the phantom stands? A supervised check of the
vision path alone, apart from the policy.

    python -m benchmarks.bench_vision_localization (--episodes DIR | --render N [--phantom_* ...]) --held_out DIR
           [--preset tiny-vision] [--frames 10] [--steps 2000] [--cameras side_camera tool_camera top_camera]
           [--image_side 64]

insertion_vla.vision_pretrain's Localizer (the vision encoder and connector of a `insertion_vla.tiny_vlm` preset,
random weights in PyTorch's default initialization, one shared encoder for every camera as in SmolVLA, a linear
head on the image tokens) is trained to regress the phantom's offset (dx, dy in mm, yaw in deg: the episode files' attributes) from
the first `--frames` frames of each episode, seen as the policy sees them (resized with padding to
`--image_side` squared, 64x64 as in the benchmark tiers, scaled to [-1, 1]). Use home-start collections (no
--start_joint_range_deg): then the offset is what the images show. Or, to ask how the error falls with the
number of placements without collecting whole demonstrations, `--render N`: N placements straight from the
simulator as insertion_vla.vision_pretrain renders them (frame 0 of each, JPEG-coded as an episode records it;
base seed 9000), placed and randomized by sim.collect's flags (pass the held-out episodes'
range; with --episodes those flags and --width/--height are not used).

Prints, every 250 steps, the error on the held-out episodes' first frame next to the spread of their offsets (the
error of a blind guess: the mean offset). An encoder that cannot get well under the spread here cannot give the
policy the placement either. benchmarks/README.md ("Does it learn?").
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from benchmarks.measure import load_average, machine, print_table
from episode_format.reader import EpisodeKeys, discover_episodes, open_episode
from insertion_vla.localizer import Localizer, localizer_images, placement_offsets
from insertion_vla.tiny_vlm import build_tiny_vlm
from insertion_vla.vision_pretrain import (
    RenderSettings,
    image_side_problem,
    render_placements,
    train_localizer,
)
from sim.randomization import add_randomization_args, randomization_from_args
from sim.scene import CAMERA_NAMES


def load_frames(folder: Path, cameras: tuple, frames: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images (episodes, frames, cameras, 3, side, side) uint8, offsets (episodes, 3) in mm, mm, deg."""
    keys = EpisodeKeys(cameras={name: name for name in cameras}, state_keys=("observations/qpos",))
    images, offsets = [], []
    for path in discover_episodes(folder, source="--episodes"):
        with open_episode(path, keys) as episode:
            shown = [localizer_images({name: episode.read_image(name, t) for name in cameras}, cameras, side)
                     for t in range(min(frames, episode.length))]
            offsets.append(placement_offsets(episode.attrs))
        images.append(np.array(shown))
    return torch.from_numpy(np.array(images)), torch.tensor(offsets, dtype=torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--episodes", type=Path, help="home-start placed episodes to train on")
    source.add_argument("--render", type=int, metavar="N",
                        help="train on frame 0 of N placements rendered by the simulator instead (see above)")
    parser.add_argument("--held_out", type=Path, required=True, help="other episodes of the same kind, to test on")
    parser.add_argument("--preset", default="tiny-vision", help="insertion_vla.tiny_vlm preset (default: %(default)s)")
    parser.add_argument("--cameras", nargs="+", default=list(CAMERA_NAMES), help="cameras seen (default: all three)")
    parser.add_argument("--image_side", type=int, default=64,
                        help="images resized with padding to this square, in pixels (default: %(default)s, the tiers' "
                             "policy images; a multiple of patch size x scale factor, 16 for tiny-vision)")
    parser.add_argument("--frames", type=int, default=10, help="first frames of each training episode (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine decay (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--tmp_dir", type=Path, default=Path("/tmp"), help="where the VLM config is written")
    parser.add_argument("--width", type=int, default=128, help="--render: render width (default: %(default)s)")
    parser.add_argument("--height", type=int, default=96, help="--render: render height (default: %(default)s)")
    add_randomization_args(parser)
    args = parser.parse_args()

    if args.render is not None and args.render < 2:
        parser.error(f"--render {args.render}: at least 2 placements are needed (the offsets are normalized by "
                     "their spread), e.g. --render 160")
    vlm_dir = build_tiny_vlm(args.tmp_dir / f"vision_localization_{args.preset}", args.preset)
    vlm_config = AutoConfig.from_pretrained(vlm_dir)
    problem = image_side_problem(vlm_config, args.image_side, f"the {args.preset} preset")
    if problem:
        parser.error(problem)

    cameras = tuple(args.cameras)
    if args.render is not None:
        phantom, dr = randomization_from_args(args)
        settings = RenderSettings(phantom=phantom, dr=dr, width=args.width, height=args.height,
                                  side=args.image_side, cameras=cameras)
        train_images, train_offsets = render_placements(args.render, settings)
    else:
        train_images, train_offsets = load_frames(args.episodes, cameras, args.frames, args.image_side)
        train_offsets = train_offsets.repeat_interleave(train_images.shape[1], 0)
        train_images = train_images.flatten(0, 1)
    test_images, test_offsets = load_frames(args.held_out, cameras, 1, args.image_side)
    test_images = test_images[:, 0]
    blind = (test_offsets - train_offsets.mean(0)).abs().mean(0)

    torch.manual_seed(args.seed)
    model = Localizer(vlm_config, cameras, args.image_side)
    trained_on = args.episodes or "the simulator"
    print(f"machine: {machine()}; {load_average()}; {len(train_offsets)} training frames from {trained_on}, "
          f"{len(test_offsets)} held-out episodes from {args.held_out}; cameras {', '.join(cameras)}; {args.preset}; "
          f"{args.image_side}x{args.image_side} images")

    started = time.perf_counter()

    def row(step, loss, predict):
        error = (predict(test_images) - test_offsets).abs().mean(0)
        return [step, f"{loss:.3f}", *(f"{e:.2f}" for e in error), f"{time.perf_counter() - started:.0f}"]

    rows = train_localizer(model, train_images, train_offsets, steps=args.steps, batch_size=args.batch_size,
                           lr=args.lr, seed=args.seed, evaluate=row)
    print("held-out error of the offset (mean absolute), against the blind guess "
          f"(dx {blind[0]:.2f} mm, dy {blind[1]:.2f} mm, yaw {blind[2]:.2f} deg)")
    print_table(["step", "train loss (normalized)", "dx (mm)", "dy (mm)", "yaw (deg)", "s"], rows)


if __name__ == "__main__":
    main()
