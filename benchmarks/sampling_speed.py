"""Drawing the next token: genloom's inverse-CDF sampler against torch.multinomial, on the CPU.

torch.multinomial is what Hugging Face transformers' `generate(do_sample=True)` calls (one call for the batch),
and what genloom called before (one call per row when each row has its own seeded generator, so that a row's
tokens do not depend on its batch). On a CPU it draws an exponential variate for every vocabulary entry;
genloom's `sample` draws one uniform number per row and searches the cumulative sum.

1. The sampling call alone: rows x vocabulary (a character vocabulary, 1,024 image codes, GPT-2's 50,257),
   torch's global RNG and a generator per row; median microseconds over `--calls` calls.
2. A decoding step of the server's engine (`DecodeBatch`, 16 rows at temperature 1) on a GPT with GPT-2's
   vocabulary and the `tiny` preset's body (4 layers, d_model 128): the same engine with torch.multinomial put
   back in place of `sample`, the two interleaved `--repeats` times; median step ms.
3. The top-p filter (`filter_logits`, top_p 0.95) at GPT-2's vocabulary, 16 rows, against sorting the whole
   vocabulary (Hugging Face's TopPLogitsWarper; genloom before): genloom seeks the set among the 256 most likely
   tokens, then 2,048, then sorts. Rows of random logits of scale 8 and 5 (sets of tens and about a hundred
   tokens), 3 (thousands: the 2,048 fail, then the sort) and 0.3 (most of the vocabulary).
4. `imagine` (the token method, each image with its own generator): 16 images of one caption from a random
   `dalle-compact` over a random `vq-colour` (64 tokens of 512 per image), guidance 1.5; images/s, interleaved
   the same way.

Usage: python benchmarks/sampling_speed.py [--threads 1] [--calls 200] [--repeats 3]   (about a minute)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import print_table, replaced
from torch import Tensor

from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.generate import sampling
from genloom.generate.batch import DecodeBatch
from genloom.generate.imagine import imagine
from genloom.generate.sampling import SamplingConfig
from genloom.models import dalle, vqvae
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import Tokenizer

GPT2_VOCAB = 50257
Sampler = Callable[[Tensor, list[torch.Generator] | None], Tensor]


def multinomial(probs: Tensor, generators: list[torch.Generator] | None) -> Tensor:
    """The peer: one torch.multinomial call for the batch, or one per row with its own generator."""
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])


def median_us(sampler: Sampler, probs: Tensor, generators: list[torch.Generator] | None, n: int) -> float:
    for _ in range(5):
        sampler(probs, generators)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sampler(probs, generators)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def sampling_rows(calls: int) -> list[list[str]]:
    rows = []
    for vocab in (80, 1024, GPT2_VOCAB):
        for batch in (1, 16):
            probs = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0)).softmax(-1)
            for seeded in (False, True):
                generators = [torch.Generator().manual_seed(i) for i in range(batch)] if seeded else None
                peer = median_us(multinomial, probs, generators, calls)
                ours = median_us(sampling.sample, probs, generators, calls)
                rows.append([f"{vocab:,}", str(batch), "a generator per row" if seeded else "global",
                             f"{peer:,.0f}", f"{ours:,.0f}", f"{peer / ours:.1f}x"])
    return rows


def top_p_by_sorting(logits: Tensor, top_p: float) -> Tensor:
    """The peer: the top-p filter as a sort of the whole vocabulary finds the set."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, (probs.cumsum(dim=-1) - probs) >= top_p)
    return logits.masked_fill(drop, float("-inf"))


def genloom_top_p(logits: Tensor, top_p: float) -> Tensor:
    return sampling.filter_logits(logits, None, top_p)


def top_p_rows(calls: int) -> list[list[str]]:
    rows = []
    for name, scale in (("scale 8", 8.0), ("scale 5", 5.0), ("scale 3", 3.0), ("scale 0.3", 0.3)):
        logits = torch.randn(16, GPT2_VOCAB, generator=torch.Generator().manual_seed(0)) * scale
        kept = torch.isfinite(sampling.filter_logits(logits, None, 0.95)).sum(dim=-1).float().mean()
        times = {}
        for label, top_p_filter in (("peer", top_p_by_sorting), ("ours", genloom_top_p)):
            top_p_filter(logits, 0.95)
            samples = []
            for _ in range(calls):
                start = time.perf_counter()
                top_p_filter(logits, 0.95)
                samples.append(time.perf_counter() - start)
            times[label] = statistics.median(samples) * 1e3
        rows.append([name, f"{kept:,.0f}", f"{times['peer']:.1f}", f"{times['ours']:.1f}",
                     f"{times['peer'] / times['ours']:.1f}x"])
    return rows


def step_ms(model: GPT, sampler: Sampler, seeded: bool, steps: int = 30) -> float:
    """Median ms of a 16-row decoding step with `sampler` in place of genloom's."""
    batch = DecodeBatch(model, 16)
    prompts = [[(7 * i + j) % GPT2_VOCAB for j in range(8 + i)] for i in range(16)]
    configs = [SamplingConfig(max_new_tokens=steps + 10, temperature=1.0, seed=i if seeded else None,
                              stop_at_eos=False) for i in range(16)]
    batch.add(prompts, configs)
    times = []
    with replaced(sampling, "sample", sampler):  # choose_tokens looks `sample` up at each call
        for _ in range(3):
            batch.step()
        for _ in range(steps):
            start = time.perf_counter()
            batch.step()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def image_models() -> tuple[dalle.Dalle, Tokenizer, vqvae.VQVAE]:
    torch.manual_seed(0)
    captions = train_caption_tokenizer(["a red circle", "a blue square above a green triangle"], 300)
    vq = vqvae.VQVAE(vqvae.preset("vq-colour")).eval()
    config = dalle.preset("dalle-compact", text_vocab_size=captions.vocab_size, image_vocab_size=vq.config.vocab_size,
                          colour_codes=vq.config.colour_codes, grid_size=vq.config.grid_size,
                          pad_id=CaptionCodec(captions, 24).ids.pad)
    return dalle.Dalle(config).eval(), captions, vq


def images_per_s(models: tuple[dalle.Dalle, Tokenizer, vqvae.VQVAE], sampler: Sampler) -> float:
    with replaced(sampling, "sample", sampler):  # choose_tokens looks `sample` up at each call
        start = time.perf_counter()
        imagine(*models, ["a red circle"], n_images=16, guidance_scale=1.5, seed=0, progress=False)
        return 16 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (genloom serve uses cores - 1)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)\n")
    print_table(["vocabulary", "rows", "RNG", "torch.multinomial us", "genloom sample us", "speed-up"],
                sampling_rows(args.calls))

    top_p_calls = max(1, args.calls // 10)
    print(f"\ntop-p 0.95 filter, 16 rows of GPT-2's vocabulary ({GPT2_VOCAB:,}), median of {top_p_calls} calls:\n")
    print_table(["rows", "tokens kept (mean)", "full sort ms", "genloom ms", "speed-up"], top_p_rows(top_p_calls))

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=GPT2_VOCAB, context_length=256, n_layers=4, d_model=128, n_heads=4,
                          bias=False, activation="gelu")).eval()
    rows = []
    for seeded in (False, True):
        peer, ours = [], []
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            peer.append(step_ms(model, multinomial, seeded))
            ours.append(step_ms(model, sampling.sample, seeded))
        rows.append(["a generator per row" if seeded else "global", " / ".join(f"{t:.1f}" for t in peer),
                     " / ".join(f"{t:.1f}" for t in ours), f"{statistics.median(peer) / statistics.median(ours):.2f}x"])
    print(f"\nDecodeBatch step, 16 rows, GPT-2 vocabulary ({GPT2_VOCAB:,}), tiny body, temperature 1 "
          f"({args.repeats} interleaved repeats):\n")
    print_table(["RNG", "torch.multinomial ms", "genloom sample ms", "speed-up"], rows)

    models = image_models()
    images_per_s(models, sampling.sample)  # warm-up
    peer_rates, our_rates = [], []
    for _ in range(args.repeats):
        peer_rates.append(images_per_s(models, multinomial))
        our_rates.append(images_per_s(models, sampling.sample))
    print(f"\nimagine, 16 images of a random dalle-compact over vq-colour, guidance 1.5 ({args.repeats} interleaved "
          "repeats):\n")
    print_table(["torch.multinomial images/s", "genloom sample images/s", "speed-up"],
                [[" / ".join(f"{r:.1f}" for r in peer_rates), " / ".join(f"{r:.1f}" for r in our_rates),
                  f"{statistics.median(our_rates) / statistics.median(peer_rates):.2f}x"]])


if __name__ == "__main__":
    main()
