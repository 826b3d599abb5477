#!/usr/bin/env bash
# Multi-node DINO pretraining with torchrun's c10d rendezvous (no SLURM needed).
#
# Run the SAME command on every node; only the endpoint must be reachable from all of them:
#   NNODES=2 GPUS_PER_NODE=8 RDZV_HOST=node01 tools/launch_multinode.sh \
#       --data /data/imagenet/train --arch vit_small --batch-size 64 --output-dir runs/s16
# Elastic: if a rank dies, torchrun restarts the whole group (up to MAX_RESTARTS times) and
# every rank resumes from OUTPUT_DIR/checkpoint.pth (checkpoint.dcp/ with --parallel fsdp).
# Large models, small GPUs: PARALLEL=fsdp, ACTIVATION_CHECKPOINTING=1 and GRAD_ACCUM=N add
# --parallel fsdp, --activation-checkpointing and --grad-accum N (or pass those options):
#   PARALLEL=fsdp ACTIVATION_CHECKPOINTING=1 NNODES=4 RDZV_HOST=node01 \
#       tools/launch_multinode.sh --arch vit_large --batch-size 32 ...
# CPU-only test run on one machine, two "nodes" of one process each, gloo backend:
#   NNODES=2 GPUS_PER_NODE=1 RDZV_HOST=127.0.0.1 NODE_RANK=0 tools/launch_multinode.sh --device cpu ... &
#   NNODES=2 GPUS_PER_NODE=1 RDZV_HOST=127.0.0.1 NODE_RANK=1 tools/launch_multinode.sh --device cpu ...
set -euo pipefail
: "${NNODES:=1}"
: "${GPUS_PER_NODE:=$(python3 -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
: "${RDZV_HOST:=127.0.0.1}"
: "${RDZV_PORT:=29400}"
: "${RDZV_ID:=dino-$(date +%Y%m%d)}"
: "${MAX_RESTARTS:=3}"
extra=()
[ -n "${NODE_RANK:-}" ] && extra+=(--node-rank "$NODE_RANK")
train=()
[ -n "${PARALLEL:-}" ] && train+=(--parallel "$PARALLEL")
[ "${ACTIVATION_CHECKPOINTING:-0}" = 1 ] && train+=(--activation-checkpointing)
[ -n "${GRAD_ACCUM:-}" ] && train+=(--grad-accum "$GRAD_ACCUM")
exec torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$RDZV_HOST:$RDZV_PORT" --rdzv-id "$RDZV_ID" \
    --max-restarts "$MAX_RESTARTS" "${extra[@]}" \
    -m dino_core.cli.train "${train[@]}" "$@"
