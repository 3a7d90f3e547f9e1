#!/usr/bin/env bash
# GPU checks, run by hand on a CUDA machine (CI has no GPU). Parts:
#   smoke:  training in bf16 / fp16 / fp32 / bf16 + torch.compile, cached vs full decoding and ragged batches on the
#           GPU, and GPT-2 small decoding speed (about 3 minutes on an H200);
#   decode: issue 16: why bf16 decoding is slower than fp32 (benchmarks/gpu_decode.py: speed with each suspect
#           changed, kernels a step, SDPA backends, beside transformers; bf16/fp32 agreement on a tiny model trained
#           here first), about 3 minutes, estimated;
#   train:  issue 16: training throughput beside nanoGPT (benchmarks/gpu_train.py), about 4 minutes, estimated.
#           nanoGPT's train.py is read from .peers/nanogpt (git-ignored: a checkout of karpathy/nanoGPT; with this
#           project's device tool, carry ".peers"); without it the part says so and is skipped;
#   serve:  issue 14's load run with the server on the GPU (benchmarks/serve_load.py --device cuda, no reference
#           servers, 20 s per client level and round), about 4 minutes, estimated: whether 16 streaming clients get
#           at most twice one client's time between tokens where a decoding step costs about the same at 1 and 16
#           rows (on the 2-core CPU it is 2.00x over sixteen rounds, README);
#   issue16: decode and train; all: every part.
# Usage: bash benchmarks/gpu_check.sh [smoke|decode|train|serve|issue16|all]   (default all; the installed genloom, or
#        src/)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD/src:${PYTHONPATH:-} GENLOOM_CACHE=${GENLOOM_CACHE:-/tmp/genloom-gpu-cache} PYTHONUNBUFFERED=1
out=${GENLOOM_GPU_RUNS:-/tmp/genloom-gpu}  # the runs it trains (not $OUT: the device tool copies that back)
part=${1:-all}
case "$part" in smoke|decode|train|serve|issue16|all) ;;
  *) echo "unknown part '$part': smoke, decode, train, serve, issue16 or all" >&2; exit 2 ;;
esac
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

train_tiny() {  # train_tiny DTYPE DIR [more flags]: the tiny preset on builtin:pydoc, 300 steps
  local dtype=$1 dir=$2
  shift 2
  python3 -m genloom.cli train lm --preset tiny --steps 300 --eval-interval 150 --device cuda --dtype "$dtype" \
    --out "$dir" --no-progress "$@"
}

if [[ $part == smoke || $part == all ]]; then
  for dtype in bf16 fp16 fp32; do
    echo "== train lm on cuda, $dtype"
    train_tiny "$dtype" "$out/run-$dtype"
  done
  echo "== train lm on cuda, bf16 + torch.compile"
  train_tiny bf16 "$out/run-compile" --compile
  echo "== generate on cuda"
  python3 -m genloom.cli generate "$out/run-bf16" "The for statement" --max-new-tokens 60 --device cuda --seed 0
  python3 benchmarks/gpu_check.py
fi

if [[ $part == decode || $part == issue16 || $part == all ]]; then
  if [[ ! -d $out/run-fp32 ]]; then
    echo "== train lm on cuda, fp32 (the trained model gpu_decode.py compares bf16 and fp32 decoding on)"
    train_tiny fp32 "$out/run-fp32"
  fi
  echo "== issue 16: decoding in bf16 against fp32"
  python3 benchmarks/gpu_decode.py --trained "$out/run-fp32" --hf-compile
fi

if [[ $part == train || $part == issue16 || $part == all ]]; then
  echo "== issue 16: training throughput beside nanoGPT"
  if [[ -f .peers/nanogpt/train.py ]]; then
    python3 benchmarks/gpu_train.py --nanogpt .peers/nanogpt
  else
    echo "no nanoGPT checkout at .peers/nanogpt (train.py, model.py, configurator.py): skipped"
  fi
fi

if [[ $part == serve || $part == all ]]; then
  echo "== issue 14: streaming clients against genloom serve on cuda"
  python3 benchmarks/serve_load.py --device cuda --references none --seconds 20 --rounds 2 --slices 4 \
    --image-seconds 10 --engine-seconds 10
fi
