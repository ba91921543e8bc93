#!/usr/bin/env bash
# Shared set-up for the sbatch templates: where the code runs from, the rendezvous address,
# and fail-fast timeouts so an unreachable master gives an error instead of a hang.
# shellcheck disable=SC2034  # variables are used by the sourcing template
set -euo pipefail

: "${CONFIG:?set CONFIG=path/to/train.yaml (sbatch --export=ALL,CONFIG=...)}"
LINGRAFT_DIR=${LINGRAFT_DIR:-$(pwd)}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_PORT=${MASTER_PORT:-29500}
NNODES=${SLURM_NNODES:-1}
if command -v scontrol >/dev/null 2>&1; then
  MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
else
  MASTER_ADDR=${MASTER_ADDR:-$(python3 -c 'import os,sys; sys.path.insert(0, os.environ["LINGRAFT_DIR"]); from lingraft.hostfile import expand_nodelist; print(expand_nodelist(os.environ["SLURM_JOB_NODELIST"])[0])')}
fi
export MASTER_ADDR MASTER_PORT LINGRAFT_DIR
# A rank that cannot reach the master fails after this many seconds (read by launch/train.py).
export LINGRAFT_DIST_TIMEOUT_S=${LINGRAFT_DIST_TIMEOUT_S:-600}
# NCCL: fail on a stuck collective rather than hang forever.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
cd "$LINGRAFT_DIR"
