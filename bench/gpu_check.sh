#!/usr/bin/env bash
# The whole GPU check in one short run (about 2-4 minutes on one GPU): training images/s of
# ResNet-18 and LeNet-5 with AMP, and batch prediction images/s, each fed by our decoder vs the
# same batches already on the GPU. Needs only PyTorch with CUDA and NumPy (pyarrow if present).
# Writes one JSON line per measurement to ${OUT:-.}/gpu_check.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}/gpu_check.jsonl"
: > "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for args in "--model resnet18" "--model lenet" "--model resnet18 --predict --batch 1024" "--model lenet --predict --batch 1024"; do
  # shellcheck disable=SC2086
  python bench/gpu_loop.py --steps 300 --amp bf16 --repeat 3 $args | tee -a "$out"
done
