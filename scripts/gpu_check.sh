#!/usr/bin/env bash
# Train the default demo model on CUDA and assert CUDA, bf16 autocast and an on-GPU data set; with
# several GPUs, as DDP over all of them (torchrun, NCCL, one process per GPU, as train.nproc does).
# Needs only torch, numpy and scikit-learn (pandas + pyarrow if data/raw is present); see
# scripts/gpu_check.py. Usage: scripts/gpu_check.sh [--epochs 10] [--compile] [--data-on-device never]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -gt 1 ]; then
  exec python -m torch.distributed.run --standalone --nproc-per-node "$gpus" scripts/gpu_check.py "$@"
fi
exec python scripts/gpu_check.py "$@"
