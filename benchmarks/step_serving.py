"""Image and translation requests under load: the server's step-level scheduler against whole-call batching.

The server's `StepScheduler` runs one step at a time over every live request, each at its own step: a denoiser
pass for a diffusion model (`DiffusionBatch`), an image token for a token model (`ImageTokenBatch`), a target token
of every hypothesis for a translation model (`TranslationBatch`). The reference is the `BatchWorker` the server used
before, which runs whole calls of waiting requests that share their settings (a request arriving mid-call waits for
the call to end). Both are driven here directly, without HTTP (the same objects `genloom serve` builds, same torch
threads), one image or one sentence per request, --max-batch 16, on random weights:

- `--method diffusion`: `dit-small` (6.0M parameters, as benchmarks/diffusion.py trains it) over a `vae-32`
  (32x32 RGB, 8x8x4 latents), guidance 3; the setting that varies is the sampling steps (20; or 10 / 20 / 50).
- `--method tokens`: `dalle-compact` (1.8M, the shapes benchmark's) over `vq-colour` (32x32, 8x8 = 64 tokens of
  shape x colour codes); every request takes 64 steps, and the setting that varies is the guidance scale (3; or
  1 / 2 / 3: guidance 1 adds no unconditional rows).
- `--method translation`: `transformer-small` (3 + 3 layers, d 256) with a 2,000-token BPE of the built-in
  English number words; a request is one number below 10,000 in English words (1-9 words); the setting that
  varies is the beam size (4; or 1 / 4 / 8). Random weights never end with EOS, so every hypothesis runs to the
  length limit (1.2 x the source + 10 tokens).

Workloads:
- closed loop, 1 and 8 clients, the uniform setting: each client sends its next request when the last one ends.
- closed loop, 8 clients, mixed settings: client i asks for setting i mod 3, as users do who trade quality for
  speed; whole calls batch only requests with the same settings.
- open loop, uniform and mixed: requests arrive at random (Poisson) at `--load` x the step scheduler's 8-client
  requests/s of the same settings, as a server's users send them; latency is from arrival to result.

Per row: requests/s (images/s, sentences/s) and latency p50 / p99 (ms). Within a row the two schedulers take turns
in `--slices` slices (step, call, step, call, ... of seconds / slices each), and the ratios (step-level / whole-call)
are taken within each of `--rounds` rounds: this shared machine drifts by up to 2x between minutes.

Usage: python benchmarks/step_serving.py [--method diffusion|tokens|translation] [--seconds 20] [--rounds 2]
       [--slices 4] [--load 0.7]   (about 9 minutes)
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import print_table, run_clients
from num2words import num2words

from genloom.checkpoint import save_checkpoint
from genloom.cli.serve import default_threads
from genloom.data.builtin_parallel import builtin_pairs
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.data.translation import train_translation_tokenizer
from genloom.generate.diffusion_batch import DiffusionBatch
from genloom.generate.image_token_batch import ImageTokenBatch
from genloom.generate.text_to_image import ImageGenerator
from genloom.generate.translate import translate
from genloom.generate.translate_batch import TranslationBatch
from genloom.models.dalle import Dalle
from genloom.models.dalle import preset as dalle_preset
from genloom.models.dit import DiT
from genloom.models.dit import preset as dit_preset
from genloom.models.seq2seq import Seq2SeqTransformer
from genloom.models.seq2seq import preset as seq2seq_preset
from genloom.models.vae import VAE
from genloom.models.vae import preset as vae_preset
from genloom.models.vqvae import VQVAE
from genloom.models.vqvae import preset as vq_preset
from genloom.registry import LoadedLatentDiffusion, load_image_generator, load_translation_model
from genloom.serve.metrics import ServerMetrics
from genloom.serve.models import (
    DiffusionDrawer,
    ImageJob,
    TokenDrawer,
    TranslationJob,
    Translator,
    draw_whole_call,
    image_batch_key,
)
from genloom.serve.scheduler import BatchWorker, CallJob, CallQueue
from genloom.serve.step_scheduler import StepScheduler
from genloom.tokenizers import SpecialIds, Tokenizer

CAPTIONS = ["a red circle", "a blue square above a green triangle", "a cyan triangle", "a yellow square left of a red"
            " circle"]
MAX_BATCH, MAX_QUEUE = 16, 1024
SCHEDULERS = ("step", "call")


def make_model(root: Path, method: str) -> ImageGenerator:
    torch.manual_seed(0)
    captions = train_caption_tokenizer(CAPTIONS, 300)
    if method == "tokens":
        vq = VQVAE(vq_preset("vq-colour"))
        dalle_config = dalle_preset("dalle-compact", text_vocab_size=captions.vocab_size, grid_size=vq.config.grid_size,
                                    image_vocab_size=vq.config.vocab_size, colour_codes=vq.config.colour_codes,
                                    pad_id=CaptionCodec(captions, 24).ids.pad)
        save_checkpoint(root / "image_tokenizer", vq, "vqvae", vq.config, None)
        save_checkpoint(root / "final", Dalle(dalle_config), "dalle", dalle_config, captions,
                        metadata={"components": {"image_tokenizer": "vqvae"}})
        return load_image_generator(root / "final")
    config = dit_preset("dit-small", text_vocab_size=captions.vocab_size, pad_id=CaptionCodec(captions, 24).ids.pad)
    dit = DiT(config)
    for layer in (dit.final.proj, dit.final.modulation, *(b.modulation for b in dit.blocks)):
        torch.nn.init.normal_(layer.weight, std=0.02)  # adaLN-Zero's zero init would skip most of the work's math
    vae = VAE(vae_preset("vae-32"))
    save_checkpoint(root / "autoencoder", vae, "vae", vae.config, None)
    save_checkpoint(root / "final", dit, "dit", config, captions, metadata={"components": {"autoencoder": "vae"}})
    loaded = load_image_generator(root / "final")
    assert isinstance(loaded, LoadedLatentDiffusion)
    return loaded


def make_translator(root: Path) -> tuple[Seq2SeqTransformer, Tokenizer]:
    torch.manual_seed(0)
    tokenizer = train_translation_tokenizer(builtin_pairs("numbers", "en", "de", "train"), 2000)
    config = seq2seq_preset("transformer-small", vocab_size=tokenizer.vocab_size, dropout=0.0,
                            pad_id=SpecialIds.of(tokenizer).pad)
    save_checkpoint(root / "translate", Seq2SeqTransformer(config), "seq2seq", config, tokenizer)
    loaded = load_translation_model(root / "translate")
    assert isinstance(loaded.model, Seq2SeqTransformer)
    return loaded.model.eval(), loaded.tokenizer


def whole_call_translations(model: Seq2SeqTransformer, tokenizer: Tokenizer, jobs: list[TranslationJob]
                            ) -> list[list[str]]:
    """All jobs' texts in one `translate` call, as the server ran them before (jobs share a beam size)."""
    texts = translate(model, tokenizer, [text for job in jobs for text in job.texts], beam_size=jobs[0].beam_size)
    return [[text] for text in texts]  # one text per job here


def make_worker(kind: str, method: str, loaded: Any, metrics: ServerMetrics) -> CallQueue:
    if method == "translation":
        model, tokenizer = loaded
        if kind == "call":
            return BatchWorker("tr", functools.partial(whole_call_translations, model, tokenizer), MAX_BATCH,
                               MAX_QUEUE, metrics)
        return StepScheduler("tr", TranslationBatch(model, MAX_BATCH, SpecialIds.of(tokenizer)), Translator(tokenizer),
                             MAX_QUEUE, metrics)
    t2i = loaded
    if kind == "call":
        return BatchWorker("t2i", functools.partial(draw_whole_call, t2i, None), MAX_BATCH, MAX_QUEUE, metrics)
    if isinstance(t2i, LoadedLatentDiffusion):
        return StepScheduler("t2i", DiffusionBatch(t2i.model, MAX_BATCH), DiffusionDrawer(t2i), MAX_QUEUE, metrics)
    return StepScheduler("t2i", ImageTokenBatch(t2i.model, MAX_BATCH), TokenDrawer(t2i), MAX_QUEUE, metrics)


@dataclass
class Method:
    """What a benchmark request varies for a method: its setting (steps, guidance, or beam size), as a job."""

    uniform: tuple[float, ...]  # the setting of the uniform workloads
    mixed: tuple[float, ...]  # client i's setting in the mixed ones: mixed[i % 3]
    label: Callable[[tuple[float, ...]], str]
    job: Callable[[float, int], Any]  # (setting, seed) -> one image's or one sentence's request
    key: Callable[[Any], Hashable] = image_batch_key  # the requests that can share one whole call


METHODS = {
    "diffusion": Method((20,), (10, 20, 50), lambda s: f"{' / '.join(f'{x:g}' for x in s)} steps",
                        lambda steps, seed: ImageJob(CAPTIONS[seed % len(CAPTIONS)], 1, seed, 3.0, "", 1.0,
                                                     steps=int(steps))),
    "tokens": Method((3.0,), (1.0, 2.0, 3.0), lambda s: f"guidance {' / '.join(f'{x:g}' for x in s)}",
                     lambda guidance, seed: ImageJob(CAPTIONS[seed % len(CAPTIONS)], 1, seed, guidance, "", 1.0)),
    "translation": Method((4,), (1, 4, 8), lambda s: f"beam {' / '.join(f'{x:g}' for x in s)}",
                          lambda beam, seed: TranslationJob([num2words(seed % 10_000)], "", int(beam)),
                          key=lambda job: job.beam_size),
}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def request(worker: CallQueue, method: Method, setting: float, seed: int, tally: Tally,
            arrived: float | None = None) -> None:
    """One request, waited for; its latency counts from `arrived` (default: now)."""
    start = time.perf_counter() if arrived is None else arrived
    done = threading.Event()
    failed: list[BaseException] = []

    def deliver(result: object, error: BaseException | None) -> None:
        if error is not None:
            failed.append(error)
        done.set()

    job = method.job(setting, seed)
    worker.submit(CallJob(method.key(job), 1, job, deliver))
    done.wait()
    with tally.lock:
        if failed:
            tally.errors += 1
        else:
            tally.latencies.append(time.perf_counter() - start)


def closed_loop(worker: CallQueue, method: Method, clients: int, settings: tuple[float, ...], seconds: float
                ) -> tuple[Tally, float]:
    """`clients` clients for `seconds`, client i asking for settings[i % len(settings)]."""
    tally, deadline = Tally(), time.perf_counter() + seconds
    seeds = iter(range(10**9))

    def client(i: int) -> None:
        while time.perf_counter() < deadline:
            request(worker, method, settings[i % len(settings)], next(seeds), tally)

    return tally, run_clients(client, clients)


def open_loop(worker: CallQueue, method: Method, rate: float, settings: tuple[float, ...], seconds: float, seed: int
              ) -> tuple[Tally, float]:
    """Requests arriving as a Poisson process of `rate` per second for `seconds`, each on its own thread, asking
    for one of `settings` at random."""
    tally, rng = Tally(), random.Random(seed)
    threads: list[threading.Thread] = []
    start = time.perf_counter()
    arrival = start
    while True:
        arrival += rng.expovariate(rate)
        if arrival > start + seconds:
            break
        time.sleep(max(0.0, arrival - time.perf_counter()))
        thread = threading.Thread(target=request,
                                  args=(worker, method, rng.choice(settings), len(threads), tally, arrival))
        thread.start()
        threads.append(thread)
    for t in threads:
        t.join()
    return tally, time.perf_counter() - start


Run = Callable[[CallQueue, int], tuple[Tally, float]]  # (worker, slice index) -> (tally, seconds it took)


def arrivals_run(method: Method, rate: float, settings: tuple[float, ...], seconds: float, seed: int) -> Run:
    """An open-loop slice; slice k of both schedulers gets the same arrival times and settings."""
    return lambda worker, k: open_loop(worker, method, rate, settings, seconds, seed + k)


def sliced(run: Run, workers: dict[str, CallQueue], order: tuple[str, ...], slices: int
           ) -> list[tuple[str, tuple[Tally, float]]]:
    """`run` on each worker in turn, `slices` times over (step, call, step, call, ...), each worker's slices
    pooled: the machine's drift from minute to minute lands on both alike."""
    pooled = {kind: (Tally(), 0.0) for kind in order}
    for k in range(slices):
        for kind in order:
            tally, elapsed = run(workers[kind], k)
            total, seconds = pooled[kind]
            total.latencies += tally.latencies
            total.errors += tally.errors
            pooled[kind] = (total, seconds + elapsed)
    return list(pooled.items())


def summary(tally: Tally, elapsed: float) -> tuple[float, float, float]:
    """(requests/s, latency p50 ms, p99 ms)."""
    lat = sorted(tally.latencies)
    if not lat:
        return 0.0, float("nan"), float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return len(lat) / elapsed, statistics.median(lat) * 1e3, p99 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=sorted(METHODS), default="diffusion")
    parser.add_argument("--seconds", type=float, default=20.0, help="per row")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slices", type=int, default=4, help="turns each scheduler takes within a row")
    parser.add_argument("--load", type=float, default=0.7, help="open-loop arrival rate, x the 8-client requests/s")
    args = parser.parse_args()
    torch.set_num_threads(default_threads())  # as `genloom serve` sets them
    metrics = ServerMetrics()
    with tempfile.TemporaryDirectory() as tmp:
        method = METHODS[args.method]
        root = Path(tmp)
        loaded = make_translator(root) if args.method == "translation" else make_model(root, args.method)
        workers = {kind: make_worker(kind, args.method, loaded, metrics) for kind in SCHEDULERS}
        for worker in workers.values():
            worker.start()
        for worker in workers.values():  # warm-up: first calls allocate
            closed_loop(worker, method, 2, method.uniform, 3.0)
        piece = args.seconds / args.slices
        uniform, mixed = f"8 clients, {method.label(method.uniform)}", f"8 clients, {method.label(method.mixed)}"
        workloads: list[tuple[str, Run]] = [
            (f"1 client, {method.label(method.uniform)}",
             lambda w, k: closed_loop(w, method, 1, method.uniform, piece)),
            (uniform, lambda w, k: closed_loop(w, method, 8, method.uniform, piece)),
            (mixed, lambda w, k: closed_loop(w, method, 8, method.mixed, piece)),
        ]
        rows, ratios = [], []
        for r in range(args.rounds):
            order = SCHEDULERS if r % 2 == 0 else SCHEDULERS[::-1]
            results: dict[tuple[str, str], tuple[float, float, float]] = {}
            errors = 0
            for name, run in workloads:
                for kind, (tally, elapsed) in sliced(run, workers, order, args.slices):
                    results[name, kind] = summary(tally, elapsed)
                    errors += tally.errors
            names = [w[0] for w in workloads]
            for base, settings in ((uniform, method.uniform), (mixed, method.mixed)):
                rate = args.load * results[base, "step"][0]  # the same arrivals for both schedulers
                name = f"arrivals at {rate:.1f}/s ({args.load:g} x 8 clients'), {method.label(settings)}"
                names.append(name)
                arrivals = arrivals_run(method, rate, settings, args.seconds / args.slices, seed=100 * r)
                for kind, (tally, elapsed) in sliced(arrivals, workers, order, args.slices):
                    results[name, kind] = summary(tally, elapsed)
                    errors += tally.errors
            for (name, kind), (per_s, p50, p99) in results.items():
                rows.append([f"{name}, round {r + 1}", kind, f"{per_s:.2f}", f"{p50:.0f} / {p99:.0f}"])
            for name in names:
                step, call = results[name, "step"], results[name, "call"]
                ratios.append([f"{name}, round {r + 1}", f"{step[0] / call[0]:.2f}x", f"{step[1] / call[1]:.2f}x",
                               f"{step[2] / call[2]:.2f}x"])
            assert errors == 0, f"{errors} requests failed"
        for worker in workers.values():
            worker.stop()
    model, unit = {"diffusion": ("dit-small + vae-32, guidance 3", "image"),
                   "tokens": ("dalle-compact + vq-colour", "image"),
                   "translation": ("transformer-small", "sentence")}[args.method]
    print(f"\n{args.method} requests, {model}, 1 {unit} each, {args.seconds:g} s a row in {args.slices} slices, "
          f"{torch.get_num_threads()} torch thread(s), zero errors")
    print_table(["workload", "scheduler", f"{unit}s/s", "latency p50 / p99 (ms)"], rows)
    print("\nstep-level against whole-call, same round")
    print_table(["workload", f"{unit}s/s", "latency p50", "latency p99"], ratios)


if __name__ == "__main__":
    main()
