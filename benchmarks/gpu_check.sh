#!/usr/bin/env bash
# GPU smoke check, run by hand on a CUDA machine (CI has no GPU): training in bf16 / fp16 / torch.compile,
# cached vs full decoding and ragged batches on the GPU, and GPT-2 small decoding speed.
# Usage: bash benchmarks/gpu_check.sh   (uses the installed genloom, or src/ when not installed)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src:${PYTHONPATH:-} GENLOOM_CACHE=${GENLOOM_CACHE:-/tmp/genloom-gpu-cache} PYTHONUNBUFFERED=1
out=${OUT:-/tmp/genloom-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for dtype in bf16 fp16 fp32; do
  echo "== train lm on cuda, $dtype"
  python3 -m genloom.cli train lm --preset tiny --steps 300 --eval-interval 150 --device cuda --dtype "$dtype" \
    --out "$out/run-$dtype" --no-progress
done
echo "== train lm on cuda, bf16 + torch.compile"
python3 -m genloom.cli train lm --preset tiny --steps 300 --eval-interval 150 --device cuda --dtype bf16 --compile \
  --out "$out/run-compile" --no-progress
echo "== generate on cuda"
python3 -m genloom.cli generate "$out/run-bf16" "The for statement" --max-new-tokens 60 --device cuda --seed 0
python3 benchmarks/gpu_check.py
