"""Training-step speed on this CPU: fp32 against bf16 autocast (`--dtype bf16`), for the models the time-budgeted
benchmarks train.

- dit-small as the shapes benchmark trains it (benchmarks/diffusion.py): batch 64 of 8x8x4 latents, patch 2,
  captions of 24 positions (half padding), flow-matching-like MSE loss.
- the tiny GPT as chat fine-tuning trains it (benchmarks/chat_sft.py): 16 packed rows of 256 tokens, documents of
  50 tokens with document masking and positions restarting in each.

A step is forward (under autocast for bf16), loss in fp32, backward and an AdamW update: the model's part of a
trainer step, without its EMA, clipping and data work (which bf16 does not speed up: a whole dit-small run gains
less, 1.2x in README).
Median of `--steps` timed steps after 5 warm-up steps, fp32 and bf16 interleaved `--repeats` times so that drift on a
shared machine hits both alike. Under CPU autocast, attention runs in fp32 (genloom.nn.attention: CPU flash
attention's bf16 backward is far slower), so bf16 speeds up the projections and MLPs.

Usage: python benchmarks/train_speed.py [--steps 10] [--repeats 3]   (about a minute)
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import median_ms, print_table, set_threads
from torch import Tensor, nn

from genloom.models.dit import DiT, preset
from genloom.models.gpt import GPT, GPTConfig


def dit_case() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    torch.manual_seed(0)
    model = DiT(preset("dit-small", text_vocab_size=300, pad_id=0))
    latents, t = torch.randn(64, 4, 8, 8), torch.rand(64) * 1000
    text = torch.randint(1, 300, (64, 24))
    text[:, 12:] = 0  # padding
    return model, lambda m: (m(latents, t, text).float() - latents).pow(2).mean()


def gpt_case() -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, context_length=256, n_layers=4, d_model=128, n_heads=4, bias=False,
                          activation="gelu"))
    idx = torch.randint(0, 100, (16, 256))
    documents = (torch.arange(256) // 50).expand(16, 256)
    positions = (torch.arange(256) % 50).expand(16, 256)

    def loss(m: nn.Module) -> Tensor:
        logits = m(idx, positions=positions, document_ids=documents)  # (16, 256, vocab)
        return nn.functional.cross_entropy(logits.float().flatten(0, 1), idx.flatten())

    return model, loss


def median_step_ms(model: nn.Module, loss_of: Callable[[nn.Module], Tensor], bf16: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return median_ms(step, steps, warmup=5)  # warm-up: oneDNN builds its bf16 kernels on first use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    set_threads()
    rows = []
    for name, case in (("dit-small, batch 64 (shapes)", dit_case), ("tiny GPT, 16 x 256 packed (chat SFT)", gpt_case)):
        fp32, bf16 = [], []
        for _ in range(args.repeats):
            fp32.append(median_step_ms(*case(), bf16=False, steps=args.steps))
            bf16.append(median_step_ms(*case(), bf16=True, steps=args.steps))
        rows.append([name, " / ".join(f"{x:.0f}" for x in fp32), " / ".join(f"{x:.0f}" for x in bf16),
                     f"{statistics.mean(fp32) / statistics.mean(bf16):.2f}x"])
    print(f"\ntraining step, median ms ({args.repeats} repeats, {torch.get_num_threads()} threads)")
    print_table(["model", "fp32", "bf16 autocast", "bf16 speed-up"], rows)


if __name__ == "__main__":
    main()
