#!/usr/bin/env python
"""The end of `make demo`: what the run did, where it wrote it, and a non-zero exit if training did not learn.

Reads only what the chain wrote (metrics.csv of both training runs, the evaluators' JSON reports).
"""

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path


def read_metrics(path: Path) -> dict:
    series = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            series[row["metric"]].append((int(row["step"]), float(row["value"])))
    return series


def last_per_joint(series: dict, prefix: str) -> list[float]:
    joints = sorted((int(name.rsplit("/", 1)[1]), values[-1][1]) for name, values in series.items()
                    if name.startswith(prefix + "/"))
    return [value for _, value in joints]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the demo's output folder (outputs/demo)")
    parser.add_argument("--seconds", type=int, help="wall time of the whole demo, for the summary")
    args = parser.parse_args()

    train = read_metrics(args.out / "train" / "metrics.csv")
    finetune = read_metrics(args.out / "finetune" / "metrics.csv")
    losses = [v for _, v in train["train/loss"]] + [v for _, v in finetune["train/loss"]]
    k = max(1, len(losses) // 5)  # compare the first and last fifth of the logged losses: single steps are noisy
    start, end = sum(losses[:k]) / k, sum(losses[-k:]) / k
    mae = last_per_joint(finetune, "val/action_mae_deg")
    offline = json.loads((args.out / "offline_eval" / "report.json").read_text())["summary"]
    closed_report = json.loads((args.out / "closed_loop" / "report.json").read_text())
    closed = closed_report["summary"]
    lo, hi = closed["success_rate_ci95"]
    # the demo runs the learning benchmark's fixed tier: the phantom at its nominal place
    settings = closed_report["settings"]
    tier = "fixed tier" if not any(settings["phantom"].values()) else "phantom placement randomized"
    if settings["temporal_ensemble_coeff"] is not None:
        tier += f", chunks ensembled (M = {settings['temporal_ensemble_coeff']:g})"

    print("=" * 100)
    print("Demo summary" + (f" ({args.seconds // 60} min {args.seconds % 60} s)" if args.seconds else ""))
    print(f"  training loss     start {start:.4f} -> end {end:.4f} (mean of the first / last {k} logged values)")
    print(f"  validation MAE    per joint (deg), held-out episodes, after the fine-tune: [{', '.join(f'{x:.2f}' for x in mae)}]")
    print(f"  fresh process     final_hf loaded with lerobot alone, chunks predicted along "
          f"{offline['episodes']} held-out episodes: MAE (deg) [{', '.join(f'{x:.2f}' for x in offline['mae_deg'])}]")
    print(f"  closed loop       success {closed['successes']}/{closed['episodes']} in the simulator (95 % CI "
          f"{100 * lo:.0f}-{100 * hi:.0f} %), final tip error mean {closed['tip_error_mm']['mean']:.1f} mm, "
          f"unsafe {closed['unsafe']}/{closed['episodes']} ({tier})")
    print("  written:")
    for what, path in [
        ("episodes (HDF5)", args.out / "data"), ("statistics", args.out / "dataset_stats.yaml"),
        ("tiny VLM", args.out / "tiny_vlm"), ("training run", args.out / "train"),
        ("checkpoints", args.out / "train" / "checkpoints"), ("fine-tune run", args.out / "finetune"),
        ("exported policy", args.out / "finetune" / "checkpoints" / "final_hf"),
        ("loss curves", args.out / "finetune" / "plots" / "loss.png"),
        ("offline predictions", args.out / "offline_eval"), ("closed-loop report, videos", args.out / "closed_loop"),
    ]:
        print(f"    {what:28s} {path}")
    print("=" * 100)
    if not end < start:
        print(f"error: the training loss did not go down ({start:.4f} -> {end:.4f})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
