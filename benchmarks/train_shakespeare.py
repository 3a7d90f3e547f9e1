"""Training quality and speed on Tiny Shakespeare (character level), nanoGPT's CPU configuration.

Rows, all trained by genloom's one Trainer loop in this process:
  1. genloom GPT (learned positions, GELU, LayerNorm): 2000 iterations -> val loss, ms/iter.
  2. transformers GPT2LMHeadModel of the same size in the same loop: ms/iter (speed peer), and its loss.
  3. genloom "modern" recipe (rotary, SwiGLU, RMSNorm, QK-norm, higher lr) for the same wall time as row 1.

Usage: python benchmarks/train_shakespeare.py [--iters 2000] [--skip-hf-full]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import print_table, set_threads, shared_file
from torch import Tensor, nn

from genloom.data.text import TokenArrays, tokenize_corpus
from genloom.models.gpt import GPT, GPTConfig, preset
from genloom.tokenizers import CharTokenizer
from genloom.train.config import TrainConfig
from genloom.train.lm import LanguageModelTask
from genloom.train.trainer import Batch, Trainer


class HFTask(LanguageModelTask):
    """The same next-token task for a transformers model, whose forward returns an output object."""

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))


def train_config(out: Path, iters: int, lr: float = 1e-3, min_lr: float = 1e-4, eval_interval: int = 0) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), max_steps=iters, batch_size=12, lr=lr, min_lr=min_lr, warmup_steps=100, beta2=0.99,
        weight_decay=0.1, grad_clip=1.0, eval_interval=eval_interval or iters, eval_batches=200,
        log_interval=50, device="cpu", progress=False,
    )


def hf_model(vocab_size: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # transformers' defaults otherwise (biases, tanh-approximate GELU), as a user would build it.
    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(cfg)


def run(model: nn.Module, task: LanguageModelTask, cfg: TrainConfig) -> tuple[float, float, float]:
    """Train; return (val loss, median ms per iteration from the metrics log, wall seconds)."""
    start = time.perf_counter()
    trainer = Trainer(task, model, cfg)
    result = trainer.fit()
    wall = time.perf_counter() - start
    from genloom.train.metrics import read_metrics

    step_ms = [r["step_ms"] for r in read_metrics(Path(cfg.out_dir)) if "step_ms" in r][1:]  # skip warm-up
    assert result.val_loss is not None
    return result.val_loss, statistics.median(step_ms), wall


def timed_iters(model: nn.Module, task: LanguageModelTask, iters: int, out: Path) -> float:
    """ms/iter of `iters` training steps (speed only)."""
    _, ms, _ = run(model, task, train_config(out, iters))
    return ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--speed-iters", type=int, default=300)
    parser.add_argument("--skip-hf-full", action="store_true", help="time transformers only, no 2000-iter run")
    args = parser.parse_args()
    set_threads(2)
    text = shared_file("tinyshakespeare.txt").read_text()
    tmp = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
    corpus: TokenArrays = tokenize_corpus([text], "char", lambda d: CharTokenizer.train(d[0]), 0.1, tmp / "cache")
    vocab = corpus.tokenizer.vocab_size

    def genloom_task(config: GPTConfig) -> LanguageModelTask:
        return LanguageModelTask(config, corpus.tokenizer, corpus, 12)

    # nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides: 4 layers, 4 heads, 128 dims,
    # block 64, no biases, exact GELU, dropout 0 -- genloom's "tiny" preset.
    base = preset("tiny", vocab_size=vocab)
    hf_task = HFTask(base, corpus.tokenizer, corpus, 12)

    # Speed, side by side: alternate the two models twice so drift hits both equally.
    ours_ms, hf_ms = [], []
    for rep in range(2):
        torch.manual_seed(0)
        ours_ms.append(timed_iters(GPT(base), genloom_task(base), args.speed_iters, tmp / f"s-ours-{rep}"))
        torch.manual_seed(0)
        hf_ms.append(timed_iters(hf_model(vocab), hf_task, args.speed_iters, tmp / f"s-hf-{rep}"))
    ours, hf = min(ours_ms), min(hf_ms)
    tokens_per_iter = 12 * 64
    print(f"speed: genloom {ours:.1f} ms/iter ({tokens_per_iter / ours * 1000:,.0f} tok/s), "
          f"transformers {hf:.1f} ms/iter ({tokens_per_iter / hf * 1000:,.0f} tok/s), ratio {hf / ours:.2f}x")

    torch.manual_seed(1337)
    val, ms, wall = run(GPT(base), genloom_task(base), train_config(tmp / "ours", args.iters))
    print(f"genloom GPT: val {val:.4f} after {args.iters} iters, {ms:.1f} ms/iter, {wall:.0f} s wall")
    rows = [["genloom GPT, nanoGPT recipe (learned pos, GELU, LayerNorm)", f"{args.iters}", f"{val:.4f}", f"{ms:.1f}",
             f"{tokens_per_iter / ms * 1000:,.0f}", f"{wall:.0f}"]]
    if not args.skip_hf_full:
        torch.manual_seed(1337)
        hval, hms, hwall = run(hf_model(vocab), hf_task, train_config(tmp / "hf", args.iters))
        rows.append(["transformers GPT2LMHeadModel, same loop", f"{args.iters}", f"{hval:.4f}", f"{hms:.1f}",
                     f"{tokens_per_iter / hms * 1000:,.0f}", f"{hwall:.0f}"])

    # A better recipe in the same wall time: as many iterations as fit into row 1's wall clock.
    modern = preset("tiny-modern", vocab_size=vocab)
    probe_ms = timed_iters(GPT(modern), genloom_task(modern), 100, tmp / "probe-modern")
    modern_iters = int(args.iters * ms / probe_ms)
    torch.manual_seed(1337)
    mval, mms, mwall = run(GPT(modern), genloom_task(modern),
                           train_config(tmp / "modern", modern_iters, lr=2e-3, min_lr=2e-4))
    rows.append(["genloom modern (rotary, SwiGLU, RMSNorm, QK-norm, lr 2e-3)", f"{modern_iters}", f"{mval:.4f}",
                 f"{mms:.1f}", f"{tokens_per_iter / mms * 1000:,.0f}", f"{mwall:.0f}"])
    print()
    print(f"speed ratio (same loop, {args.speed_iters} iters, best of 2): genloom {hf / ours:.2f}x transformers")
    print_table(["model", "iters", "val loss", "ms/iter", "tok/s", "wall s"], rows)


if __name__ == "__main__":
    main()
