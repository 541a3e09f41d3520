#!/usr/bin/env bash
# Launch train_smolvla_sim.py with torchrun: one process per GPU (or per CPU process with gloo, no CUDA).
#   NUM_GPUS     processes on this node (default 5)
#   NNODES       nodes in the job (default 1); NODE_RANK this node's rank (default 0)
#   MASTER_ADDR  address of node 0 (default 127.0.0.1); MASTER_PORT (default 29501)
#   CONFIG       config file (default train_config_smolvla_sim.yaml)
#   PYTHON       interpreter that runs torchrun (default: python on PATH)
# Arguments are passed on to the script:  bash train_smolvla_sim.sh --resume auto --training.steps=100
# Multi-node: run it on every node with NNODES/NODE_RANK/MASTER_ADDR set; output_dir must be on a
# filesystem every node sees.
set -euo pipefail
NUM_GPUS="${NUM_GPUS:-5}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29501}"
CONFIG="${CONFIG:-train_config_smolvla_sim.yaml}"
PYTHON="${PYTHON:-python}"
HERE="$(cd "$(dirname "$0")" && pwd)"

# Fail here, in one process, with the config's own words (missing file, stats not computed, bad key),
# instead of in NUM_GPUS processes after torchrun has started.
"$PYTHON" "$HERE/train_smolvla_sim.py" --config "$CONFIG" --check_only "$@"

echo "torchrun: $NNODES node(s) x $NUM_GPUS process(es), node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT, config $CONFIG"
# Preemption: SIGTERM or SIGUSR1 (e.g. SLURM's --signal=USR1@300) makes every worker finish its step; rank 0
# writes checkpoint_latest.pt and all exit 0 (continue with --resume auto). torchrun itself would die of SIGUSR1,
# turn SIGTERM into an error exit and SIGKILL workers still saving after 30 s, so it ignores both: this shell
# forwards them to the workers, and a scheduler that signals every process of the job (SLURM) reaches them anyway.
( trap '' TERM USR1
  exec "$PYTHON" -m torch.distributed.run --signals_to_handle SIGINT,SIGHUP,SIGQUIT \
    --nnodes "$NNODES" --nproc_per_node "$NUM_GPUS" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    "$HERE/train_smolvla_sim.py" --config "$CONFIG" "$@" ) &
TORCHRUN=$!
trap 'pkill -TERM -P "$TORCHRUN" || true' TERM
trap 'pkill -USR1 -P "$TORCHRUN" || true' USR1
while true; do
    wait "$TORCHRUN" && status=0 || status=$?
    kill -0 "$TORCHRUN" 2>/dev/null || break  # wait also returns when a signal arrives: torchrun still runs
done
exit "$status"
