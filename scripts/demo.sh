#!/usr/bin/env bash
# `make demo`: the whole chain of README's workflow on a small embedded default, on CPU, with the tiny
# offline VLM: collect -> stats -> train (2 processes) -> resume + fine-tune -> export -> predict -> evaluate.
# Every step is the command a user would type; outputs go to outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 MUJOCO_GL=egl WANDB_MODE=offline OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=.venv/bin/python
OUT=outputs/demo
CONFIG=train_config_smolvla_demo.yaml
rm -rf "$OUT/train" "$OUT/finetune" "$OUT/offline_eval" "$OUT/closed_loop"
mkdir -p "$OUT"
start=$SECONDS
step() { echo; echo "==> [$1/7] $2   (t = $((SECONDS - start)) s)"; }

# The fixed tier of the learning benchmark (benchmarks/README.md, "Does it learn?"): the phantom at its nominal
# place, all domain randomization on, demonstrations that hold at the target for 2 s. Small enough to learn on
# CPU in minutes, so the closed loop at the end can succeed.
FIXED="--phantom_x_range 0 --phantom_y_min 0 --phantom_y_max 0 --phantom_yaw_range_deg 0"

step 1 "Collect 16 simulated episodes, fixed phantom placement, domain randomization on (128x96, 2 workers)"
$PY -m sim.collect --episodes 16 --out "$OUT/data" --width 128 --height 96 --workers 2 --seed 7 --hold_seconds 2 $FIXED

step 2 "Dataset statistics"
DATASET_ROOT="$OUT/data" OUTPUT="$OUT/dataset_stats.yaml" CONFIG="$CONFIG" PYTHON=$PY bash compute_dataset_stats_sim.sh

step 3 "Build the tiny offline VLM"
$PY -m insertion_vla.tiny_vlm "$OUT/tiny_vlm"

step 4 "Train with validation: 2 CPU processes through train_smolvla_sim.sh (gloo)"
# a free port rather than the launcher's default 29501, in case another job on this machine holds it
MASTER_PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    NUM_GPUS=2 CONFIG="$CONFIG" PYTHON=$PY bash train_smolvla_sim.sh

step 5 "Resume from the last checkpoint with a fresh schedule (the fine-tune path): --reset_scheduler --steps 50 --lr 0.00002"
$PY train_smolvla_sim.py --config "$CONFIG" --resume "$OUT/train/checkpoints/checkpoint_latest.pt" \
    --reset_scheduler --steps 50 --lr 0.00002 --output_dir "$OUT/finetune"

step 6 "Load final_hf in a fresh process and predict action chunks along the held-out episodes"
$PY evaluate_smolvla_sim.py --policy "$OUT/finetune/checkpoints/final_hf" \
    --episodes_from "$OUT/train/validation_episodes.txt" --output_dir "$OUT/offline_eval"

step 7 "Closed-loop evaluation in the simulator (5 episodes, the fixed tier's placement, held-out seeds, chunks ensembled)"
# ACT's temporal ensembling of the chunks predicted every 10 steps: on the fixed tier it turned 16/20 (4 crossings
# of the eye wall beside the cannula) into 20/20 for the same policy (benchmarks/README.md, "Does it learn?")
$PY evaluate_smolvla_sim.py --policy "$OUT/finetune/checkpoints/final_hf" --episodes 5 \
    --temporal_ensemble_coeff 0.01 --n_action_steps 10 \
    --width 128 --height 96 --videos 1 --output_dir "$OUT/closed_loop" $FIXED

echo
$PY scripts/demo_summary.py "$OUT" --seconds $((SECONDS - start))
