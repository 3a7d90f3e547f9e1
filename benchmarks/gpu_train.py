"""GPU training throughput beside nanoGPT (issue 16): the same GPT-2 small, context 1024, bf16 autocast, batch.

Both train the same model on the same random tokens for `--steps` optimizer steps of one micro-batch: nanoGPT's
own `train.py` run as the peer (never copied into this project: `--nanogpt DIR` names a checkout of
karpathy/nanoGPT; on a machine without network, bring one along, e.g. in an ignored folder of the repo), and
genloom's one Trainer with its language-model task. Model: 12 layers, d_model 768, 12 heads, no biases, vocabulary
50,304 (nanoGPT's defaults; genloom's `gpt2` preset with bias off and that vocabulary). Each side's step time is
the median over the steps after `--warmup` (compilation and allocator warm-up excluded).

Reported per side: ms a step, tokens/s and model FLOPs utilisation, MFU = tokens/s x (6 N + 12 L d T) / peak, with
N the parameters (embeddings included, as nanoGPT counts them), L layers, d width, T context, and peak the GPU's
dense bf16 FLOP/s (`--peak-tflops`, 989 for an H200 SXM). Rows: genloom compiled and eager, nanoGPT compiled,
and with `--tf32-row` genloom in fp32 with TF32 matrix products (nanoGPT turns TF32 on; genloom leaves torch's
default, off). Both use fused AdamW. The first micro-batch size of `--batches` that fits genloom's compiled step
is used for every row (an out-of-memory error tries the next).

Usage: python benchmarks/gpu_train.py --nanogpt DIR [--batches 48,32,16] [--steps 20] [--peak-tflops 989]
       [--tf32-row]   (about 3-4 minutes on an H200, estimated: each compiled row compiles for about a minute;
       the script's own check on a CPU: --device cpu --layers 2 --context 64 --batches 2 --steps 4 --warmup 1
       --no-compile, about a minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import print_table

from genloom.data.text import TokenArrays
from genloom.models.gpt import GPT, preset
from genloom.tokenizers import CharTokenizer
from genloom.train.config import TrainConfig
from genloom.train.lm import LanguageModelTask
from genloom.train.trainer import Trainer

VOCAB = 50304  # GPT-2's 50,257 padded to a multiple of 64, as nanoGPT pads it
TOKENS = 4_000_000  # random training tokens: more windows than the run reads


def random_tokens(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """train.bin / val.bin in nanoGPT's format (uint16 ids) under root/data/random, and the arrays."""
    rng = np.random.default_rng(0)
    data = root / "data" / "random"
    data.mkdir(parents=True)
    train = rng.integers(0, VOCAB, TOKENS, dtype=np.uint16)
    val = rng.integers(0, VOCAB, TOKENS // 10, dtype=np.uint16)
    train.tofile(data / "train.bin")
    val.tofile(data / "val.bin")
    return train, val


def model_flops_per_token(n_params: int, layers: int, width: int, context: int) -> float:
    return 6 * n_params + 12 * layers * width * context  # PaLM appendix B, as nanoGPT's estimate_mfu


def genloom_step_ms(args: argparse.Namespace, batch: int, train: np.ndarray, val: np.ndarray, compile_: bool,
                    dtype: str, out: Path) -> tuple[float, int]:
    """Median ms an optimizer step after the warm-up steps, and the model's parameter count."""
    config = preset("gpt2", vocab_size=VOCAB, context_length=args.context, bias=False, dropout=0.0,
                    **({} if args.layers is None else {"n_layers": args.layers}))
    torch.manual_seed(0)
    model = GPT(config)
    tokenizer = CharTokenizer(["a"])  # the task's validation probes read it; the ids are random anyway
    task = LanguageModelTask(config, tokenizer, TokenArrays(train, val, tokenizer), batch)
    steps = args.warmup + args.steps
    cfg = TrainConfig(out_dir=str(out), max_steps=steps, batch_size=batch, lr=6e-4, min_lr=6e-5, warmup_steps=10,
                      beta2=0.95, eval_interval=steps, eval_batches=1, log_interval=1, keep_last=1, dtype=dtype,
                      compile=compile_, device=args.device, progress=False, overwrite=True)
    Trainer(task, model, cfg).fit()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_ms = [r["step_ms"] for r in records if "step_ms" in r and r["step"] > args.warmup]
    return statistics.median(step_ms), model.num_parameters()


def nanogpt_step_ms(args: argparse.Namespace, batch: int, root: Path) -> float:
    """nanoGPT's train.py in a scratch copy of its checkout, on root's data: median 'time ...ms' after warm-up."""
    work = root / "nanogpt"
    shutil.copytree(args.nanogpt, work, ignore=shutil.ignore_patterns(".git", "data"), dirs_exist_ok=True)
    (work / "data").symlink_to(root / "data", target_is_directory=True)
    on_gpu = args.device.startswith("cuda")
    flags = ["--dataset=random", f"--batch_size={batch}", f"--block_size={args.context}",
             "--gradient_accumulation_steps=1", f"--max_iters={args.warmup + args.steps}", "--eval_interval=100000",
             "--eval_iters=1", "--log_interval=1", "--always_save_checkpoint=False", f"--device={args.device}",
             f"--compile={args.compile}", f"--dtype={'bfloat16' if on_gpu else 'float32'}",
             f"--out_dir={root / 'nanogpt-out'}"]
    if args.layers is not None:
        flags.append(f"--n_layer={args.layers}")
    done = subprocess.run([sys.executable, "train.py", *flags], cwd=work, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nanoGPT failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    times = [(int(m[1]), float(m[2])) for m in re.finditer(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", done.stdout)]
    return statistics.median(ms for step, ms in times if step > args.warmup)


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT (train.py)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="48,32,16", help="micro-batch sizes to try, largest first")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--layers", type=int, help="override GPT-2 small's 12 (the script's own CPU check)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--tf32-row", action="store_true",
                        help="also genloom in fp32 with TF32 matmuls (one more compile)")
    args = parser.parse_args()
    if not (args.nanogpt / "train.py").is_file():
        sys.exit(f"{args.nanogpt} has no train.py: pass a checkout of karpathy/nanoGPT")
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    root = Path(tempfile.mkdtemp(prefix="genloom-gpu-train-"))
    train, val = random_tokens(root)

    precision = "bf16 autocast" if on_gpu else "fp32 (CPU check)"
    batch, rows = None, []
    for candidate in (int(b) for b in args.batches.split(",")):
        try:  # the largest micro-batch genloom's compiled bf16 step fits decides the batch for every row
            ms, n_params = genloom_step_ms(args, candidate, train, val, args.compile, "bf16" if on_gpu else "fp32",
                                           root / f"genloom-{candidate}")
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            print(f"micro-batch {candidate}: out of memory")
        else:
            batch = candidate
            rows.append((f"genloom, {precision}" + (", compiled" if args.compile else ""), ms))
            break
        gc.collect()  # the failed try's model and activations, before the next size
        torch.cuda.empty_cache()
    if batch is None:
        sys.exit("no micro-batch of --batches fits")
    layers = args.layers or 12
    flops = model_flops_per_token(n_params, layers, 768, args.context)
    if on_gpu and args.compile:  # does compiling help, on the same batch
        ms, _ = genloom_step_ms(args, batch, train, val, False, "bf16", root / "genloom-eager")
        rows.append(("genloom, bf16 autocast, eager", ms))
    if on_gpu and args.tf32_row:
        torch.backends.cuda.matmul.allow_tf32 = True  # nanoGPT sets both; genloom's default leaves them off
        torch.backends.cudnn.allow_tf32 = True
        ms, _ = genloom_step_ms(args, batch, train, val, args.compile, "fp32", root / "genloom-tf32")
        rows.append(("genloom, fp32 with TF32 matmuls" + (", compiled" if args.compile else ""), ms))
    try:
        rows.append((f"nanoGPT train.py, {precision}" + (", compiled" if args.compile else ""),
                     nanogpt_step_ms(args, batch, root)))
    except RuntimeError as e:
        print(e)
    tokens_per_step = batch * args.context
    print(f"\nGPT-2 small, {layers} layers ({n_params / 1e6:.1f}M parameters, no biases, vocabulary {VOCAB}), "
          f"context {args.context}, "
          f"micro-batch {batch}, median of {args.steps} steps after {args.warmup}; "
          f"{flops / 1e9:.2f} GFLOP a token, peak {args.peak_tflops:g} TFLOP/s")
    reference = rows[-1][1] if rows[-1][0].startswith("nanoGPT") else None
    table = []
    for name, ms in rows:
        tokens_per_s = tokens_per_step / (ms / 1000)
        mfu = tokens_per_s * flops / (args.peak_tflops * 1e12)
        table.append([name, f"{ms:.1f}", f"{tokens_per_s:,.0f}", f"{mfu:.1%}",
                      "" if reference is None else f"{reference / ms:.2f}x"])
    print_table(["trainer", "ms a step", "tokens/s", "MFU", "tokens/s against nanoGPT"], table)


if __name__ == "__main__":
    main()
