#!/usr/bin/env bash
# The prepared GPU run (#26): at most 8 minutes on one CUDA device, exact CompVis/ldm-celebahq-256
# architectures at 256² with random weights (no download). Prints, for fp32 (TF32) and bf16:
# milliseconds per part of a guided step, the step with the full and with a distilled decoder,
# counted TFLOP and model FLOP utilisation, peak memory and counterfactuals per second; then the
# seed-faithful configuration against the default sampler (`ldvce bench generate --gpu`).
#
#   bash benchmarks/gpu.sh [OUT_DIR]        # results as JSON in OUT_DIR (default runs/gpu)
#
# Needs the virtualenv (`make install`). PEAK_BF16 / PEAK_TF32 set the device's peak TFLOP/s
# for the utilisation (defaults: H100/H200 SXM dense, 989 / 495).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu}}
mkdir -p "$OUT"
LDVCE=${LDVCE:-.venv/bin/ldvce}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for spec in "fp32 ${PEAK_TF32:-495}" "bf16 ${PEAK_BF16:-989}"; do
  set -- $spec
  echo "== $1 =="
  timeout 150 "$LDVCE" bench generate --arch compvis --device cuda --dtype "$1" --n 8 \
    --peak-tflops "$2" --json "$OUT/parts_$1.json" || echo "parts $1: failed or timed out (rc $?)"
done
echo "== seed-faithful vs default sampler (bf16, 8 images) =="
timeout 150 "$LDVCE" bench generate --gpu --n 8 --json "$OUT/gpu.json" \
  || echo "bench --gpu: failed or timed out (rc $?)"
