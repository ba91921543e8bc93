#!/usr/bin/env bash
# One-GPU check of lingraft training, under 8 minutes (issue 12.7; bench/gpu_check.py says what it does).
# A ~1B Llama-shaped random model trains embeddings-only and new_rows in bf16 with document
# masking (flash-attn varlen if installed, else flex attention); prints tokens/s and MFU as
# JSON and fails if the old rows of the table moved.
#
#   bench/gpu_check.sh [--steps 30] [--seq 4096] [--peak-tflops N]     from the repository root or anywhere
#   PYTHON=/path/to/python bench/gpu_check.sh                            another interpreter than .venv
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
limit_s="${GPU_CHECK_TIMEOUT_S:-480}"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found; run this on a machine with an NVIDIA GPU" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

cd "$repo"
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
export LINGRAFT_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec timeout "$limit_s" "$python" bench/gpu_check.py "$@"
