#!/usr/bin/env python
"""Closed-loop evaluation of a SmolVLA policy in the simulator: does it insert the needle?

    python evaluate_smolvla_sim.py --policy outputs/train/RUN/checkpoints/final_hf --episodes 50
    python evaluate_smolvla_sim.py --policy outputs/train/RUN/checkpoints/checkpoint_step_10000.pt --episodes 20
    python evaluate_smolvla_sim.py --expert --episodes 100 --videos 0                  # sanity check of the evaluator
    python evaluate_smolvla_sim.py --policy .../final_hf --episodes_from data/real_robot   # offline, recorded episodes

Each episode resets sim/'s NeedleInsertionEnv with its own seed and lets the policy act: a chunk of actions is
predicted from the current observation and its first K (--n_action_steps) are executed before the next
prediction (receding horizon), until success (tip within 1 mm and axis within 2 deg, held 1 s) or the timeout.
With --temporal_ensemble_coeff M (ACT's temporal ensembling) a chunk is predicted every K steps all the same (ACT
predicts every step: --n_action_steps 1), and each step executes the weighted average of the actions that all chunks
predicted so far give for that step, weight exp(-M * i) for the i-th oldest of them (i = 0 the oldest).
SmolVLA samples a chunk: its flow turns Gaussian noise into actions. --noise_scale S multiplies that noise (S = 0:
the flow from zero noise, one chunk per observation).

Safety is part of success: the env measures, every step, whether the needle (the segment from its base to its
tip) entered the eye anywhere but through the trocar's cannula, and how deep (sim/safety.py). An episode where it
did is unsafe (`unsafe`, `max_penetration_mm` in report.json and episodes.csv) and never counts as a success, even
if it meets the success rule.

The policy sees what training saw: each camera mapped to its lerobot key as in the policy's training config,
JPEG round trip at the collector's quality, resized with padding as insertion_vla.dataset.resize_with_pad does,
float [0, 1]; the state built from the same observations (normally ee_pose); the same task instruction.

Seeds: evaluation episode i runs on sim.seeding.episode_seed(S, i) with S = --seed (default 1000). A collection
with base seed B uses episode_seed(B, i, attempt); the map is one-to-one, so evaluation seeds are disjoint from
any collection with another base seed. The collector's default is 0; when the policy's training episodes can be
found (the run's config names them), the evaluator reads their `base_seed` attributes and refuses an S among them.

The env renders only the observations the policy is fed (every K steps, and every step while a placement estimate
is refined near the trocar; the expert needs none): rendering is most of a step's cost and does not change the
physics.

Outputs (--output_dir): report.json (settings, summary, every episode), episodes.csv (a row per episode),
videos/ (the three cameras side by side for the first --videos episodes, MP4, rendered by a renderer of their own
without the image noise, so recording changes nothing the policy sees). The console ends with `Unsafe: U/N` and
`Success rate: K/N (P %, 95 % CI lo-hi %)` (Wilson score interval).

Training runs the same rollout through `make_training_evaluator(cfg)` (see train_smolvla_sim.py).
"""

import argparse
import dataclasses
from pathlib import Path

import torch

from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from evaluation.drivers import ExpertDriver, PolicyDriver
from evaluation.offline import evaluate_recorded, recorded_episode_paths
from evaluation.policy_io import load_policy, policy_inputs
from evaluation.report import summarize, summary_lines, write_report
from evaluation.rollout import EVAL_BASE_SEED, evaluation_seeds, make_env, run_episodes
from evaluation.training_data import DEFAULT_SIZE, check_seeds_disjoint, training_data_facts
from insertion_vla.errors import exit_on_user_error
from sim.randomization import add_randomization_args, randomization_from_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", type=Path, metavar="PATH",
                     help="the policy: an exported final_hf/ folder or a training checkpoint_*.pt")
    who.add_argument("--expert", action="store_true",
                     help="evaluate sim's scripted expert instead of a policy (sanity check of the evaluator: >= 95 %%)")
    parser.add_argument("--episodes", type=int, default=20, help="simulated episodes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=EVAL_BASE_SEED,
                        help="evaluation base seed: episode i runs on sim.seeding.episode_seed(SEED, i); must differ "
                             "from the training data's collection seed (default: %(default)s; collections use 0)")
    parser.add_argument("--output_dir", type=Path,
                        help="report.json, episodes.csv, videos/ (default: outputs/eval/<run>_<policy name>)")
    parser.add_argument("--n_action_steps", type=int,
                        help="steps between two predictions: the actions of each chunk executed before the next one "
                             "is predicted (default: the policy's n_action_steps)")
    parser.add_argument("--temporal_ensemble_coeff", type=float, metavar="M",
                        help="temporal ensembling of overlapping chunks (ACT): a chunk every --n_action_steps steps, "
                             "each step's action the average of all chunks' predictions for it, weighted exp(-M * i), "
                             "i = 0 the oldest; M > 0 favours older predictions (ACT: 0.01), 0 weighs all equally "
                             "(default: off, plain receding horizon)")
    parser.add_argument("--noise_scale", type=float, default=1.0, metavar="S",
                        help="the noise the policy's flow starts from, times S (a sampling temperature): 1 samples its "
                             "actions as it was trained to, 0 gives one chunk per observation, from zero noise "
                             "(default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the policy runs (default here: %(default)s)")
    parser.add_argument("--width", type=int, help="rendered image width (default: the training data's, else 640)")
    parser.add_argument("--height", type=int, help="rendered image height (default: the training data's, else 480)")
    parser.add_argument("--max_episode_seconds", type=float, default=12.0,
                        help="simulated seconds before an episode times out (default: %(default)s, as the collector)")
    parser.add_argument("--videos", type=int, default=3, help="episodes recorded as MP4, the first ones (default: %(default)s)")
    parser.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY,
                        help="JPEG round trip of the policy's images at the training data's quality, as the collector "
                             "stores frames; 0: none (default: %(default)s)")
    parser.add_argument("--config", type=Path,
                        help="training config whose dataset section (cameras, state, task) describes the policy's "
                             "inputs (default: the checkpoint's own, or final_hf/training_config.yaml; an older export: the "
                             "run's config.yaml two folders up)")
    parser.add_argument("--episodes_from", type=Path, metavar="DIR_OR_LIST",
                        help="offline mode: predict along recorded episodes (a folder, an .h5 file or a "
                             "validation_episodes.txt) and report per-joint MAE in degrees with plots; no simulation")
    add_randomization_args(parser)  # the collector's DR flags and --no_dr: the same distribution by default
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if (args.width is None) != (args.height is None) or (args.width is not None and min(args.width, args.height) < 1):
        parser.error("give --width and --height together, both positive")
    if args.episodes_from and args.expert:
        parser.error("--episodes_from needs --policy (the expert has nothing to predict offline)")
    if args.temporal_ensemble_coeff is not None and (args.expert or args.episodes_from):
        parser.error("--temporal_ensemble_coeff needs --policy in closed loop (the expert predicts no chunks; "
                     "--episodes_from compares single chunks with the recording)")
    if args.noise_scale != 1.0 and (args.expert or args.episodes_from):
        parser.error("--noise_scale needs --policy in closed loop (the expert samples nothing; --episodes_from "
                     "predicts with the policy's own sampling)")
    if not 0 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in [0, 100], got {args.jpeg_quality}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    return args


def default_output_dir(args) -> Path:
    if args.expert:
        return Path("outputs/eval/expert")
    path = args.policy.resolve()
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return Path("outputs/eval") / f"{run}_{path.stem}"


def main(argv=None):
    args = parse_args(argv)
    output_dir = args.output_dir or default_output_dir(args)
    loaded = None if args.expert else load_policy(args.policy, args.device, args.config)

    if args.episodes_from:
        torch.manual_seed(args.seed)  # the sampler's noise
        summary, rows = evaluate_recorded(loaded, recorded_episode_paths(args.episodes_from), output_dir,
                                          args.n_action_steps, args.device)
        settings = {"mode": "offline", "policy": str(args.policy), "config": loaded.config_source,
                    "episodes_from": str(args.episodes_from), "n_action_steps": loaded.policy.config.n_action_steps}
        write_report(output_dir, settings, summary, rows)
        print(f"Report: {output_dir / 'report.json'}, {output_dir / 'episodes.csv'}, plots in {output_dir / 'plots'}")
        joints = " | ".join(f"q{j + 1} {v:.2f}" for j, v in enumerate(summary["mae_deg"]))
        print(f"Per-joint MAE over {summary['frames']} frames of {summary['episodes']} episodes (deg): {joints} | "
              f"mean {summary['mae_mean_deg']:.2f}")
        return

    phantom, dr = randomization_from_args(args)
    facts = training_data_facts(loaded.train_cfg["dataset"]) if loaded else None
    seeds_note = check_seeds_disjoint(args.seed, facts) if loaded else "expert: no training data"
    width, height = (args.width, args.height) if args.width else facts["image_size"] if facts else DEFAULT_SIZE
    if loaded:
        inputs = policy_inputs(loaded.policy, loaded.train_cfg["dataset"], args.jpeg_quality)
        driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor, inputs, args.n_action_steps,
                              args.temporal_ensemble_coeff, args.noise_scale)
    else:
        driver = ExpertDriver()
    seeds = evaluation_seeds(args.seed, args.episodes)
    env = make_env(width, height, dr, phantom, args.max_episode_seconds)
    try:
        results = run_episodes(env, driver, seeds, output_dir / "videos", args.videos)
    finally:
        env.close()

    summary = summarize(results)
    settings = {
        "mode": "expert" if args.expert else "policy", "policy": str(args.policy) if loaded else None,
        "config": loaded.config_source if loaded else None, "device": args.device, "base_seed": args.seed,
        "seeds": seeds, "seeds_check": seeds_note, "width": width, "height": height,
        "n_action_steps": driver.n_action_steps, "temporal_ensemble_coeff": args.temporal_ensemble_coeff,
        "noise_scale": args.noise_scale if loaded else None, "jpeg_quality": args.jpeg_quality if loaded else None,
        "max_episode_seconds": args.max_episode_seconds, "phantom": dataclasses.asdict(phantom),
        "dr": dataclasses.asdict(dr) if dr is not None else None,
    }
    write_report(output_dir, settings, summary, [dataclasses.asdict(r) for r in results])
    label = "scripted expert" if args.expert else str(args.policy)
    acting = (f"{driver.n_action_steps} actions per prediction" if args.temporal_ensemble_coeff is None else
              f"a prediction every {driver.n_action_steps} steps, ensembled (M = {args.temporal_ensemble_coeff})")
    if args.noise_scale != 1.0:
        acting += f", noise x{args.noise_scale:g}"
    print(f"Evaluated {label} on {len(seeds)} episodes: seeds episode_seed({args.seed}, 0..{len(seeds) - 1}), "
          f"DR {'off' if dr is None else 'on'}, {width}x{height}, {acting}")
    print(f"Report: {output_dir / 'report.json'}, {output_dir / 'episodes.csv'}"
          + (f", videos in {output_dir / 'videos'}" if args.videos else ""))
    print("\n".join(summary_lines(summary)))


if __name__ == "__main__":
    exit_on_user_error(main)
