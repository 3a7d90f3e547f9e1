"""Why 16 streaming clients get about twice one client's time between tokens (issue 14): where it goes, measured.

Three parts:

- **load**: `genloom serve` under serve_load.py's load (its model, its streaming requests; 1 and 16 clients in
  interleaved slices), read from the server's own histograms after each slice: the engine's decoding steps (count,
  mean, median) and prefills (how many steps had one before them, and what they add to a step on average),
  the gap between a request's tokens at the clients, and the CPU each process used (server, engine, clients).
- **attention**: one layer's attention for a decoding step of 1 and 16 rows (4 heads of 32, keys up to 94
  columns: serve_load's prompts and 64 tokens), SDPA's CPU kernel against the alternatives that read fewer
  columns or call no per-(row, head) kernel: two calls over rows sorted by length, and products and sums.
- **gpt2**: a `DecodeBatch` step of 1 and of 16 rows with GPT-2 small's size (124M, random weights): a model whose
  16-row step is 16 rows of matrix products rather than fixed per-op overhead.
- **instep**: the attention part's call where it runs, inside the decoding steps of serve_load's model (1 and 16
  rows, a finished row replaced at once by a new one of serve_load's 64 tokens): each layer's attention call timed
  in the step, then the same call repeated on its own tensors (keys and values then in the cache); and the step
  itself with its attention as it is, computed by two matrix products instead (`attend_by_matmul`), and skipped
  (the query passed on as the attention's output: a timing, not a model). Each (rows, mode) runs 10 steps at a
  time, 60 times over, in turns, so the machine's drift lands on all of them alike.

Usage: python benchmarks/serve_engine_profile.py [--parts load,attention,gpt2,instep] [--seconds 60] [--slices 6]
       (about 3 minutes)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from common import median_ms, print_table
from serve_load import (
    MAX_TOKENS,
    PROMPTS,
    Histogram,
    Server,
    gpt_config,
    histogram_median,
    load,
    make_models,
    pct,
    stream_completion,
)

import genloom.nn.attention as attention_module
from genloom.cli.serve import default_threads
from genloom.generate.batch import DecodeBatch
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT, preset

LEVELS = (1, 16)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


STEP, PREFILL = "genloom_decode_step_seconds", "genloom_prefill_seconds"


@dataclass
class LevelProfile:
    """One client count, pooled over its slices."""

    gaps: list[float] = field(default_factory=list)  # between a request's tokens, at the clients
    tokens: int = 0
    wall: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # seconds: server, engine, clients
    histograms: dict[str, Histogram] = field(default_factory=lambda: {STEP: Histogram(), PREFILL: Histogram()})

    def row(self, clients: int) -> list[str]:
        steps, prefills = self.histograms[STEP], self.histograms[PREFILL]
        return [str(clients), f"{self.tokens / self.wall:.0f}", f"{pct(self.gaps, 0.5) * 1e3:.2f}",
                f"{steps.count:.0f}",
                f"{1e3 * steps.sum / steps.count:.2f} / {1e3 * histogram_median(steps.buckets):.2f}",
                f"{1e3 * self.wall / steps.count:.2f}", f"{100 * prefills.count / steps.count:.1f} %",
                f"{1e3 * prefills.sum / steps.count:.3f}", " / ".join(f"{c / self.wall:.2f}" for c in self.cpu)]


def profile_load(seconds: float, slices: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="genloom-serve-profile-"))
    gpt_path, _ = make_models(root)
    server = Server([f"--name=gpt={gpt_path}"], 16, None, "process")
    pid = server.process.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        # The engine is the spawned child (multiprocessing's resource tracker is another).
        engine = next(int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())
        levels = {clients: LevelProfile() for clients in LEVELS}
        for _ in range(slices):
            for clients, level in levels.items():
                before = {name: Histogram.read(server.metrics_text(), name) for name in (STEP, PREFILL)}
                cpu = [cpu_seconds(pid), cpu_seconds(engine), time.process_time()]
                start = time.perf_counter()
                tally, _, _, _ = load(server, clients, seconds / slices, stream_completion, PROMPTS)
                level.wall += time.perf_counter() - start
                now = [cpu_seconds(pid), cpu_seconds(engine), time.process_time()]
                level.cpu = [total + b - a for total, a, b in zip(level.cpu, cpu, now, strict=True)]
                text = server.metrics_text()
                for name, old in before.items():
                    level.histograms[name] = level.histograms[name].combined(
                        Histogram.read(text, name).combined(old, -1), 1)
                level.gaps += tally.inter_token
                level.tokens += tally.tokens
    finally:
        server.close()
    print(f"\nload: serve_load's requests, {seconds:.0f} s per level in {slices} interleaved slices")
    print_table(["clients", "tokens/s", "inter-token p50 at the clients (ms)", "engine steps",
                 "step mean / median (ms)", "wall time per step (ms)", "steps with a prefill",
                 "prefill time per step (ms)", "CPU: server / engine / clients (cores)"],
                [level.row(clients) for clients, level in levels.items()])


def attention_timings(rows: int, fill: list[int]) -> list[str]:
    """One layer's decoding-step attention for `rows` rows with fill[:rows] columns written: us for SDPA in one call,
    in two calls over the rows sorted by length (each half reading its own longest row's columns), and as products
    and sums (no kernel per (row, head) pair)."""
    torch.manual_seed(0)
    cache_k, cache_v = torch.randn(16, 4, 256, 32), torch.randn(16, 4, 256, 32)  # a slot cache's layer
    q = torch.randn(rows, 4, 1, 32)
    fills = sorted(fill[:rows], reverse=True)  # the rows sorted longest first, which the halves need
    width = fills[0] + 1
    k, v = cache_k[:rows, :, :width], cache_v[:rows, :, :width]
    valid = (torch.arange(width)[None] <= torch.tensor(fills)[:, None])[:, None, None]  # (rows, 1, 1, width)
    half = max(rows // 2, 1)
    short = fills[half] + 1 if rows > 1 else width  # the shorter half's columns

    def one_call() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=valid)

    def sorted_halves() -> torch.Tensor:
        if rows == 1:  # nothing to split: the same call
            return one_call()
        return torch.cat([
            F.scaled_dot_product_attention(q[:half], k[:half], v[:half], attn_mask=valid[:half]),
            F.scaled_dot_product_attention(q[half:], k[half:, :, :short], v[half:, :, :short],
                                           attn_mask=valid[half:, ..., :short])])

    def products_and_sums() -> torch.Tensor:
        scores = (q * k).sum(-1) * q.shape[-1] ** -0.5  # (rows, H, width)
        weights = torch.softmax(scores.masked_fill(~valid[:, :, 0], float("-inf")), dim=-1)
        return (weights.unsqueeze(-1) * v).sum(-2, keepdim=True)

    reference = one_call()
    timings = [str(width)]
    for run in (one_call, sorted_halves, products_and_sums):
        assert torch.allclose(run(), reference, atol=1e-5)
        timings.append(f"{1e3 * median_ms(run, 300, warmup=30):.0f}")
    return timings


def profile_attention() -> None:
    rng = random.Random(0)
    fill = [93] + [rng.randrange(15, 93) for _ in range(15)]  # one row near its end, the others anywhere
    print("\nattention: one layer of a decoding step, 4 heads of 32, us (median of 300)")
    print_table(["rows", "key columns", "SDPA, one call", "SDPA, two calls over rows sorted by length",
                 "products and sums"], [[str(rows), *attention_timings(rows, fill)] for rows in LEVELS])


def profile_gpt2() -> None:
    torch.manual_seed(0)
    model = GPT(preset("gpt2", vocab_size=50257)).eval()
    rng = random.Random(0)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=64, stop_at_eos=False)
    times = {}
    for rows in LEVELS:
        batch = DecodeBatch(model, 16)
        batch.add([[rng.randrange(50257) for _ in range(rng.randrange(5, 30))] for _ in range(rows)],
                  [sampling] * rows)
        step: Callable[[], object] = batch.step
        times[rows] = median_ms(step, 15)
    print("\ngpt2: a DecodeBatch step of GPT-2 small (124M, random weights), ms (median of 15)")
    print_table(["1 row", "16 rows", "16 / 1"], [[f"{times[1]:.1f}", f"{times[16]:.1f}",
                                                  f"{times[16] / times[1]:.2f}x"]])


Attend = Callable[..., torch.Tensor]


@contextlib.contextmanager
def attention_as(replacement: Attend) -> Iterator[None]:
    """Every MultiHeadAttention computes its attention with `replacement` (it looks `attend` up at each call)."""
    original = attention_module.attend
    attention_module.attend = replacement
    try:
        yield
    finally:
        attention_module.attend = original


def skipped_attention(q: torch.Tensor, *_: object, **__: object) -> torch.Tensor:
    """No attention: the query goes on as its output (same shape), to time a step without it."""
    return q


class SteadyBatch:
    """A DecodeBatch of `rows` rows over `model` that stays full: a finished row is replaced at once, outside the
    timed steps. The first rows end after 1 to 64 tokens, so the batch holds answers at every length, as under
    serve_load's clients."""

    def __init__(self, model: GPT, rows: int) -> None:
        self.batch, self.rows, self.rng = DecodeBatch(model, 16), rows, random.Random(0)
        self.vocab = model.config.vocab_size
        for _ in range(rows):
            self.add(self.rng.randint(1, MAX_TOKENS))

    def add(self, tokens: int) -> None:
        prompt = [self.rng.randrange(self.vocab) for _ in range(len(self.rng.choice(PROMPTS)))]  # one per character
        self.batch.add([prompt], [SamplingConfig(temperature=1.0, max_new_tokens=tokens, stop_at_eos=False)])

    def step_times(self, steps: int) -> list[float]:
        """Seconds of each of `steps` decoding steps."""
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            self.batch.step()
            times.append(time.perf_counter() - start)
            while len(self.batch.rows) < self.rows:
                self.add(MAX_TOKENS)
        return times


def profile_in_step(blocks: int = 60, steps: int = 10) -> None:
    """The attention part's calls timed inside decoding steps of serve_load's model, and steps with the attention
    computed otherwise or skipped: a batch of 1 row and one of 16, and each (row count, mode) takes its turn for
    `steps` steps, `blocks` times over (drift between minutes then lands on all of them alike)."""
    torch.manual_seed(0)
    model = GPT(gpt_config(80)).eval()  # serve_load's model (its character vocabulary: 60 to 80)
    sdpa = attention_module.attend
    calls: list[float] = []
    last: list[tuple[object, ...]] = []

    def timed_sdpa(*args: object, **kwargs: object) -> torch.Tensor:
        start = time.perf_counter()
        out = sdpa(*args, **kwargs)
        calls.append(time.perf_counter() - start)
        last[:] = [args]
        return out

    modes: dict[str, Attend] = {"SDPA": timed_sdpa, "two matrix products": attention_module.attend_by_matmul,
                                "skipped": skipped_attention}
    batches = {rows: SteadyBatch(model, rows) for rows in LEVELS}
    times: dict[tuple[int, str], list[float]] = {(rows, mode): [] for rows in LEVELS for mode in modes}
    in_step: dict[int, list[float]] = {rows: [] for rows in LEVELS}
    hot: dict[int, float] = {}
    for steady in batches.values():
        steady.step_times(50)
    turns = list(times)
    for block in range(blocks):
        for rows, mode in (turns if block % 2 else turns[::-1]):
            with attention_as(modes[mode]):
                times[(rows, mode)] += batches[rows].step_times(steps)
            if mode == "SDPA":
                in_step[rows] += calls
                calls.clear()
                if block == blocks - 1:  # the same call again and again: its keys and values stay in the cache
                    q, k, v, mask = last[0][:4]
                    hot[rows] = median_ms(lambda: sdpa(q, k, v, mask), 300, warmup=30)  # noqa: B023
    step_ms = {turn: 1e3 * statistics.median(t) for turn, t in times.items()}
    table = [[str(rows), f"{1e6 * statistics.median(in_step[rows]):.0f}", f"{1e3 * hot[rows]:.0f}",
              *(f"{step_ms[(rows, mode)]:.2f}" for mode in modes)] for rows in LEVELS]
    print(f"\ninstep: serve_load's model, {blocks * steps} steps per mode and row count, in turns of {steps}; "
          "us per attention call, ms per step (medians)")
    print_table(["rows", "one layer's SDPA call, in the steps (us)", "the same call repeated (us)",
                 *(f"step, attention {mode} (ms)" for mode in modes)], table)
    print("step, 16 rows / 1 row: " + ", ".join(f"attention {mode} {step_ms[(16, mode)] / step_ms[(1, mode)]:.2f}x"
                                               for mode in modes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="load,attention,gpt2,instep")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per client level in the load part")
    parser.add_argument("--slices", type=int, default=6)
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = set(parts) - {"load", "attention", "gpt2", "instep"}
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: load, attention, gpt2, instep")
    torch.set_num_threads(default_threads())  # as `genloom serve` sets them: every core but one
    if "load" in parts:
        profile_load(args.seconds, args.slices)
    if "attention" in parts:
        profile_attention()
    if "gpt2" in parts:
        profile_gpt2()
    if "instep" in parts:
        profile_in_step()


if __name__ == "__main__":
    main()
