#!/usr/bin/env python
"""Train lerobot's SmolVLA on the simulated needle-insertion episodes (HDF5).

    python train_smolvla_sim.py --config train_config_smolvla_sim.yaml
    torchrun --nproc_per_node 5 train_smolvla_sim.py ...      (what train_smolvla_sim.sh runs)
    python train_smolvla_sim.py --config ... --resume auto
    python train_smolvla_sim.py --config <real-data config> --resume <sim run>/checkpoints/checkpoint_latest.pt \\
        --reset_scheduler --steps 5000 --lr 0.00001

Any config key can be overridden as --section.key=value, the value read as YAML:
    --training.batch_size=8  "--policy.resize_imgs_with_padding=[64, 64]"  --wandb.enable=false
    "--dataset.cameras={zed_left: camera1, oak_wrist: camera2, zed_top: camera3}"   (a dict replaces the old one)
"""

import argparse

from episode_format.reader import discover_episodes
from insertion_vla.config import load_config
from insertion_vla.errors import exit_on_user_error
from insertion_vla.stats import load_stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train_config_smolvla_sim.yaml", help="YAML config file (default: %(default)s)")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint_*.pt; 'auto': the newest in output_dir/checkpoints, or a fresh start if none")
    parser.add_argument("--reset_scheduler", action="store_true",
                        help="with --resume: keep the weights, restart warmup + cosine decay from the resume step, fresh optimizer state")
    parser.add_argument("--steps", type=int, help="training.steps: steps of this schedule (from step 0 or the reset point)")
    parser.add_argument("--lr", type=float, help="optimizer.lr: the peak learning rate")
    parser.add_argument("--output_dir", help="output_dir: checkpoints, logs, plots (must be shared by all nodes)")
    parser.add_argument("--check_only", action="store_true",
                        help="check the resolved config, the dataset and the stats file, then exit (train_smolvla_sim.sh does this before torchrun)")
    args, overrides = parser.parse_known_args(argv)
    for name, dotted in (("steps", "training.steps"), ("lr", "optimizer.lr"), ("output_dir", "output_dir")):
        if getattr(args, name) is not None:
            overrides.append(f"--{dotted}={getattr(args, name)}")
    return args, overrides


def main():
    args, overrides = parse_args()
    cfg = load_config(args.config, overrides)
    if args.check_only:
        episodes = discover_episodes(cfg["dataset"]["root_dir"])
        if cfg["normalization"]["enable"]:
            load_stats(cfg["normalization"]["stats_file"])
        print(f"Config OK: {args.config}, {len(episodes)} episodes in {cfg['dataset']['root_dir']}, "
              f"stats {cfg['normalization']['stats_file'] if cfg['normalization']['enable'] else 'disabled'}")
        return
    from insertion_vla.train import train  # torch + lerobot take seconds to import: config errors come first

    evaluate_fn = None
    if cfg["evaluation"]["enable"]:
        from evaluation.training_hook import make_training_evaluator  # MuJoCo is needed only when evaluating

        evaluate_fn = make_training_evaluator(cfg)
    train(cfg, resume=args.resume, reset_scheduler=args.reset_scheduler, evaluate_fn=evaluate_fn)


if __name__ == "__main__":
    exit_on_user_error(main)
