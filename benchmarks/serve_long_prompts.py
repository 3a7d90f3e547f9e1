"""Long prompts under load: how long a 1,000-token prompt stalls the streams already running, with chunked prefill
(`genloom serve --prefill-chunk`) at several sizes and with every prompt read whole.

A random-weight GPT of 10.7M parameters (6 layers, d_model 384, context 1024, character vocabulary) is served by
one `genloom serve` process per setting, all started at once. In each slice of the load, 8 clients stream 64-token
completions of short prompts back to back (serve_load.py's requests), and one more client sends a 1,000-character
prompt for one token every `--long-every` seconds. The settings take turns in slices (`--slices` per round, of
`--seconds / --slices` each), so this machine's drift between minutes lands on all of them alike. Reported per
setting and round: the streams' tokens/s and the gaps between their tokens (p50, p99, max), and the long
requests' latency (their prompt's wait and read, and one token). A last row per round streams with no long prompt,
on the default server, for the gaps without them.

Usage: python benchmarks/serve_long_prompts.py [--chunks 64,128,256] [--seconds 30] [--rounds 2] [--slices 3]
       [--long-every 2]   (about 7 minutes)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import print_table, run_clients
from serve_load import PROMPTS, Server, Tally, pct, post_json, stream_completion

from genloom.checkpoint import save_checkpoint
from genloom.models.gpt import GPT, GPTConfig
from genloom.serve import PREFILL_CHUNK
from genloom.tokenizers import CharTokenizer

STREAMS = 8
CONTEXT = 1024
LONG_PROMPT = 1000  # characters, one token each
ALPHABET = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?()'\n"


def make_model(root: Path) -> Path:
    torch.manual_seed(0)
    chars = CharTokenizer.train("".join(PROMPTS) + ALPHABET)
    config = GPTConfig(vocab_size=chars.vocab_size, context_length=CONTEXT, n_layers=6, d_model=384, n_heads=6,
                       bias=False)
    save_checkpoint(root / "gpt", GPT(config), "gpt", config, chars)
    return root / "gpt"


@dataclass
class Measured:
    """One setting's load, pooled over a round's slices."""

    streams: Tally = field(default_factory=Tally)
    seconds: float = 0.0
    long_latency: list[float] = field(default_factory=list)
    long_errors: int = 0

    def row(self, setting: str, round_: int) -> list[str]:
        gaps = self.streams.inter_token
        longs = (f"{len(self.long_latency)}: {1e3 * pct(self.long_latency, 0.5):.0f} / "
                 f"{1e3 * max(self.long_latency):.0f}" if self.long_latency else "none")
        return [setting, str(round_), f"{self.streams.tokens / self.seconds:.0f}",
                f"{1e3 * pct(gaps, 0.5):.1f} / {1e3 * pct(gaps, 0.99):.1f} / {1e3 * max(gaps):.1f}", longs,
                str(self.streams.errors + self.long_errors)]


def long_completion(port: int, prompt: str) -> float:
    """Send one long prompt for one token; its latency in seconds."""
    status, reply, seconds = post_json(port, "/v1/completions",
                                       {"model": "gpt", "prompt": prompt, "max_tokens": 1, "temperature": 1.0})
    if status != 200 or reply["usage"]["prompt_tokens"] != LONG_PROMPT:
        raise RuntimeError(f"HTTP {status}: {reply}")
    return seconds


def slice_of_load(server: Server, seconds: float, long_every: float | None, measured: Measured,
                  rng: random.Random) -> None:
    """STREAMS streaming clients for `seconds`, and a long prompt every `long_every` seconds (None: none)."""
    stop_at = time.perf_counter() + seconds
    tally = Tally()
    prompts = ["".join(rng.choice(ALPHABET) for _ in range(LONG_PROMPT)) for _ in range(int(seconds) + 1)]

    def client(i: int) -> None:
        if i == STREAMS:  # the long prompts' client
            if long_every is None:
                return
            for prompt in prompts:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                try:
                    measured.long_latency.append(long_completion(server.port, prompt))
                except Exception:
                    measured.long_errors += 1
                time.sleep(max(0.0, sent + long_every - time.perf_counter()))
            return
        k = i
        while time.perf_counter() < stop_at:
            stream_completion(server.port, PROMPTS[k % len(PROMPTS)], tally)
            k += STREAMS

    measured.seconds += run_clients(client, STREAMS + 1)
    measured.streams.add(tally)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="64,128,256", help="--prefill-chunk values to serve beside 'whole'")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of load per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--long-every", type=float, default=2.0, help="seconds between long prompts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = make_model(Path(tempfile.mkdtemp(prefix="genloom-long-prompts-")))
    # "whole": a chunk of the whole context reads every prompt in one forward, as the server did before chunking.
    settings = {"whole": CONTEXT} | {str(int(c)): int(c) for c in args.chunks.split(",")}
    servers = {name: Server([f"--name=gpt={path}"], 16, None, "process", ("--prefill-chunk", str(chunk)))
               for name, chunk in settings.items()}
    default = str(PREFILL_CHUNK)
    rng = random.Random(0)
    rows = []
    try:
        for server in servers.values():  # warm up: first requests pay one-off costs
            slice_of_load(server, 2.0, args.long_every, Measured(), rng)
        for round_ in range(1, args.rounds + 1):
            measured = {name: Measured() for name in [*settings, "none"]}
            for _ in range(args.slices):
                for name, server in servers.items():
                    slice_of_load(server, args.seconds / args.slices, args.long_every, measured[name], rng)
                if default in servers:
                    slice_of_load(servers[default], args.seconds / args.slices, None, measured["none"], rng)
            for name, result in measured.items():
                if name == "none" and default not in servers:
                    continue
                label = f"{default}, no long prompts" if name == "none" else name
                rows.append(result.row(label, round_))
                print(" | ".join(rows[-1]), flush=True)
    finally:
        for server in servers.values():
            server.close()
    print(f"\n{STREAMS} streams of 64 tokens, one {LONG_PROMPT}-token prompt every {args.long_every:g} s; "
          f"{args.seconds:g} s per setting and round")
    print_table(["--prefill-chunk", "round", "streams' tokens/s", "streams' inter-token p50 / p99 / max (ms)",
                 "long prompts: count: latency p50 / max (ms)", "errors"], rows)


if __name__ == "__main__":
    main()
