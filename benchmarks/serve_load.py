"""Load on `genloom serve` over loopback: 1, 4 and 16 concurrent streaming clients, then 1 vs 8 image clients.

The server runs as its own process (`genloom serve`, as a user starts it) on a small random-weight GPT (4 layers,
d_model 128, context 256: the size of the `tiny` preset) and a small random-weight text-to-image model; clients
are threads in this process, each sending its next request as soon as the last one ends. Per level: requests/s,
output tokens/s, time to first token and inter-token latency (p50 / p99), errors, and the server's resident
memory at the start of the level's first slice and the end of its last (VmRSS from /proc, its engine process included).

The levels run in `--rounds` rounds, and the ratios are taken within each round; inside a round the levels take
turns in `--slices` slices (1, 4, 16 clients for 10 s each, six times over, by default): these shared machines drift
by up to 2x between minutes, which would otherwise land on whichever level ran in a slow one.

The server decodes in its own engine process (`--engine process`, the default). Reference rows: 1 and 16 clients
against a server with `--kv-cache-dtype bfloat16`, and against one with `--compile` (each in rounds as the main
levels; the compiled server's start-up compile is not timed); 1 and 16 clients against
`--engine thread` (the engine on a thread of the HTTP process, sharing its interpreter lock); 16 clients against a
server started with --max-batch 1, i.e. the same engine without batching, and with each of --capped-batches
(default 8): fewer rows per decoding step while the others wait in the queue (vLLM's max_num_seqs trade-off:
inter-token latency bought with time to first token). Last, after the server has stopped, "no HTTP": the server's
own scheduler (`TextScheduler`, loaded as `genloom serve` loads it, same torch threads) driven directly by 1 and 16
client threads, in rounds the same way: what the engine allows on this machine with no HTTP, event loop or client
parsing around it.

Targets (issue 14): tokens/s at 16 clients >= 4x one client's; inter-token p50 at 16 clients <= 2x one client's;
zero errors; memory flat.

`--device cuda` serves both models on a GPU (benchmarks/gpu_check.sh's serve part); `--references none` leaves out
every reference server and keeps the main rounds, the images and the no-HTTP rows (a short run).

Usage: python benchmarks/serve_load.py [--seconds 60] [--rounds 2] [--slices 6] [--image-seconds 60]
       [--engine-seconds 20] [--threads N] [--capped-batches 8] [--device cpu] [--references all|none]
       (about 23 minutes; with --references none, about 9)
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import print_table, run_clients

from genloom.checkpoint import save_checkpoint
from genloom.cli.serve import default_threads
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.generate.sampling import SamplingConfig
from genloom.models.dalle import Dalle, DalleConfig
from genloom.models.gpt import GPT, GPTConfig
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.serve.metrics import ServerMetrics
from genloom.serve.models import ServeSettings, load_served_models
from genloom.serve.scheduler import TextJob, TextScheduler, TokenEvent
from genloom.tokenizers import CharTokenizer

FULL_BATCH = 16  # the main server's --max-batch (the CLI's default): one row per client at 16 clients
PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "def main():", "Dear reader,",
           "It was a dark and stormy night", "import torch", "Q: what is"]
MAX_TOKENS = 64
# Reference servers run in rounds beside the defaults: a 16-bit KV cache, and the compiled decoding step.
VARIANTS: tuple[tuple[str, ...], ...] = (("--kv-cache-dtype", "bfloat16"), ("--compile",))
CAPTIONS = ["a red circle", "a blue square above a green triangle", "a cyan triangle", "a yellow square"]


def gpt_config(vocab_size: int) -> GPTConfig:
    """The served language model: the size of the `tiny` preset, with a context of 256."""
    return GPTConfig(vocab_size=vocab_size, context_length=256, n_layers=4, d_model=128, n_heads=4, bias=False,
                     activation="gelu")


def make_models(root: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    chars = CharTokenizer.train("".join(PROMPTS) + "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:?()'\n")
    config = gpt_config(chars.vocab_size)
    save_checkpoint(root / "gpt", GPT(config), "gpt", config, chars)
    captions = train_caption_tokenizer(CAPTIONS, 300)
    vq = VQVAE(VQConfig(resolution=16, widths=(16, 32), res_blocks=1, norm_groups=4, codebook_size=64))
    dalle_config = DalleConfig(text_vocab_size=captions.vocab_size, text_len=16, image_vocab_size=64,
                               grid_size=vq.config.grid_size, d_model=64, n_layers=2, n_heads=4, d_ff=128,
                               pad_id=CaptionCodec(captions, 16).ids.pad)
    save_checkpoint(root / "t2i" / "image_tokenizer", vq, "vqvae", vq.config, None)
    save_checkpoint(root / "t2i" / "final", Dalle(dalle_config), "dalle", dalle_config, captions,
                    metadata={"components": {"image_tokenizer": "vqvae"}})
    return root / "gpt", root / "t2i" / "final"


class Histogram:
    """One model's Prometheus histogram: cumulative (upper bound, count) pairs, its sum and its count."""

    def __init__(self, buckets: list[tuple[float, float]] | None = None, total: float = 0.0,
                 count: float = 0.0) -> None:
        self.buckets, self.sum, self.count = buckets or [], total, count

    @classmethod
    def read(cls, text: str, name: str, model: str = "gpt") -> Histogram:
        """Histogram `name` of `model` from /metrics text."""
        histogram = cls()
        for line in text.splitlines():
            if not line.startswith(name) or f'model="{model}"' not in line:
                continue
            value = float(line.split()[-1])
            if line.startswith(f"{name}_bucket"):
                bound = line.split('le="')[1].split('"')[0]
                histogram.buckets.append((float("inf") if bound == "+Inf" else float(bound), value))
            elif line.startswith(f"{name}_sum"):
                histogram.sum = value
            elif line.startswith(f"{name}_count"):
                histogram.count = value
        return histogram

    def combined(self, other: Histogram, sign: float) -> Histogram:
        """self + sign * other, bucket by bucket (an empty histogram counts as zeros)."""
        mine = self.buckets or [(bound, 0.0) for bound, _ in other.buckets]
        theirs = other.buckets or [(bound, 0.0) for bound, _ in mine]
        buckets = [(bound, a + sign * b) for (bound, a), (_, b) in zip(mine, theirs, strict=True)]
        return Histogram(buckets, self.sum + sign * other.sum, self.count + sign * other.count)


class Server:
    def __init__(self, models: list[str], max_batch: int, threads: int | None, engine: str = "thread",
                 flags: tuple[str, ...] = (), device: str = "cpu") -> None:
        command = [sys.executable, "-m", "genloom.cli", "serve", *models, "--port", "0", "--max-batch",
                   str(max_batch), "--max-queue", "256", "--device", device, "--engine", engine, *flags]
        if threads is not None:
            command += ["--threads", str(threads)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # "genloom: serving ... at http://127.0.0.1:PORT/ ..."
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def metrics_text(self) -> str:
        """The server's /metrics, Prometheus text."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/metrics")
        return connection.getresponse().read().decode()

    def inter_token_buckets(self) -> list[tuple[float, float]]:
        """The server's own inter-token histogram (cumulative (upper bound, count) pairs) from /metrics: the time
        between a request's tokens as the scheduler makes them, before any client reads them."""
        return Histogram.read(self.metrics_text(), "genloom_inter_token_latency_seconds").buckets

    def rss_mib(self) -> float:
        """The server's resident memory, its engine processes' included (VmRSS from /proc)."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0
        for process in (pid, *children):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    first_token: list[float] = field(default_factory=list)
    inter_token: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.tokens += other.tokens
        self.errors += other.errors
        self.first_token += other.first_token
        self.inter_token += other.inter_token


@dataclass
class Level:
    """One client count's measurements, pooled over its slices."""

    tally: Tally = field(default_factory=Tally)
    seconds: float = 0.0
    server_histogram: list[tuple[float, float]] = field(default_factory=list)  # cumulative, observed in the slices
    rss: list[float] = field(default_factory=list)  # at the start and end of each slice


def measure_levels(server: Server, levels: tuple[int, ...], seconds: float, slices: int) -> dict[int, Level]:
    """Each client count streams for `seconds` in all, as `slices` slices taken in turn (1, 4, 16, 1, 4, 16, ...):
    the machine's drift between minutes then lands on every level alike instead of on whichever ran in a slow one."""
    measured = {clients: Level() for clients in levels}
    for _, clients in itertools.product(range(slices), levels):
        level = measured[clients]
        before = server.inter_token_buckets()
        tally, elapsed, rss0, rss1 = load(server, clients, seconds / slices, stream_completion, PROMPTS)
        after = server.inter_token_buckets()
        observed = [(bound, b - a) for (bound, b), (_, a) in zip(after, before or [(x, 0.0) for x, _ in after],
                                                                 strict=True)]
        level.server_histogram = [(bound, n + (level.server_histogram[i][1] if level.server_histogram else 0.0))
                                  for i, (bound, n) in enumerate(observed)]
        level.tally.add(tally)
        level.seconds += elapsed
        level.rss += [rss0, rss1]
    return measured


def stream_completion(port: int, prompt: str, tally: Tally) -> None:
    body = json.dumps({"model": "gpt", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 1.0,
                       "stream": True, "stream_options": {"include_usage": True}})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    try:
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        arrivals, tokens = [], 0
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
        if not arrivals:
            raise RuntimeError("no tokens")
        with tally.lock:
            tally.requests += 1
            tally.tokens += tokens
            tally.first_token.append(arrivals[0] - start)
            tally.inter_token += [b - a for a, b in itertools.pairwise(arrivals)]
    except Exception:
        with tally.lock:
            tally.errors += 1
    finally:
        connection.close()


def post_json(port: int, path: str, body: dict) -> tuple[int, dict, float]:
    """POST `body` to the server on `port` and read the whole reply: (status, its JSON, seconds it took)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), time.perf_counter() - start
    finally:
        connection.close()


def draw_image(port: int, prompt: str, tally: Tally) -> None:
    try:
        status, payload, seconds = post_json(port, "/v1/images/generations",
                                             {"model": "t2i", "prompt": prompt, "n": 1, "seed": tally.requests})
        if status != 200 or len(payload["data"]) != 1:
            raise RuntimeError(f"HTTP {status}")
        with tally.lock:
            tally.requests += 1
            tally.first_token.append(seconds)  # the whole image: its latency
    except Exception:
        with tally.lock:
            tally.errors += 1


def load(server: Server, clients: int, seconds: float, send, prompts: list[str]) -> tuple[Tally, float, float, float]:
    """`clients` threads calling `send` back to back for `seconds`. (tally, elapsed, rss at start, rss at end)."""
    tally, stop_at = Tally(), time.perf_counter() + seconds
    rss_start = server.rss_mib()

    def client(i: int) -> None:
        k = i
        while time.perf_counter() < stop_at:
            send(server.port, prompts[k % len(prompts)], tally)
            k += clients

    elapsed = run_clients(client, clients)
    return tally, elapsed, rss_start, server.rss_mib()


def scheduler_alone(gpt_path: Path, clients: int, seconds: float, device: str = "cpu") -> tuple[float, float]:
    """(tokens/s, inter-token p50) of the server's own text scheduler driven by `clients` threads, with no HTTP:
    the gaps between a request's tokens as the scheduler hands them over, as the server's histogram times them."""
    torch.set_num_threads(default_threads())  # as `genloom serve` sets them
    served = load_served_models({"gpt": gpt_path}, ServeSettings(FULL_BATCH, 256, device), ServerMetrics())["gpt"]
    scheduler, tokenizer = served.worker, served.tokenizer
    assert isinstance(scheduler, TextScheduler) and tokenizer is not None
    gaps: list[float] = []
    tokens, lock, stop_at = [0], threading.Lock(), time.perf_counter() + seconds

    def one_request(prompt: str) -> list[float]:
        """Times at which the scheduler hands over each of the request's tokens."""
        done, arrivals = threading.Event(), []

        def deliver(event: TokenEvent) -> None:  # on the scheduler's thread
            arrivals.append(time.perf_counter())
            if event.finish_reason is not None:
                done.set()

        sampling = SamplingConfig(max_new_tokens=MAX_TOKENS, temperature=1.0)  # what the HTTP clients ask for
        scheduler.submit([TextJob(tokenizer.encode(prompt), sampling, tokenizer.eos_id, None, deliver)])
        done.wait()
        return arrivals

    def client(i: int) -> None:
        for k in itertools.count(i, clients):
            if time.perf_counter() >= stop_at:
                return
            arrivals = one_request(PROMPTS[k % len(PROMPTS)])
            with lock:
                tokens[0] += len(arrivals)
                gaps.extend(b - a for a, b in itertools.pairwise(arrivals))

    scheduler.start()
    try:
        elapsed = run_clients(client, clients)
    finally:
        scheduler.stop()
    return tokens[0] / elapsed, pct(gaps, 0.5)


def histogram_median(counts: list[tuple[float, float]]) -> float:
    """The median of a cumulative histogram's observations ((upper bound, count) pairs), interpolated linearly
    inside its bucket."""
    if not counts:
        return float("nan")
    total = counts[-1][1]
    if total == 0:
        return float("nan")
    lower, below = 0.0, 0.0
    for bound, cumulative in counts:
        if cumulative >= total / 2:
            inside = cumulative - below
            return lower + (bound - lower) * ((total / 2 - below) / inside if inside else 0.0)
        lower, below = bound, cumulative
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def capped_batches(text: str) -> list[int]:
    """"4,8" -> [4, 8]: --max-batch values strictly between 1 and FULL_BATCH, whose rows the benchmark has already."""
    try:
        batches = [int(b) for b in text.split(",") if b]
    except ValueError:
        batches = [0]
    if any(not 1 < b < FULL_BATCH for b in batches):
        raise argparse.ArgumentTypeError(f"whole numbers from 2 to {FULL_BATCH - 1}, got {text!r}")
    return batches


def spread(values: list[float]) -> str:
    """'2.31x (2.20-2.42)': the mean over rounds and their range."""
    return f"{statistics.mean(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per level and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the 1, 4 and 16 client levels")
    parser.add_argument("--slices", type=int, default=6,
                        help="each round runs its levels in this many interleaved slices of seconds / slices")
    parser.add_argument("--image-seconds", type=float, default=60.0)
    parser.add_argument("--engine-seconds", type=float, default=20.0,
                        help="seconds per level and round of the no-HTTP scheduler rows (0: leave them out)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: its own default)")
    parser.add_argument("--capped-batches", type=capped_batches, default="8",
                        help="comma-separated --max-batch values, each a reference row of 16 clients ('' for none)")
    parser.add_argument("--device", default="cpu", help="the server's --device (cuda: both models on the GPU)")
    parser.add_argument("--references", choices=("all", "none"), default="all",
                        help="none: no reference server (no 16-bit cache, --compile, capped or thread engine rows)")
    args = parser.parse_args()
    references = args.references == "all"
    capped = args.capped_batches if references else []
    variants = VARIANTS if references else ()
    root = Path(tempfile.mkdtemp(prefix="genloom-serve-bench-"))
    gpt_path, t2i_path = make_models(root)

    rows = []
    measured = {}  # [(max_batch, engine, flags, clients, round)] = (tokens/s, client p50, server p50)
    configurations = [(FULL_BATCH, "process", (), (1, 4, 16), args.rounds),
                      *((FULL_BATCH, "process", flags, (1, 16), args.rounds) for flags in variants),
                      *((b, "process", (), (16,), 1) for b in capped)]
    if references:
        configurations += [(1, "process", (), (16,), 1), (FULL_BATCH, "thread", (), (1, 16), 1)]
    for max_batch, engine, flags, levels, rounds in configurations:
        server = Server([f"--name=gpt={gpt_path}", f"--name=t2i={t2i_path}"], max_batch, args.threads, engine,
                        flags, args.device)
        try:
            for round_ in range(rounds):
                slices = args.slices if len(levels) > 1 else 1
                for clients, level in measure_levels(server, levels, args.seconds, slices).items():
                    tally, elapsed = level.tally, level.seconds
                    tokens_per_s, server_itl = tally.tokens / elapsed, histogram_median(level.server_histogram)
                    measured[(max_batch, engine, flags, clients, round_)] = (
                        tokens_per_s, pct(tally.inter_token, 0.5), server_itl)
                    label = f"{clients}" + ("" if max_batch == FULL_BATCH else f" (--max-batch {max_batch})") + (
                        "" if engine == "process" else f" (--engine {engine})") + (
                        f" ({' '.join(flags)})" if flags else "")
                    rows.append([label + (f", round {round_ + 1}" if rounds > 1 else ""),
                                 f"{tally.requests / elapsed:.2f}", f"{tokens_per_s:.0f}",
                                 f"{1000 * pct(tally.first_token, 0.5):.0f} / "
                                 f"{1000 * pct(tally.first_token, 0.99):.0f}",
                                 f"{1000 * pct(tally.inter_token, 0.5):.1f} / "
                                 f"{1000 * pct(tally.inter_token, 0.99):.1f}",
                                 f"{1000 * server_itl:.1f}", str(tally.errors),
                                 f"{level.rss[0]:.0f} -> {level.rss[-1]:.0f}"])
            if max_batch == FULL_BATCH and engine == "process" and not flags:
                image_rows = []
                for clients in (1, 8):
                    tally, elapsed, rss0, rss1 = load(server, clients, args.image_seconds, draw_image, CAPTIONS)
                    image_rows.append([str(clients), f"{tally.requests / elapsed:.2f}",
                                       f"{1000 * pct(tally.first_token, 0.5):.0f} / "
                                       f"{1000 * pct(tally.first_token, 0.99):.0f}",
                                       str(tally.errors), f"{rss0:.0f} -> {rss1:.0f}"])
        finally:
            server.close()
    engine_rows: dict[tuple[int, int], tuple[float, float]] = {}  # (clients, round) -> (tokens/s, inter-token p50)
    if args.engine_seconds > 0:  # after the server has gone: nothing else on the cores
        for round_, clients in itertools.product(range(args.rounds), (1, 16)):
            engine_rows[(clients, round_)] = scheduler_alone(gpt_path, clients, args.engine_seconds, args.device)

    print(f"\nstreaming completions on {args.device}, {MAX_TOKENS} tokens each, {args.seconds:.0f} s per row (levels "
          f"of a round interleaved in {args.slices} slices)")
    print_table(["clients", "requests/s", "tokens/s", "TTFT p50 / p99 (ms)", "inter-token p50 / p99 (ms)",
                 "server-side inter-token p50 (ms)", "errors", "server RSS MiB"], rows)
    rounds = range(args.rounds)
    # levels[flags][clients]: the full-batch process server's rounds
    levels = {flags: {c: [measured[(FULL_BATCH, "process", flags, c, r)] for r in rounds] for c in (1, 16)}
              for flags in ((), *variants)}
    for flags, (one, sixteen) in ((f, (by[1], by[16])) for f, by in levels.items()):
        print(f"{' '.join(flags) or 'defaults'}: 16 clients / 1 client, mean over {args.rounds} rounds (range): "
              f"tokens/s {spread([b[0] / a[0] for a, b in zip(one, sixteen, strict=True)])} (target >= 4x); "
              f"inter-token p50 {spread([b[1] / a[1] for a, b in zip(one, sixteen, strict=True)])} at the clients, "
              f"{spread([b[2] / a[2] for a, b in zip(one, sixteen, strict=True)])} at the server (target <= 2x)")
    for flags in variants:
        print(f"{' '.join(flags)} against the defaults, same round: inter-token p50 " + ", ".join(
            f"at {c} client{'s' if c > 1 else ''} "
            f"{spread([b[1] / a[1] for a, b in zip(levels[()][c], levels[flags][c], strict=True)])}"
            for c in (1, 16)))
    one, sixteen = levels[()][1], levels[()][16]
    one_mean = [statistics.mean(level[i] for level in one) for i in range(3)]
    for batch in capped:
        row = measured[(batch, "process", (), 16, 0)]
        print(f"16 clients, --max-batch {batch}: tokens/s {row[0] / one_mean[0]:.2f}x one client's (mean of the "
              f"rounds), inter-token p50 {row[1] / one_mean[1]:.2f}x at the clients, {row[2] / one_mean[2]:.2f}x at "
              "the server")
    if references:
        serial = measured[(1, "process", (), 16, 0)]
        print(f"batched / unbatched at 16 clients: {statistics.mean(b[0] for b in sixteen) / serial[0]:.2f}x "
              "tokens/s")
        thread_one = measured[(FULL_BATCH, "thread", (), 1, 0)]
        thread_sixteen = measured[(FULL_BATCH, "thread", (), 16, 0)]
        print(f"--engine thread (one round): tokens/s 16 / 1 {thread_sixteen[0] / thread_one[0]:.2f}x, inter-token "
              f"p50 {thread_sixteen[1] / thread_one[1]:.2f}x; against the process engine's mean: tokens/s at 16 "
              f"clients {thread_sixteen[0] / statistics.mean(b[0] for b in sixteen):.2f}x, inter-token p50 at 1 "
              f"client {thread_one[1] / one_mean[1]:.2f}x")
    if engine_rows:
        print(f"\nno HTTP: the server's scheduler driven directly, {args.engine_seconds:.0f} s per row")
        print_table(["clients", "round", "tokens/s", "inter-token p50 (ms)"],
                    [[str(c), str(r + 1), f"{engine_rows[(c, r)][0]:.0f}", f"{1000 * engine_rows[(c, r)][1]:.2f}"]
                     for r, c in itertools.product(rounds, (1, 16))])
        alone = [(engine_rows[(1, r)], engine_rows[(16, r)]) for r in rounds]
        print(f"no HTTP, 16 / 1: tokens/s {spread([b[0] / a[0] for a, b in alone])}, "
              f"inter-token p50 {spread([b[1] / a[1] for a, b in alone])}")
    print(f"\nimages ({args.image_seconds:.0f} s per row)")
    print_table(["clients", "images/s", "latency p50 / p99 (ms)", "errors", "server RSS MiB"], image_rows)
    ratio = float(image_rows[1][1]) / float(image_rows[0][1])
    print(f"images/s 8 clients / 1 client: {ratio:.2f}x")


if __name__ == "__main__":
    main()
