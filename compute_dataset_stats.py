#!/usr/bin/env python
"""Mean, std, min, max, q01, q99 and count of state and action over every episode, in one pass.

    python compute_dataset_stats.py --dataset_root data/Eye_trocar_sim --output dataset_stats_sim.yaml

Discovery and keys (state layout, action key, cameras) are the training config's (--config plus the same
--section.key=value overrides as train_smolvla_sim.py), so the statistics describe exactly what training reads.
"""

import argparse
import time

from episode_format.reader import discover_episodes
from insertion_vla.config import OVERRIDES_HELP, parse_args_and_config
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import exit_on_user_error
from insertion_vla.localizer import ESTIMATE_NAMES, estimator_from_config
from insertion_vla.stats import CONSTANT_STD, compute_stats, near_constant_dims, save_stats


def main():
    parser = argparse.ArgumentParser(description=__doc__, epilog=OVERRIDES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_root", help="directory searched recursively for *.h5/*.hdf5 (sets dataset.root_dir; default: the config's)")
    parser.add_argument("--output", default="dataset_stats_sim.yaml", help="YAML file to write (atomically); default: %(default)s")
    parser.add_argument("--config", help="training config whose dataset section gives the keys (default: built-in defaults)")
    parser.add_argument("--max_episodes", type=int, help="use only the first N episodes in discovery order")
    parser.add_argument("--skip_bad", action="store_true", help="skip damaged or malformed files and list them, instead of failing")
    args, cfg = parse_args_and_config(parser, shortcuts={"dataset_root": "dataset.root_dir"})

    dataset_cfg = cfg["dataset"]
    root = dataset_cfg["root_dir"]
    keys = keys_from_config(dataset_cfg)
    paths = discover_episodes(root)[: args.max_episodes]
    print(f"Computing statistics of {len(paths)} episodes in {root} (state: {' + '.join(keys.state_keys)}, action: {keys.action_key})")

    start = time.perf_counter()
    estimator = estimator_from_config(dataset_cfg)
    if dataset_cfg["true_placement"]:
        print(f"  the state ends with the simulator's true placement ({', '.join(ESTIMATE_NAMES)}), as training appends it")
    elif estimator is not None:
        refined = ", refined near the trocar" if estimator.near else ""
        print(f"  the state ends with the placement estimate of {dataset_cfg['placement_estimate']} "
              f"({', '.join(ESTIMATE_NAMES)}{refined}), as training appends it")
    stats, skipped = compute_stats(paths, keys, skip_bad=args.skip_bad, estimator=estimator)
    for path, reason in skipped:
        print(f"skipped: {reason}")
    source = {
        "dataset_root": str(root), "episodes": len(paths) - len(skipped), "skipped": [str(p) for p, _ in skipped],
        "state_keys": list(keys.state_keys), "action_key": keys.action_key,
        "placement_estimate": dataset_cfg["placement_estimate"],
        "near_target_estimate": dataset_cfg["near_target_estimate"],
        "true_placement": dataset_cfg["true_placement"],
    }
    save_stats(stats, args.output, source)
    for feature, s in stats.items():
        print(f"{feature}: {s['count']} frames, {len(s['mean'])} dims")
        print(f"  mean {s['mean'].round(4).tolist()}")
        print(f"  std  {s['std'].round(4).tolist()}")
    for feature, dim, std in near_constant_dims(stats):
        print(f"near-constant: {feature}[{dim}] has std {std:.2g} < {CONSTANT_STD:g}; training normalizes it to a constant")
    print(f"Wrote {args.output} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    exit_on_user_error(main)
