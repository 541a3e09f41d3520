#!/usr/bin/env bash
# Statistics of the simulation dataset -> dataset_stats_sim.yaml (run once before training).
#   DATASET_ROOT  episodes directory (default: dataset.root_dir of the config)
#   OUTPUT        output file (default: dataset_stats_sim.yaml)
#   CONFIG        training config giving the keys (default: train_config_smolvla_sim.yaml beside this script)
#   PYTHON        interpreter (default: python on PATH)
# Extra arguments go to compute_dataset_stats.py, e.g. --skip_bad or --max_episodes 10.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ARGS=(--config "${CONFIG:-$HERE/train_config_smolvla_sim.yaml}" --output "${OUTPUT:-dataset_stats_sim.yaml}")
if [ -n "${DATASET_ROOT:-}" ]; then ARGS+=(--dataset_root "$DATASET_ROOT"); fi
exec "${PYTHON:-python}" "$HERE/compute_dataset_stats.py" "${ARGS[@]}" "$@"
