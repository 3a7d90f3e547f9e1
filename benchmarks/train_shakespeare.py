"""Training quality and speed on Tiny Shakespeare (character level), nanoGPT's CPU configuration.

Rows, all trained by genloom's one Trainer loop in this process:
  1. genloom GPT with nanoGPT's recipe exactly (learned positions, GELU, LayerNorm, lr 1e-3), several seeds.
  2. The same model and iterations with lr 3e-3 (nanoGPT's 1e-3 is conservative at this size).
  3. transformers GPT2LMHeadModel of the same size in the same loop: ms/iter (the speed peer) and its loss.
  4. genloom "modern" (rotary, SwiGLU, RMSNorm, QK-norm) for the training time of row 2.

Usage: python benchmarks/train_shakespeare.py [--iters 2000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
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
from genloom.train.metrics import read_metrics
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
        log_interval=10, device="cpu", progress=False,
    )


def hf_model(vocab_size: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # transformers' defaults otherwise (biases, tanh-approximate GELU), as a user would build it.
    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa",
    )
    return GPT2LMHeadModel(cfg)


TOKENS_PER_ITER = 12 * 64


def run(model: nn.Module, task: LanguageModelTask, cfg: TrainConfig) -> tuple[float, float]:
    """Train; return (val loss, median ms per iteration from the metrics log)."""
    result = Trainer(task, model, cfg).fit()
    step_ms = [r["step_ms"] for r in read_metrics(Path(cfg.out_dir)) if "step_ms" in r][2:]  # skip warm-up
    assert result.val_loss is not None
    return result.val_loss, statistics.median(step_ms)


def row(name: str, iters: int, val: str, ms: float) -> list[str]:
    return [name, str(iters), val, f"{ms:.1f}", f"{TOKENS_PER_ITER / ms * 1000:,.0f}", f"{ms * iters / 1000:.0f}"]


def seeds_rows(name: str, make: Callable[[int], tuple[float, float]], iters: int, seeds: list[int]) -> tuple[
    list[list[str]], float
]:
    """One row per seed and a mean ± std row; returns them and the median ms/iter."""
    results = [make(seed) for seed in seeds]
    rows = [
        row(f"{name}, seed {seed}", iters, f"{val:.4f}", ms) for seed, (val, ms) in zip(seeds, results, strict=True)
    ]
    vals = [val for val, _ in results]
    ms = statistics.median(ms for _, ms in results)
    spread = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
    rows.append(row(f"**{name}, mean of {len(vals)}**", iters, f"**{statistics.mean(vals):.4f}{spread}**", ms))
    return rows, ms


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--speed-rounds", type=int, default=5, help="alternating timing rounds per model")
    parser.add_argument("--speed-iters", type=int, default=100, help="iterations per timing round")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for each genloom quality row")
    args = parser.parse_args()
    set_threads(2)
    text = shared_file("tinyshakespeare.txt").read_text()
    tmp = Path(tempfile.mkdtemp(prefix="genloom-bench-"))
    corpus: TokenArrays = tokenize_corpus([text], "char", lambda d: CharTokenizer.train(d[0]), 0.1, tmp / "cache")
    vocab = corpus.tokenizer.vocab_size
    # nanoGPT's config/train_shakespeare_char.py with its README's CPU overrides: 4 layers, 4 heads, 128 dims,
    # block 64, no biases, exact GELU, dropout 0 -- genloom's "tiny" preset.
    base = preset("tiny", vocab_size=vocab)
    modern = preset("tiny-modern", vocab_size=vocab)
    hf_task = HFTask(base, corpus.tokenizer, corpus, 12)

    def genloom_task(config: GPTConfig) -> LanguageModelTask:
        return LanguageModelTask(config, corpus.tokenizer, corpus, 12)

    def train(config: GPTConfig, name: str, iters: int, seed: int, lr: float) -> tuple[float, float]:
        torch.manual_seed(seed)
        cfg = train_config(tmp / f"{name}-{seed}", iters, lr=lr, min_lr=lr / 10)
        cfg.seed = seed
        return run(GPT(config), genloom_task(config), cfg)

    # Speed: short rounds alternating between the two models; this machine's speed drifts by 20 % over
    # minutes, so each round's ratio compares neighbours in time, and the median ratio is reported.
    ratios, ours_ms, hf_ms = [], [], []
    for r in range(args.speed_rounds):
        torch.manual_seed(0)
        ours_ms.append(run(GPT(base), genloom_task(base), train_config(tmp / f"s-ours-{r}", args.speed_iters))[1])
        torch.manual_seed(0)
        hf_ms.append(run(hf_model(vocab), hf_task, train_config(tmp / f"s-hf-{r}", args.speed_iters))[1])
        ratios.append(hf_ms[-1] / ours_ms[-1])
        print(f"round {r}: genloom {ours_ms[-1]:.1f} ms/iter, transformers {hf_ms[-1]:.1f} ms/iter, "
              f"ratio {ratios[-1]:.2f}x", flush=True)

    seeds = list(range(1337, 1337 + args.seeds))
    rows, _ = seeds_rows("genloom GPT, nanoGPT recipe (lr 1e-3)", lambda s: train(base, "nanogpt", args.iters, s, 1e-3),
                         args.iters, seeds)
    tuned_rows, tuned_ms = seeds_rows("genloom GPT, same model, lr 3e-3",
                                      lambda s: train(base, "lr3e-3", args.iters, s, 3e-3), args.iters, seeds)
    rows += tuned_rows
    torch.manual_seed(1337)
    hval, hms = run(hf_model(vocab), hf_task, train_config(tmp / "hf", args.iters))
    rows.append(row("transformers GPT2LMHeadModel, nanoGPT recipe, same loop", args.iters, f"{hval:.4f}", hms))

    # A better recipe in the same training time as the lr 3e-3 rows: as many iterations as fit.
    probe_ms = run(GPT(modern), genloom_task(modern), train_config(tmp / "probe-modern", 200))[1]
    modern_iters = int(args.iters * tuned_ms / probe_ms)
    modern_rows, _ = seeds_rows("genloom modern (rotary, SwiGLU, RMSNorm, QK-norm), lr 3e-3",
                                lambda s: train(modern, "modern", modern_iters, s, 3e-3), modern_iters, seeds[:1])
    rows += modern_rows[:1]

    print()
    print(f"training speed, same loop: genloom {statistics.median(ours_ms):.1f} ms/iter, transformers "
          f"{statistics.median(hf_ms):.1f} ms/iter; median of {len(ratios)} paired rounds: "
          f"{statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    print_table(["model", "iters", "val loss", "ms/iter", "tok/s", "train s"], rows)


if __name__ == "__main__":
    main()
