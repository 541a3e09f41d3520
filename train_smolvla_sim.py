#!/usr/bin/env python
"""Train lerobot's SmolVLA on the simulated needle-insertion episodes (HDF5).

    python train_smolvla_sim.py --config train_config_smolvla_sim.yaml
    torchrun --nproc_per_node 5 train_smolvla_sim.py ...      (what train_smolvla_sim.sh runs)
    python train_smolvla_sim.py --config ... --resume auto
    python train_smolvla_sim.py --config <real-data config> --resume <sim run>/checkpoints/checkpoint_latest.pt \\
        --reset_scheduler --steps 5000 --lr 0.00001
"""

import argparse

from episode_format.reader import discover_episodes
from insertion_vla.config import OVERRIDES_HELP, parse_args_and_config
from insertion_vla.errors import exit_on_user_error
from insertion_vla.stats import load_stats


def parse_args(argv=None):
    """(args, resolved config)."""
    parser = argparse.ArgumentParser(description=__doc__, epilog=OVERRIDES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parse_args_and_config(parser, argv, {"steps": "training.steps", "lr": "optimizer.lr", "output_dir": "output_dir"})


def main():
    args, cfg = parse_args()
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
