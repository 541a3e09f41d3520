"""Does a policy see where the phantom stands? Open-loop chunks on recorded placed episodes, in mm at the needle tip.

    python -m benchmarks.probe_vision --policy RUN/checkpoints/final_hf --episodes DIR [--frames 0 40 80 -1]

For each episode in DIR (collected with a phantom placement range, e.g. the narrow tier's; held out from training)
and each chosen frame t (-1: the last), the policy predicts a chunk from the recorded observations of frame t. The
chunk's last real action (frame t + 49, or the episode's end) and the recorded action there are turned into needle
tip positions (the simulator's kinematics), and the distance between them is the policy's error. Beside it, the
spread: the distance of the recorded tip position from its mean over the episodes, i.e. the error of a policy that
knew nothing of the placement and went where the expert goes on average.

At frame 0 of a home-start episode every state is the same, so only the images can tell the chunk where to go: an
error near the spread there means the policy does not see the placement, even when it is accurate from later
frames (where the joints the expert passed through give the target away). benchmarks/README.md ("Does it learn?").
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mujoco  # noqa: E402  (after MUJOCO_GL)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from benchmarks.measure import load_average, machine, print_table  # noqa: E402
from episode_format.reader import discover_episodes  # noqa: E402
from evaluation.policy_io import load_policy  # noqa: E402
from insertion_vla.dataset import EpisodeDataset  # noqa: E402
from insertion_vla.episodes import keys_from_config  # noqa: E402
from insertion_vla.localizer import estimator_from_config
from insertion_vla.policy import predict_action_chunk, prepare_batch  # noqa: E402
from sim.expert import DampedLeastSquaresIK  # noqa: E402
from sim.scene import scene_xml  # noqa: E402


def tip_positions_mm(kinematics: DampedLeastSquaresIK, joints: np.ndarray) -> np.ndarray:
    return np.array([kinematics.tip_pose(q.astype(np.float64))[0] for q in joints]) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, required=True, help="a final_hf/ export or a checkpoint_*.pt")
    parser.add_argument("--episodes", type=Path, required=True,
                        help="folder of recorded episodes with a placement range, not trained on")
    parser.add_argument("--frames", type=int, nargs="+", default=[0, 40, 80, -1],
                        help="frames to predict from (-1: each episode's last; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flow-matching noise (default: %(default)s)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    loaded = load_policy(args.policy, "cpu")
    policy, cfg = loaded.policy, loaded.train_cfg
    paths = discover_episodes(args.episodes, source="--episodes")
    side = policy.config.resize_imgs_with_padding[0]
    dataset = EpisodeDataset(paths, keys_from_config(cfg["dataset"]), horizon=policy.config.chunk_size,
                             image_size=(side, side), task_instruction=cfg["dataset"]["task_instruction"],
                             estimator=estimator_from_config(cfg["dataset"]))
    kinematics = DampedLeastSquaresIK(mujoco.MjModel.from_xml_string(scene_xml(8, 8)))
    print(f"machine: {machine()}; {load_average()}; {len(paths)} episodes from {args.episodes}")

    policy.eval()
    rows = []
    for frame in args.frames:
        recorded, predicted = [], []
        for position in range(len(paths)):
            t = dataset.lengths[position] - 1 if frame < 0 else min(frame, dataset.lengths[position] - 1)
            sample = default_collate([dataset[dataset.sample_index(position, t)]])
            chunk = predict_action_chunk(policy, prepare_batch(sample, loaded.preprocessor, "cpu"), loaded.postprocessor)
            last = int((~sample["action_is_pad"][0]).sum()) - 1  # the chunk's last action inside the episode
            recorded.append(sample["action"][0, last].numpy())
            predicted.append(chunk[0, last].float().numpy())
        true, pred = tip_positions_mm(kinematics, np.array(recorded)), tip_positions_mm(kinematics, np.array(predicted))
        error = np.linalg.norm(pred - true, axis=1)
        spread = np.linalg.norm(true - true.mean(axis=0), axis=1)
        rows.append(["last" if frame < 0 else frame, f"{error.mean():.2f}", f"{np.median(error):.2f}",
                     f"{error.max():.2f}", f"{spread.mean():.2f}", f"{error.mean() / spread.mean():.2f}"])
    print("tip position of the chunk's last action, predicted vs recorded (mm)")
    print_table(["from frame", "error mean", "median", "worst", "spread mean", "error / spread"], rows)


if __name__ == "__main__":
    main()
