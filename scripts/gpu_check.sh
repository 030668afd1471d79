#!/usr/bin/env bash
# Train the default demo model on a CUDA GPU and assert CUDA, bf16 autocast and an on-GPU data set.
# Needs only torch, numpy and scikit-learn (pandas + pyarrow if data/raw is present); see
# scripts/gpu_check.py. Usage: scripts/gpu_check.sh [--epochs 10] [--compile]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" exec python scripts/gpu_check.py "$@"
