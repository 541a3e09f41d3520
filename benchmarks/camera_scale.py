"""How many policy pixels is a millimetre at the trocar? Each camera's scale there, and how far the placement moves
the trocar in its image: what the images can tell the policy before any learning.

    python -m benchmarks.camera_scale [--episodes 50] [--image_side 64] [--width 128 --height 96]
           [sim.collect's --phantom_* and domain randomization flags, e.g. the narrow tier's:
            --phantom_x_range 0.01 --phantom_y_min -0.01 --phantom_y_max 0.01 --phantom_yaw_range_deg 5]

For each seed the scene is placed and randomized as sim.collect does (its defaults: the full tier) and the trocar
entry projected into each camera (pinhole, the camera's fovy) from two arm poses: the start (home) and the expert's
final pose at the target. Pixels are the policy's: the render (--width x --height) resized with padding to
--image_side squared, as training and evaluation do. Prints per camera and pose the scale (mm at the trocar per
policy pixel, at its depth), where the trocar is in the image (mean offset from the centre, x right, y up), the
spread of that position over the placements (std in pixels) and how often it is in the image at all. Geometry
only: no rendering, no learning.
benchmarks/README.md ("Does it learn?").
"""

import argparse
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402  (after MUJOCO_GL)
import numpy as np  # noqa: E402

from benchmarks.measure import print_table  # noqa: E402
from sim.env import NeedleInsertionEnv  # noqa: E402
from sim.expert import ScriptedExpert  # noqa: E402
from sim.randomization import add_randomization_args, randomization_from_args  # noqa: E402
from sim.scene import CAMERA_NAMES  # noqa: E402


def focal_length_px(model, camera: str, height: int) -> float:
    """Pinhole focal length in render pixels (MuJoCo's fovy is vertical)."""
    return (height / 2) / np.tan(np.radians(model.cam_fovy[model.camera(camera).id]) / 2)


def project(model, data, camera: str, point: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    """-> (pixel offset from the image centre (x right, y up) in render pixels, depth in m)."""
    cam = model.camera(camera).id
    rel = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])  # camera frame: looks along -z
    depth = -rel[2]
    return focal_length_px(model, camera, height) * rel[:2] / depth, depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=50, help="placements (seeds 0..N-1; default: %(default)s)")
    parser.add_argument("--image_side", type=int, default=64, help="policy image side (default: %(default)s)")
    parser.add_argument("--width", type=int, default=128, help="render width (default: %(default)s)")
    parser.add_argument("--height", type=int, default=96, help="render height (default: %(default)s)")
    add_randomization_args(parser)
    args = parser.parse_args()

    phantom, dr = randomization_from_args(args)
    env = NeedleInsertionEnv(width=args.width, height=args.height, phantom=phantom, dr=dr, render_images=False)
    expert = ScriptedExpert()
    to_policy = args.image_side / max(args.width, args.height)  # resize with padding keeps the aspect ratio
    seen = {(camera, pose): [] for camera in CAMERA_NAMES for pose in ("start", "target")}
    for seed in range(args.episodes):
        env.reset(seed=seed)
        expert.reset(env)
        entry, _, _ = env.trocar_target()
        start_q = env.data.qpos.copy()
        for _ in range(int(round(expert.duration_seconds * expert.control_hz))):
            target_q = expert.act()
        for pose, q in (("start", start_q), ("target", target_q)):
            env.data.qpos[:] = q
            mujoco.mj_kinematics(env.model, env.data)
            mujoco.mj_camlight(env.model, env.data)
            for camera in CAMERA_NAMES:
                pixel, depth = project(env.model, env.data, camera, entry, args.height)
                seen[camera, pose].append((*(pixel * to_policy), depth))
    env.close()

    half_width, half_height = args.width * to_policy / 2, args.height * to_policy / 2
    rows = []
    for (camera, pose), values in seen.items():
        values = np.array(values)
        in_view = (np.abs(values[:, 0]) < half_width) & (np.abs(values[:, 1]) < half_height) & (values[:, 2] > 0)
        mm_per_pixel = values[:, 2].mean() * 1000 / (focal_length_px(env.model, camera, args.height) * to_policy)
        rows.append([camera, pose, f"{values[:, 2].mean() * 1000:.0f}", f"{mm_per_pixel:.2f}",
                     f"{values[:, 0].mean():+.1f}, {values[:, 1].mean():+.1f}", f"{values[:, 0].std():.2f}",
                     f"{values[:, 1].std():.2f}", f"{in_view.mean():.0%}"])
    print(f"{args.episodes} placements; renders {args.width}x{args.height} -> policy images "
          f"{args.image_side}x{args.image_side}")
    print_table(["camera", "arm pose", "trocar depth (mm)", "mm per policy pixel", "trocar from image centre (px)",
                 "std x (px)", "std y (px)", "in view"], rows)


if __name__ == "__main__":
    main()
