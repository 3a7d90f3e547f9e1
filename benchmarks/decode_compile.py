"""The compiled decoding step (`--compile`, genloom.generate.compiled) against the eager one, on a CPU.

A GPT the size of the `tiny` preset (4 layers, d_model 128, context 256, a character vocabulary; random weights:
speed does not depend on them), decoding greedily in a `DecodeBatch` of capacity 16: the median time of a step
with 1 row and with 16 rows, each row's prompt 20 tokens, restarted when the cache passes 84 columns. Eager and
compiled take turns within each round, so the machine's drift between minutes lands on both alike; the table
gives the median over rounds and its range. Run with 1 torch thread (what `genloom serve` gives its engine on 2
cores) and with 2 (what `generate` and `chat` use). The compile (the warm-up of `compile_decoding`) is timed
once per thread count; inductor's cache on disk makes a second process compile faster.

Usage: python benchmarks/decode_compile.py [--rounds 5] [--steps 60]   (about 5 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from common import print_table

from genloom.generate.batch import DecodeBatch
from genloom.generate.compiled import compile_decoding
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT, GPTConfig

PROMPT = [1] * 20
RESTART_AT = 84  # cache columns: a prompt of 20 and 64 new tokens, as serve_load's requests


def median_step_ms(model: GPT, rows: int, steps: int) -> float:
    batch = DecodeBatch(model, capacity=16)
    greedy = SamplingConfig(max_new_tokens=10_000, temperature=0, stop_at_eos=False)
    batch.add([PROMPT] * rows, [greedy] * rows)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch.step()
        times.append(time.perf_counter() - start)
        if batch.caches[0].width > RESTART_AT:
            for row in list(batch.rows):
                batch.remove(row)
            batch.add([PROMPT] * rows, [greedy] * rows)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="steps timed per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=70, context_length=256, n_layers=4, d_model=128, n_heads=4, bias=False,
                       activation="gelu")
    rows_out = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        eager = GPT(config).eval()
        compiled = copy.deepcopy(eager)
        start = time.perf_counter()
        compile_decoding(compiled)
        compile_s = time.perf_counter() - start
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.rounds):
            for name, model in (("eager", eager), ("compiled", compiled)):
                for rows in (1, 16):
                    times.setdefault((name, rows), []).append(median_step_ms(model, rows, args.steps))
        for rows in (1, 16):
            e, c = times[("eager", rows)], times[("compiled", rows)]
            speedups = [a / b for a, b in zip(e, c, strict=True)]
            rows_out.append([str(threads), str(rows), f"{statistics.median(e):.2f} ({min(e):.2f}-{max(e):.2f})",
                             f"{statistics.median(c):.2f} ({min(c):.2f}-{max(c):.2f})",
                             f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}-{max(speedups):.2f})",
                             f"{compile_s:.0f}" if rows == 1 else ""])
    print(f"tiny-sized GPT, median ms a decoding step over {args.rounds} rounds (range), greedy")
    print_table(["threads", "rows", "eager ms", "compiled ms", "speed-up (same round)", "compile s"], rows_out)


if __name__ == "__main__":
    main()
