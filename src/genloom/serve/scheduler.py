"""The server's schedulers: one thread per model, between the HTTP handlers (asyncio) and the models.

- `TextScheduler` drives a `DecodeBatch` (iteration-level batching): each loop admits waiting requests into free
  slots, drops rows whose client is gone, reads at most `prefill_chunk` tokens of the admitted prompts (a long
  prompt over several passes, so it cannot stall the running rows for its whole prefill), and runs one decoding
  step for every live row. Text is detokenised here (`TextStream`), so a stop string ends its row at the step it
  appears. A row's result does not depend on its neighbours: the engine gives every row its own positions, mask
  and generator.
- `StepScheduler` (serve/step_scheduler.py) batches the requests of a text-to-image or translation model one step (a
  denoiser pass, an image token, a target token) at a time, as `TextScheduler` does decoding steps.
- `BatchWorker` runs requests that are whole calls: it takes the oldest request and every waiting one that can share
  its call (same `key`), up to a batch size, and runs them together. The server ran images and translations this
  way before `StepScheduler`; benchmarks/step_serving.py keeps it as the whole-call reference.

Both queues are bounded: a full queue is `QueueFull`, which the HTTP layer answers with 429 and Retry-After.
Results cross back to the event loop through a callback the handler gives (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from genloom.generate.batch import DecodeBatch, Row, TokenLogprobs
from genloom.generate.lm import DecoderTool, TextStream
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT
from genloom.serve import PREFILL_CHUNK
from genloom.serve.metrics import ServerMetrics
from genloom.tokenizers import Tokenizer

log = logging.getLogger("genloom.serve")


class QueueFull(Exception):
    def __init__(self, depth: int) -> None:
        super().__init__(f"{depth} requests waiting")
        self.depth = depth


@dataclass
class TokenEvent:
    """What one decoding step produced for one request: text now final, and the token behind it."""

    text: str
    token: int | None  # None for the end token, which has no text
    logprobs: TokenLogprobs | None
    finish_reason: str | None = None  # on the request's last event: "stop" or "length"
    error: str | None = None  # the model failed; the request ends


@dataclass
class TextJob:
    """One sequence to generate (a completions request with n = 3 is three jobs)."""

    prompt: list[int]
    sampling: SamplingConfig
    eos_id: int | None
    top_logprobs: int | None
    deliver: Callable[[TokenEvent], None]  # called on the scheduler's thread; must hand over thread-safely
    tool: DecoderTool | None = None  # feeds tokens in as the row writes (a chat model's calculator)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    row: Row | None = None
    text: TextStream | None = None
    last_token_at: float | None = None
    engine_id: int | None = None  # its id in an engine process (serve.engine_process), once sent there


class _ModelThread:
    """A model's thread: it waits on `wake` for work and ends when `stop` sets `stopped`."""

    def __init__(self, name: str) -> None:
        self.wake = threading.Condition()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name=f"genloom-serve-{name}", daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.wake:
            self.stopped = True
            self.wake.notify()
        self.thread.join(timeout=10)


class TokenLatency:
    """A model's token counter and latency histograms: time to first token from a job's submission, then the time
    between its tokens."""

    def __init__(self, metrics: ServerMetrics, name: str) -> None:
        # This model's series, looked up once: a label lookup per token would cost a 16-row step ~0.1 ms.
        self._generated = metrics.generated_tokens.labels(name)
        self._first_token = metrics.time_to_first_token.labels(name)
        self._inter_token = metrics.inter_token_latency.labels(name)

    def record(self, job: TextJob, now: float) -> None:
        self._generated.inc()
        if job.last_token_at is None:
            self._first_token.observe(now - job.submitted)
        else:
            self._inter_token.observe(now - job.last_token_at)
        job.last_token_at = now


@dataclass
class LoopTimes:
    """What one pass of a text scheduler's loop spent, in seconds: reading prompts in (None when none waited to be
    read) and the decoding step (None without running rows)."""

    prefill: float | None = None
    step: float | None = None


class EngineTimes:
    """A language model's prefill and decoding-step histograms (`LoopTimes` of each pass), looked up once."""

    def __init__(self, metrics: ServerMetrics, name: str) -> None:
        self._prefill = metrics.prefill.labels(name)
        self._step = metrics.decode_step.labels(name)

    def record(self, times: LoopTimes) -> None:
        if times.prefill is not None:
            self._prefill.observe(times.prefill)
        if times.step is not None:
            self._step.observe(times.step)


class _TextSeries:
    """A language model's metric series, looked up once: a label lookup per row and step costs a 16-row step
    ~0.1 ms."""

    def __init__(self, metrics: ServerMetrics, name: str) -> None:
        self.queue_depth = metrics.queue_depth.labels(name)
        self.running = metrics.running.labels(name)
        self.prompt_tokens = metrics.prompt_tokens.labels(name)
        self.latency = TokenLatency(metrics, name)
        self.engine = EngineTimes(metrics, name)


class TextScheduler(_ModelThread):
    """Iteration-level batching of text requests for one language model.

    metrics: None keeps none (the engine process: the HTTP side times the events as they reach it, and records
    `last_loop`, which it sends). after_step: called on the scheduler's thread after each pass of its loop (a
    prefill, a decoding step or both), once its events are delivered (the engine process sends them to the HTTP
    side in one message there). kv_dtype: the KV cache's dtype (default: the model's; see `DecodeBatch`).
    prefill_chunk: prompt tokens read per pass (`DecodeBatch`'s chunked prefill)."""

    def __init__(self, name: str, model: GPT, tokenizer: Tokenizer, max_batch: int, max_queue: int,
                 metrics: ServerMetrics | None, after_step: Callable[[], None] | None = None,
                 kv_dtype: torch.dtype | None = None, prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.max_queue, self.after_step = max_queue, after_step
        vocab_limit = tokenizer.vocab_size if tokenizer.vocab_size < model.config.vocab_size else None
        self.batch = DecodeBatch(model, max_batch, vocab_limit=vocab_limit, kv_dtype=kv_dtype,
                                 prefill_chunk=prefill_chunk)
        self.waiting: deque[TextJob] = deque()
        self.live: dict[int, TextJob] = {}  # row id -> job
        self.last_loop = LoopTimes()  # what the last pass of the loop spent, read by after_step
        super().__init__(name)
        self._series = None if metrics is None else _TextSeries(metrics, name)

    def submit(self, jobs: list[TextJob]) -> None:
        """Queue the jobs of one request, all or none."""
        with self.wake:
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(len(self.waiting))
            self.waiting.extend(jobs)
            self._count_waiting()
            self.wake.notify()

    def cancel(self, jobs: list[TextJob]) -> None:
        """The client is gone: its rows leave the batch before the next decoding step."""
        with self.wake:
            for job in jobs:
                job.cancelled = True
            self.wake.notify()

    @property
    def running(self) -> int:
        """Rows in the batch: decoding, or having their prompts read."""
        return len(self.batch.rows) + len(self.batch.pending)

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.batch.busy:
                    self.wake.wait()
                if self.stopped:
                    return
                admitted: list[TextJob] = []
                while self.waiting and len(admitted) < self.batch.free:
                    job = self.waiting.popleft()
                    if not job.cancelled:
                        admitted.append(job)
                self._count_waiting()
            self.last_loop = LoopTimes()
            try:
                self._drop_cancelled()
                started = time.perf_counter()
                self._admit(admitted)
                prefilling = bool(self.batch.pending)
                self.batch.prefill()
                prefilled_at = time.perf_counter()
                stepped = self._step()
                self.last_loop = LoopTimes(prefilled_at - started if prefilling else None,
                                           time.perf_counter() - prefilled_at if stepped else None)
                if self._series is not None:
                    self._series.engine.record(self.last_loop)
            except Exception as e:  # a model failure must not kill the server: fail the rows it touched
                log.exception("decoding failed")
                for job in [*self.live.values(), *admitted]:
                    job.deliver(TokenEvent("", None, None, finish_reason="error", error=str(e)))
                    if job.row is not None:
                        self.batch.remove(job.row)
                self.live.clear()
            if self.after_step is not None:
                self.after_step()

    def _drop_cancelled(self) -> None:
        for row_id, job in list(self.live.items()):
            if job.cancelled:
                assert job.row is not None
                self.batch.remove(job.row)
                del self.live[row_id]

    def _admit(self, jobs: list[TextJob]) -> None:
        if not jobs:
            return
        rows = self.batch.add([j.prompt for j in jobs], [j.sampling for j in jobs], [j.top_logprobs for j in jobs],
                              [j.eos_id for j in jobs])
        for job, row in zip(jobs, rows, strict=True):
            job.row, job.text = row, TextStream(self.tokenizer, job.sampling.stop)
            if self._series is not None:
                self._series.prompt_tokens.inc(len(job.prompt))
            if row.finish_reason is not None:  # no room to generate in the context
                job.deliver(TokenEvent("", None, None, finish_reason=row.finish_reason))
            else:
                self.live[row.id] = job

    def _step(self) -> bool:
        """One decoding step of the running rows, their events delivered; False when no row is running."""
        if not self.batch.rows:
            return False
        self._count_running()
        outputs = self.batch.step()
        now = time.perf_counter()
        for out in outputs:
            job = self.live[out.row.id]
            assert job.text is not None
            if self._series is not None:
                self._series.latency.record(job, now)
            ended = out.row.finish_reason == "stop"  # the end token: no text of its own
            piece = "" if ended else job.text.push(out.token)
            finish = None
            if job.text.stopped:
                self.batch.remove(out.row)
                finish = "stop"
            elif out.finished:
                finish = out.row.finish_reason
            if finish is not None:
                piece += job.text.flush()
                del self.live[out.row.id]
            elif job.tool is not None and (forced := job.tool.after_token(out.row.generated)):
                self.batch.force(out.row, forced)
            job.deliver(TokenEvent(piece, None if ended else out.token, out.logprobs, finish))
        self._count_running()
        return True

    def _count_waiting(self) -> None:
        if self._series is not None:
            self._series.queue_depth.set(len(self.waiting))

    def _count_running(self) -> None:
        if self._series is not None:
            self._series.running.set(self.running)


@dataclass
class CallJob:
    """One request a `BatchWorker` runs: `items` units of work (images, texts) sharing `key`."""

    key: Hashable
    items: int
    payload: Any
    deliver: Callable[[Any, BaseException | None], None]  # (result, error), on the worker's thread
    cancelled: bool = False


class CallQueue(_ModelThread):
    """A model's thread fed whole requests (`CallJob`) through a bounded queue."""

    def __init__(self, name: str, max_queue: int, metrics: ServerMetrics) -> None:
        self.name, self.max_queue, self.metrics = name, max_queue, metrics
        self.waiting: deque[CallJob] = deque()
        super().__init__(name)

    def submit(self, job: CallJob) -> None:
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(len(self.waiting))
            self.waiting.append(job)
            self.metrics.queue_depth.labels(self.name).set(len(self.waiting))
            self.wake.notify()


class BatchWorker(CallQueue):
    """Runs whole-call requests in batches: `run(payloads)` -> one result per payload (the whole-call reference of
    benchmarks/step_serving.py; the server's models run on `StepScheduler`)."""

    def __init__(self, name: str, run: Callable[[list[Any]], list[Any]], max_batch: int, max_queue: int,
                 metrics: ServerMetrics) -> None:
        self.run, self.max_batch = run, max_batch
        self.running = 0
        super().__init__(name, max_queue, metrics)

    def _take(self) -> list[CallJob]:
        """The oldest job and every waiting job that shares its call, up to max_batch items."""
        first = self.waiting.popleft()
        taken, items, rest = [first], first.items, deque[CallJob]()
        while self.waiting:
            job = self.waiting.popleft()
            if job.key == first.key and items + job.items <= self.max_batch:
                taken.append(job)
                items += job.items
            else:
                rest.append(job)
        self.waiting = rest
        return [job for job in taken if not job.cancelled]

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.waiting:
                    self.wake.wait()
                if self.stopped:
                    return
                jobs = self._take()
                self.metrics.queue_depth.labels(self.name).set(len(self.waiting))
            if not jobs:
                continue
            self.running = sum(job.items for job in jobs)
            self.metrics.running.labels(self.name).set(self.running)
            try:
                results = self.run([job.payload for job in jobs])
            except Exception as e:
                log.exception("batch failed")
                for job in jobs:
                    job.deliver(None, e)
            else:
                for job, result in zip(jobs, results, strict=True):
                    job.deliver(result, None)
            self.running = 0
            self.metrics.running.labels(self.name).set(0)
