"""Attention on the CPU: SDPA's flash kernel against `genloom.nn.attention.attend`'s two matrix products, at the shapes
genloom's models attend, then whole training steps and denoiser passes with the rule on and off.

`attend` gives attention over at most `MATMUL_MAX_KEYS` (64) keys with several queries to matrix products when torch
runs more than one thread (`uses_matmul`). The reason: SDPA's CPU flash kernel pays a fixed cost per (batch, head)
slice, and on 2 threads it runs short sequences about twice as slow as on one, while matrix products use both.

Part 1, one attention call (q, k, v of (batch, heads, T, head size), fp32, the threads given): forward under no_grad,
and forward + backward, for each model's shapes, SDPA against the matrix products.
Part 2, the rule on (`attend` as shipped) against off (every call to SDPA, `MATMUL_MAX_KEYS = 0`), the same model
and inputs:
- dit-small's training step, batch 64, as the shapes benchmark trains it: 8x8x4 latents in 16 patches, captions of
  the shapes set's lengths (5, 9 or 10 of 10 positions: <s>, the caption's BPE tokens, </s>);
- a dit-small denoiser pass as sampling runs it: 16 images at guidance 3, 32 rows, no grad;
- the tiny GPT's training step as benchmarks/train_shakespeare.py trains it (nanoGPT's CPU configuration:
  batch 12, context 64, 4 layers, 4 heads of 32);
- transformer-small's training step on a Multi30k-sized batch (160 pairs of 24 tokens).
Each timing is the median of `--steps` after warm-up; the two settings alternate `--rounds` times, and the ratio
is taken within each round, as these shared machines drift between minutes.

Usage: python benchmarks/attention_speed.py [--threads 2] [--rounds 3] [--steps 10] [--parts calls,steps]
       (about 5 minutes)
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from common import median_ms, print_table, replaced
from torch import Tensor, nn

import genloom.nn.attention as attention
from genloom.models.dit import DiT, preset
from genloom.models.gpt import GPT
from genloom.models.gpt import preset as gpt_preset
from genloom.models.seq2seq import Seq2SeqTransformer
from genloom.models.seq2seq import preset as seq2seq_preset

SHAPES_TEXT_LEN = 10  # the shapes set's longest caption: 8 BPE tokens, <s> and </s>
# (what attends like this, batch, heads, queries, keys, head size, causal, padded keys)
SHAPES = [
    ("dit-small self-attention, batch 64 (shapes: 16 patches)", 64, 6, 16, 16, 32, False, False),
    ("dit-small cross-attention to the caption (10 positions)", 64, 6, 16, 10, 32, False, True),
    ("dit-small caption encoder", 64, 6, 10, 10, 32, False, True),
    ("dit-small self-attention over 64 patches (8x8 latents, patch 1)", 64, 6, 64, 64, 32, False, False),
    ("dit-small sampling, 32 rows (16 images, guidance 3)", 32, 6, 16, 16, 32, False, False),
    ("tiny GPT, nanoGPT's batch 12 x context 64", 12, 4, 64, 64, 32, True, False),
    ("transformer-small decoder, 160 sentences of 24 tokens", 160, 4, 24, 24, 64, True, True),
    ("prefill of one 16-token prompt, 4 heads", 1, 4, 16, 16, 32, True, False),
    ("past the limit: 128 keys (attend leaves them to SDPA)", 64, 6, 128, 128, 32, False, False),
]


def attention_calls(rounds: int, steps: int) -> None:
    rows = []
    for name, batch, heads, t_q, t_k, head_dim, causal, padded in SHAPES:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, heads, t, head_dim, requires_grad=True) for t in (t_q, t_k, t_k))
        mask = None
        if padded:  # the last fifth of the keys are padding
            valid = torch.arange(t_k) < t_k - t_k // 5
            mask = valid.expand(batch, t_k)[:, None, None, :]
            if causal:
                mask = mask & torch.ones(t_q, t_k, dtype=torch.bool).tril()
                causal = False
        grad = torch.randn(batch, heads, t_q, head_dim)

        def sdpa(q: Tensor = q, k: Tensor = k, v: Tensor = v, mask: Tensor | None = mask,
                 causal: bool = causal) -> Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

        def matmul(q: Tensor = q, k: Tensor = k, v: Tensor = v, mask: Tensor | None = mask,
                   causal: bool = causal) -> Tensor:
            return attention.attend_by_matmul(q, k, v, mask, 0.0, causal)

        cells = []
        for backward in (False, True):
            ratios, times = [], {"sdpa": [], "matmul": []}
            for _ in range(rounds):
                for label, function in (("sdpa", sdpa), ("matmul", matmul)):
                    if backward:
                        times[label].append(median_ms(lambda f=function, g=grad: f().backward(g), steps))
                    else:
                        with torch.no_grad():
                            times[label].append(median_ms(function, steps))
                ratios.append(times["sdpa"][-1] / times["matmul"][-1])
            cells += [f"{statistics.mean(times['sdpa']):.3f} / {statistics.mean(times['matmul']):.3f}",
                      spread(ratios)]
        rows.append([f"{name}: ({batch}, {heads}, {t_q}->{t_k}, {head_dim})", *cells])
    print(f"\none attention call, mean of {rounds} rounds' medians (ms), {torch.get_num_threads()} threads")
    print_table(["shape", "forward: SDPA / matmul", "speed-up", "forward + backward: SDPA / matmul", "speed-up"],
                rows)


def training_step(model: nn.Module, loss_of: Callable[[nn.Module], Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as the trainer's

    def step() -> None:
        loss = loss_of(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def dit_shapes(batch: int, train: bool) -> tuple[DiT, Tensor, Tensor, Tensor]:
    """dit-small as the shapes benchmark builds it, and a batch of (latents, timesteps, captions)."""
    torch.manual_seed(0)
    model = DiT(preset("dit-small", text_vocab_size=512, text_len=SHAPES_TEXT_LEN, pad_id=0)).train(train)
    latents, t = torch.randn(batch, 4, 8, 8), torch.rand(batch) * 1000
    text = torch.randint(1, 512, (batch, SHAPES_TEXT_LEN))
    lengths = torch.tensor([5, 9, 10])[torch.randint(0, 3, (batch,))]
    text[torch.arange(SHAPES_TEXT_LEN)[None, :] >= lengths[:, None]] = 0  # padding
    return model, latents, t, text


def dit_training_step() -> Callable[[], None]:
    model, latents, t, text = dit_shapes(64, train=True)
    return training_step(model, lambda m: (m(latents, t, text) - latents).pow(2).mean())


def dit_sampling_pass() -> Callable[[], None]:
    model, latents, t, text = dit_shapes(32, train=False)
    caption = model.encode_caption(text)  # once per sampling call, as the sampler does

    def run() -> None:
        with torch.no_grad():
            model(latents, t, caption=caption)

    return run


def shakespeare_step() -> Callable[[], None]:
    torch.manual_seed(0)
    model = GPT(gpt_preset("tiny", vocab_size=65))
    x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))
    return training_step(model, lambda m: F.cross_entropy(m(x).flatten(0, 1), y.flatten()))


def translation_step() -> Callable[[], None]:
    """transformer-small on a Multi30k-sized batch: 160 pairs of 24 BPE tokens a side (about the 4,096 padded tokens
    of benchmarks/translate_multi30k.py's batches), the last 4 of each source padding."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(seq2seq_preset("transformer-small"))
    pad = model.config.pad_id
    src, tgt = torch.randint(4, 8000, (160, 24)), torch.randint(4, 8000, (160, 25))
    src[:, -4:] = pad
    return training_step(model, lambda m: m.loss(src, tgt[:, :-1], tgt[:, 1:]))


def whole_steps(rounds: int, steps: int) -> None:
    cases = [("dit-small training step, batch 64 (shapes)", dit_training_step()),
             ("dit-small denoiser pass, 32 rows (sampling)", dit_sampling_pass()),
             ("tiny GPT training step, 12 x 64 (Tiny Shakespeare)", shakespeare_step()),
             ("transformer-small training step, 160 x 24 (Multi30k)", translation_step())]
    rows = []
    for name, run in cases:
        ratios, off, on = [], [], []
        for _ in range(rounds):
            with replaced(attention, "MATMUL_MAX_KEYS", 0):  # every call to SDPA
                off.append(median_ms(run, steps))
            on.append(median_ms(run, steps))
            ratios.append(off[-1] / on[-1])
        rows.append([name, " / ".join(f"{x:.1f}" for x in off), " / ".join(f"{x:.1f}" for x in on), spread(ratios)])
    print(f"\nwhole steps, median ms per round, {torch.get_num_threads()} threads")
    print_table(["step", "every attention by SDPA", f"attend (matmul up to {attention.MATMUL_MAX_KEYS} keys)",
                 "speed-up: mean (rounds)"], rows)


def spread(ratios: list[float]) -> str:
    return f"{statistics.mean(ratios):.2f}x ({', '.join(f'{r:.2f}' for r in ratios)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parts", default="calls,steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if "calls" in args.parts:
        attention_calls(args.rounds, args.steps)
    if "steps" in args.parts:
        whole_steps(args.rounds, args.steps)


if __name__ == "__main__":
    main()
