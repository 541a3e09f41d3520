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

step 1 "Collect 16 simulated episodes with domain randomization (160x120, 2 workers)"
$PY -m sim.collect --episodes 16 --out "$OUT/data" --width 160 --height 120 --workers 2 --seed 7

step 2 "Dataset statistics"
DATASET_ROOT="$OUT/data" OUTPUT="$OUT/dataset_stats.yaml" CONFIG="$CONFIG" PYTHON=$PY bash compute_dataset_stats_sim.sh

step 3 "Build the tiny offline VLM"
$PY -m insertion_vla.tiny_vlm "$OUT/tiny_vlm"

step 4 "Train with validation: 2 CPU processes through train_smolvla_sim.sh (gloo)"
# a free port rather than the launcher's default 29501, in case another job on this machine holds it
MASTER_PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    NUM_GPUS=2 CONFIG="$CONFIG" PYTHON=$PY bash train_smolvla_sim.sh

step 5 "Resume from the middle checkpoint with a fresh schedule (the fine-tune path): --reset_scheduler --steps 100 --lr 0.0003"
$PY train_smolvla_sim.py --config "$CONFIG" --resume "$OUT/train/checkpoints/checkpoint_step_200.pt" \
    --reset_scheduler --steps 100 --lr 0.0003 --output_dir "$OUT/finetune"

step 6 "Load final_hf in a fresh process and predict action chunks along the held-out episodes"
$PY evaluate_smolvla_sim.py --policy "$OUT/finetune/checkpoints/final_hf" \
    --episodes_from "$OUT/train/validation_episodes.txt" --output_dir "$OUT/offline_eval"

step 7 "Closed-loop evaluation in the simulator (3 episodes)"
$PY evaluate_smolvla_sim.py --policy "$OUT/finetune/checkpoints/final_hf" --episodes 3 \
    --width 160 --height 120 --output_dir "$OUT/closed_loop"

echo
$PY scripts/demo_summary.py "$OUT" --seconds $((SECONDS - start))
