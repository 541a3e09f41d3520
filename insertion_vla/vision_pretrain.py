"""Pretrain a tiny VLM's image path to see where the phantom stands, on frames rendered by the simulator.

    python -m insertion_vla.vision_pretrain VLM_DIR [--placements 2500] [--steps 2500] [--start_joint_range_deg 5]
           [--phantom_* ...] [--workers 2]                 # then: --policy.vlm_model_name=VLM_DIR
                                                            #       --policy.load_vlm_weights=true

Why: on CPU the tiny VLM's vision encoder starts random and must learn from the demonstrations alone, and each
demonstration is one placement of the phantom. A placement seen at the policy's 64x64 moves the trocar by less
than a pixel (benchmarks/camera_scale.py), and the encoder's error falls with the number of distinct placements:
160 of them give 3.3 mm, 1280 give 1.4 mm, 2500 (from the narrow tier's varied starts) 1.4 mm in x, 1.2 in y and
1.2 deg (benchmarks/README.md, "Does it learn?"). A demonstration costs about 10 s to collect; the first frame of a
placement, rendered, under half a second.

What: N placements are drawn as the collector draws them (the same --phantom_* and randomization flags; base seed
9000, none of the collections' or evaluations'), each rendered once at its start pose (the arm's start within
--start_joint_range_deg, as sim.collect's) and passed through the recorder's JPEG round trip. SmolVLA's image
path (the VLM's vision encoder and connector, one for every camera as SmolVLA shares it) is trained with a linear
head to regress the placement (dx, dy in mm, yaw in deg). The VLM in VLM_DIR (from `python -m
insertion_vla.tiny_vlm`) then gets weights: the trained image path, its text model random as lerobot would start
it, written as model.safetensors beside a pretraining.json of the settings and held-out errors. The policy loads
them with `policy.load_vlm_weights: true`; leave the vision encoder trainable (freeze_vision_encoder false) or
frozen as the run needs. The whole localizer, its head included, is kept as localizer.safetensors: with
`dataset.placement_estimate: VLM_DIR` its estimate from each episode's first frame becomes part of the policy's
state (insertion_vla.localizer).

With --near_poses N a second localizer learns where the entry is relative to the needle tip near it, from the
tool camera: N scenes drawn as above (base seed 9100; held out 9200), the arm put by the expert's IK with its tip
10-30 mm before the entry on the trocar axis, up to 4 mm across it per axis and the needle tilted up to 4 deg,
rendered as recorded. On held-out scenes it measures both localizers' errors in the placement's dx, dy (the first
one from the scene's start frame) and the weights that fuse them best; near_localizer.safetensors keeps the
weights and the window, for dataset.near_target_estimate (benchmarks/bench_near_target_localization.py: 1.1 mm
across the needle from 6000 poses).
"""

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoConfig, SmolVLMForConditionalGeneration

from episode_format.atomic import atomic_output, atomic_write_text
from episode_format.errors import UserError, exit_on_user_error
from episode_format.jpeg import DEFAULT_JPEG_QUALITY, as_recorded
from insertion_vla.localizer import (
    LOCALIZER_FILE,
    NEAR_LOCALIZER_FILE,
    Localizer,
    NearTarget,
    as_pixels,
    file_digest,
    localizer_images,
    placement_offsets,
)
from sim.env import NeedleInsertionEnv
from sim.expert import DampedLeastSquaresIK
from sim.kinematics import matrix_from_rotvec
from sim.randomization import DomainRandomization, PhantomPlacement, add_randomization_args, randomization_from_args
from sim.render_workers import DEFAULT_RESTARTS, RenderWorkerDied, render_in_workers, warn_on_restart
from sim.scene import CAMERA_NAMES, TIP_SITE
from sim.seeding import episode_seed

RENDER_BASE_SEED = 9000  # sim.seeding base seed: not the tiers' collection (0), evaluation (1000), probe (5000)
HELD_OUT_BASE_SEED = 9001
NEAR_RENDER_BASE_SEED, NEAR_HELD_OUT_BASE_SEED = 9100, 9200
# The near-target window: the tip this far before the entry along the trocar axis (the expert's stand-off is 20 mm),
# moved up to ACROSS_MM across it per axis, the needle tilted up to TILT_DEG.
STANDOFF_MM, ACROSS_MM, TILT_DEG = (10.0, 30.0), 4.0, 4.0
# The tool camera alone: 1.32 mm across the needle from 2000 poses, all three cameras 1.24 mm in three times the
# training time (benchmarks/README.md).
NEAR_CAMERAS = ("tool_camera",)
WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "pretraining.json"


@dataclass(frozen=True)
class RenderSettings:
    phantom: PhantomPlacement
    dr: DomainRandomization | None
    start_joint_range_deg: float = 0.0
    width: int = 128
    height: int = 96
    side: int = 64  # the policy's square image
    cameras: tuple[str, ...] = tuple(CAMERA_NAMES)


_worker_env: tuple[RenderSettings, NeedleInsertionEnv] | None = None  # one env per process


def render_env(settings: RenderSettings) -> NeedleInsertionEnv:
    """This process's env for `settings`: built on first use, rebuilt when they change (close_render_env ends it)."""
    global _worker_env
    if _worker_env is None or _worker_env[0] != settings:
        env = NeedleInsertionEnv(width=settings.width, height=settings.height, phantom=settings.phantom,
                                 dr=settings.dr, start_joint_range_deg=settings.start_joint_range_deg)
        _worker_env = (settings, env)
    return _worker_env[1]


def render_placement(task: tuple[int, int, RenderSettings]) -> tuple[np.ndarray, list[float]]:
    """Placement `index` of base seed `base_seed` -> (images (cameras, 3, side, side) uint8, offsets)."""
    base_seed, index, settings = task
    observation, info = render_env(settings).reset(seed=episode_seed(base_seed, index))
    # Through the recorder's JPEG round trip, so that these frames are the recorded ones.
    frames = {name: as_recorded(observation["images"][name], DEFAULT_JPEG_QUALITY) for name in settings.cameras}
    return localizer_images(frames, settings.cameras, settings.side), placement_offsets(info["scene_params"])


@dataclass
class NearPose:
    """One near-target render: every camera's recorded frame, the entry relative to the tip in the tip frame (mm),
    the tip's ee_pose, the scene's start frame (recorded) and its placement (dx, dy mm, yaw deg)."""
    frames: dict
    offset_mm: np.ndarray
    ee_pose: np.ndarray
    first_frames: dict
    placement: list


def render_near_pose(task: tuple[int, int, RenderSettings]) -> NearPose:
    """Pose `index` of `base_seed`: the scene as sim.collect draws it for that seed, the arm in the window."""
    base_seed, index, settings = task
    env = render_env(settings)
    seed = episode_seed(base_seed, index)
    observation, info = env.reset(seed=seed)
    first_frames = {name: as_recorded(observation["images"][name], DEFAULT_JPEG_QUALITY) for name in CAMERA_NAMES}
    rng = np.random.default_rng([seed, 1])  # the pose's own stream, apart from the scene's
    entry, _, axis = env.trocar_target()
    across = rng.uniform(-ACROSS_MM, ACROSS_MM, 3) / 1000.0
    across -= (across @ axis) * axis
    tilt = rng.normal(size=3)
    tilt *= np.radians(rng.uniform(0.0, TILT_DEG)) / np.linalg.norm(tilt)
    tip_goal = entry - rng.uniform(*STANDOFF_MM) / 1000.0 * axis + across
    ik = DampedLeastSquaresIK(env.model)
    observation = env.place_arm(ik.solve(env.commanded_qpos(), tip_goal, matrix_from_rotvec(tilt) @ axis,
                                         max_iterations=200))
    site = env.model.site(TIP_SITE).id
    tip, rotation = env.data.site_xpos[site], env.data.site_xmat[site].reshape(3, 3)
    return NearPose(frames={name: as_recorded(observation["images"][name], DEFAULT_JPEG_QUALITY) for name in CAMERA_NAMES},
                    offset_mm=(rotation.T @ (entry - tip) * 1000.0).astype(np.float32),
                    ee_pose=observation["ee_pose"].astype(np.float64), first_frames=first_frames,
                    placement=placement_offsets(info["scene_params"]))


def render_near_poses(count: int, settings: RenderSettings, base_seed: int, workers: int) -> list[NearPose]:
    tasks = [(base_seed, index, settings) for index in range(count)]
    return rendered(render_near_pose, tasks, workers, "near-target poses", "render near target", "pose")


def rendered(fn, tasks: list, workers: int, what: str, desc: str, unit: str) -> list:
    """fn(task) for every task, in order, in `workers` processes with a progress bar; a worker that dies is replaced
    (sim.render_workers.DEFAULT_RESTARTS times) before the rendering stops with an error."""
    try:
        return list(tqdm(render_in_workers(fn, tasks, workers, ordered=True, restarts=DEFAULT_RESTARTS,
                                           on_restart=warn_on_restart(what)),
                         total=len(tasks), desc=desc, unit=unit, dynamic_ncols=True, leave=False))
    except RenderWorkerDied as err:
        raise UserError(f"{err} while rendering the {len(tasks)} {what}; re-run the same command") from None
    finally:
        close_render_env()


def close_render_env() -> None:
    global _worker_env
    if _worker_env is not None:
        _worker_env[1].close()
        _worker_env = None


def render_placements(count: int, settings: RenderSettings, *, base_seed: int = RENDER_BASE_SEED,
                      workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 0 of `count` placements -> images (count, cameras, 3, side, side) uint8, offsets (count, 3)."""
    tasks = [(base_seed, index, settings) for index in range(count)]
    images, offsets = zip(*rendered(render_placement, tasks, workers, "placements", "render", "placement"))
    return torch.from_numpy(np.stack(images)), torch.tensor(offsets, dtype=torch.float32)


def image_side_problem(vlm_config, side: int, vlm_name: str) -> str | None:
    """Why the encoder of vlm_config cannot take side x side images, with a side it can take; None if it can."""
    unit = vlm_config.vision_config.patch_size * vlm_config.scale_factor
    if side % unit:
        return (f"--image_side {side} is not a multiple of {unit} (the patch size x scale factor of {vlm_name}): "
                f"use e.g. --image_side {max(unit, side // unit * unit)}")
    return None


def train_localizer(model: Localizer, images: torch.Tensor, offsets: torch.Tensor, *, steps: int, batch_size: int,
                    lr: float, seed: int, evaluate=None, every: int = 250) -> list:
    """AdamW with cosine decay on the offsets normalized by their mean and std. `evaluate(step, loss, predict)`
    runs every `every` steps and at the end (predict: images -> offsets in mm, mm, deg); returns its results."""
    # A range of 0 (e.g. --phantom_yaw_range_deg 0) makes that target the constant 0, not a division by 0.
    model.target_mean.copy_(offsets.mean(0))
    model.target_std.copy_(offsets.std(0).clamp_min(1e-6))
    normalized = (offsets - model.target_mean) / model.target_std
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator, results = torch.Generator().manual_seed(seed), []
    model.train()
    for step in tqdm(range(1, steps + 1), desc="train", unit="step", dynamic_ncols=True, leave=False):
        index = torch.randint(len(offsets), (batch_size,), generator=generator)
        loss = torch.nn.functional.mse_loss(model(as_pixels(images[index])), normalized[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if evaluate is not None and (step % every == 0 or step == steps):
            model.eval()
            with torch.no_grad():
                results.append(evaluate(step, loss.item(), model.predict))
            model.train()
    return results


def train_near_target(first: Localizer, vlm_config, settings: RenderSettings, args) -> tuple[NearTarget, dict]:
    """The near-target localizer from args.near_poses renders, and on args.near_held_out others: its error and the
    first localizer's in the placement's dx, dy, and the weights that fuse them best (least squares, per axis)."""
    poses = render_near_poses(args.near_poses, settings, NEAR_RENDER_BASE_SEED, args.workers)
    held_out = render_near_poses(args.near_held_out, settings, NEAR_HELD_OUT_BASE_SEED, args.workers)

    def images(frames) -> torch.Tensor:
        return torch.from_numpy(np.stack([localizer_images(f, NEAR_CAMERAS, settings.side) for f in frames]))

    torch.manual_seed(args.seed)
    model = Localizer(vlm_config, NEAR_CAMERAS, settings.side)
    train_localizer(model, images([p.frames for p in poses]), torch.from_numpy(np.stack([p.offset_mm for p in poses])),
                    steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        first_estimates = first.eval().predict(torch.from_numpy(np.stack(
            [localizer_images(p.first_frames, first.cameras, settings.side) for p in held_out]))).numpy()
    unfused = NearTarget(model, STANDOFF_MM, ACROSS_MM, TILT_DEG, np.zeros(2, np.float32))
    near_xy = np.stack([unfused.placement_xy(p.frames, p.ee_pose, first_estimate[2])
                        for p, first_estimate in zip(held_out, first_estimates)])
    truth = np.array([p.placement for p in held_out])[:, :2]
    first_error, near_error = first_estimates[:, :2] - truth, near_xy - truth
    # fused = first + w (near - first): the w of least squared error on the even-numbered held-out scenes, the fused
    # error measured on the odd-numbered ones
    difference = near_error - first_error
    fit, check = slice(0, None, 2), slice(1, None, 2)
    weights = np.clip(-(first_error[fit] * difference[fit]).sum(0) / (difference[fit] ** 2).sum(0), 0.0, 1.0)
    weights = weights.astype(np.float32)
    fused_error = (first_error + weights * difference)[check]

    def plane(error):
        return {"dx_mm": float(np.abs(error[:, 0]).mean()), "dy_mm": float(np.abs(error[:, 1]).mean()),
                "in_plane_mm": float(np.linalg.norm(error, axis=1).mean()),
                "under_1mm": float((np.linalg.norm(error, axis=1) < 1.0).mean())}

    record = {"poses": args.near_poses, "held_out": args.near_held_out, "cameras": list(NEAR_CAMERAS),
              "render_base_seed": NEAR_RENDER_BASE_SEED, "held_out_base_seed": NEAR_HELD_OUT_BASE_SEED,
              "standoff_mm": list(STANDOFF_MM), "across_mm": ACROSS_MM, "tilt_deg": TILT_DEG,
              "fusion_weights": weights.tolist(), "first_frame_error": plane(first_error),
              "near_target_error": plane(near_error), "fused_error": plane(fused_error),
              "fused_error_scenes": "the odd-numbered held-out scenes; the weights are fitted on the even-numbered"}
    for name in ("first_frame", "near_target", "fused"):
        e = record[f"{name}_error"]
        print(f"{name.replace('_', ' ')} estimate, held out{' (half)' if name == 'fused' else ''}: dx {e['dx_mm']:.2f} mm, dy {e['dy_mm']:.2f} mm, "
              f"{e['in_plane_mm']:.2f} mm in the plane, {e['under_1mm']:.0%} under 1 mm")
    print(f"fusion weights of the near-target estimate: dx {weights[0]:.2f}, dy {weights[1]:.2f}")
    return NearTarget(model, STANDOFF_MM, ACROSS_MM, TILT_DEG, weights), record


def write_vlm_weights(model: Localizer, vlm_dir: Path, record: dict, near: NearTarget | None = None) -> None:
    """Give the VLM in vlm_dir weights: the trained image path, the rest as SmolVLM starts it; and keep the whole
    localizer, its head included, for dataset.placement_estimate, and the near-target one (or none: an older one
    would not fit this localizer). Its config, tokenizer and processor stay; pretraining.json, the localizers and
    model.safetensors are each written atomically, the record first (a crash between them leaves no weights that a
    record does not describe)."""
    vlm = SmolVLMForConditionalGeneration(AutoConfig.from_pretrained(vlm_dir))
    vlm.model.vision_model.load_state_dict(model.vision.state_dict())
    vlm.model.connector.load_state_dict(model.connector.state_dict())
    (vlm_dir / NEAR_LOCALIZER_FILE).unlink(missing_ok=True)  # it was fitted to the localizer about to be replaced
    atomic_write_text(vlm_dir / RECORD_FILE, json.dumps(record, indent=2))
    model.save(vlm_dir / LOCALIZER_FILE)
    if near is not None:
        near.localizer.save(vlm_dir / NEAR_LOCALIZER_FILE, {
            "standoff_mm": list(near.standoff_mm), "across_mm": near.across_mm, "tilt_deg": near.tilt_deg,
            "fusion_weights": near.weights.tolist(), "fused_with": file_digest(vlm_dir / LOCALIZER_FILE)})
    with tempfile.TemporaryDirectory(dir=vlm_dir.parent) as saved, atomic_output(vlm_dir / WEIGHTS_FILE) as tmp:
        vlm.save_pretrained(saved)  # transformers' names and layout of the weights, float32
        shutil.move(Path(saved) / WEIGHTS_FILE, tmp)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m insertion_vla.vision_pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vlm_dir", type=Path, help="a VLM from `python -m insertion_vla.tiny_vlm` (given weights)")
    parser.add_argument("--placements", type=int, default=2500, help="rendered placements to train on (default: %(default)s)")
    parser.add_argument("--held_out", type=int, default=100,
                        help="placements of another seed, to measure the error on (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2500, help="training steps (default: %(default)s)")
    parser.add_argument("--batch_size", type=int, default=32, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, cosine decay (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the weights and batches (default: %(default)s)")
    parser.add_argument("--image_side", type=int, default=64,
                        help="images resized with padding to this square: the policy's resize_imgs_with_padding "
                             "(default: %(default)s)")
    parser.add_argument("--width", type=int, default=128,
                        help="render width: the collection's sim.collect --width, whose default is 640 (default: "
                             "%(default)s, the learning benchmark's)")
    parser.add_argument("--height", type=int, default=96,
                        help="render height: the collection's sim.collect --height, whose default is 480 (default: "
                             "%(default)s, the learning benchmark's)")
    parser.add_argument("--start_joint_range_deg", type=float, default=0.0,
                        help="each joint's start within +/- this of home, as sim.collect's (default: %(default)s)")
    parser.add_argument("--near_poses", type=int, default=0,
                        help="also train the near-target localizer (dataset.near_target_estimate) on this many "
                             "rendered poses, e.g. 6000; 0: none (default: %(default)s)")
    parser.add_argument("--near_held_out", type=int, default=200,
                        help="near-target poses of another seed, to measure the errors and the fusion weights on "
                             "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes (default: %(default)s)")
    add_randomization_args(parser)
    args = parser.parse_args(argv)
    if not (args.vlm_dir / "config.json").is_file():
        parser.error(f"{args.vlm_dir} has no config.json: write a tiny VLM there first, e.g. "
                     f"`python -m insertion_vla.tiny_vlm {args.vlm_dir} --preset tiny-vision`")
    if args.placements < 2:
        parser.error(f"--placements {args.placements}: at least 2 (the targets are normalized by their spread), "
                     "e.g. --placements 2500")
    if args.near_poses and args.near_poses < 2:
        parser.error(f"--near_poses {args.near_poses}: 0 (none) or at least 2, e.g. --near_poses 6000")
    if args.near_poses and args.near_held_out < 2:
        parser.error(f"--near_held_out {args.near_held_out}: at least 2 (half fit the fusion weights, half measure them), "
                     "e.g. --near_held_out 200")
    for name in ("held_out", "near_held_out", "steps", "batch_size", "workers", "width", "height"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.start_joint_range_deg < 0:
        parser.error(f"--start_joint_range_deg must be >= 0, got {args.start_joint_range_deg}")
    args.vlm_config = AutoConfig.from_pretrained(args.vlm_dir)
    problem = image_side_problem(args.vlm_config, args.image_side, str(args.vlm_dir))
    if problem:
        parser.error(problem)
    try:
        args.phantom, args.dr = randomization_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = RenderSettings(phantom=args.phantom, dr=args.dr, start_joint_range_deg=args.start_joint_range_deg,
                              width=args.width, height=args.height, side=args.image_side)
    started = time.perf_counter()
    images, offsets = render_placements(args.placements, settings, workers=args.workers)
    test_images, test_offsets = render_placements(args.held_out, settings, base_seed=HELD_OUT_BASE_SEED,
                                                  workers=args.workers)
    render_seconds = time.perf_counter() - started
    blind = (test_offsets - offsets.mean(0)).abs().mean(0)
    print(f"rendered {args.placements} + {args.held_out} held-out placements in {render_seconds:.0f} s; a blind guess "
          f"misses by dx {blind[0]:.2f} mm, dy {blind[1]:.2f} mm, yaw {blind[2]:.2f} deg")

    torch.manual_seed(args.seed)
    model = Localizer(args.vlm_config, settings.cameras, args.image_side)

    def evaluate(step, loss, predict):
        error = (predict(test_images) - test_offsets).abs().mean(0)
        tqdm.write(f"step {step}: train loss {loss:.3f} (normalized), held-out error dx {error[0]:.2f} mm, "
                   f"dy {error[1]:.2f} mm, yaw {error[2]:.2f} deg")
        return {"step": step, "train_loss": loss, "dx_mm": error[0].item(), "dy_mm": error[1].item(),
                "yaw_deg": error[2].item()}

    started = time.perf_counter()
    errors = train_localizer(model, images, offsets, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, evaluate=evaluate)
    train_seconds = round(time.perf_counter() - started, 1)
    near, near_record = train_near_target(model, args.vlm_config, settings, args) if args.near_poses else (None, None)
    flags = {key: value for key, value in vars(args).items() if key not in ("vlm_dir", "vlm_config", "phantom", "dr")}
    record = {"settings": {**flags, "cameras": list(settings.cameras), "render_base_seed": RENDER_BASE_SEED,
                           "held_out_base_seed": HELD_OUT_BASE_SEED},
              "blind_error": {"dx_mm": blind[0].item(), "dy_mm": blind[1].item(), "yaw_deg": blind[2].item()},
              "held_out_errors": errors, "render_seconds": round(render_seconds, 1),
              "train_seconds": train_seconds, "near_target": near_record}
    write_vlm_weights(model, args.vlm_dir, record, near)
    print(f"wrote the pretrained image path into {args.vlm_dir / WEIGHTS_FILE} (use it with "
          f"--policy.vlm_model_name={args.vlm_dir} --policy.load_vlm_weights=true) and the localizer into "
          f"{args.vlm_dir / LOCALIZER_FILE} (its estimate in the state: --dataset.placement_estimate={args.vlm_dir})"
          + (f"; the near-target one into {args.vlm_dir / NEAR_LOCALIZER_FILE} (--dataset.near_target_estimate=true)"
             if near else ""))


if __name__ == "__main__":
    exit_on_user_error(main)
