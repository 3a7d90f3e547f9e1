"""A language model's decoding engine in a process of its own, as vLLM's V1 engine core runs apart from its API
server: the HTTP side and the decoding loop no longer share one interpreter lock.

In one process, every torch call of a decoding step (about 200 on a small GPT) releases and retakes the GIL, and
the event loop's work for the streams (building chunks, socket writes) takes it in between: on 2 cores the
scheduler thread of `genloom serve` spent a fifth of its time waiting and a third more CPU per step than the same
scheduler driven alone (serve_load benchmark, README). Here the child runs the same `TextScheduler` over the same
`DecodeBatch`; only the jobs and their events cross, one message per decoding step.

    parent (HTTP)                                  child (engine)
    EngineProcess.submit ---("submit", jobs)--->   TextScheduler.submit
    EngineProcess.cancel ---("cancel", ids)---->   TextScheduler.cancel
    reader thread <---("events", [(id, *event)], running, waiting, prefill s, step s)--- after each step

The parent keeps the model too (for `echo` scoring and the model's metadata), so a text model's weights are held
twice. Latency metrics are timed on the parent as events arrive, the time a client can see them; the prefill and
decoding-step histograms from the child's own clock, sent with the step's events.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from genloom.errors import GenloomError
from genloom.generate.batch import TokenLogprobs
from genloom.generate.sampling import SamplingConfig
from genloom.serve import PREFILL_CHUNK
from genloom.serve.errors import ApiError
from genloom.serve.metrics import ServerMetrics
from genloom.serve.scheduler import (
    EngineTimes,
    LoopTimes,
    QueueFull,
    TextJob,
    TextScheduler,
    TokenEvent,
    TokenLatency,
)

log = logging.getLogger("genloom.serve")
START_TIMEOUT_S = 300.0  # loading a large checkpoint in the child can take a while

# What crosses the pipe for one job: (job id, prompt, sampling, eos id, top logprobs, calls the model's tool).
JobMessage = tuple[int, list[int], SamplingConfig, int | None, int | None, bool]
# And for one event: (job id, then TokenEvent's fields in order). A tuple pickles ten times as fast as the dataclass
# (16 events: 2 against 24 us), on both sides of every step.
EventMessage = tuple[int, str, int | None, TokenLogprobs | None, str | None, str | None]


class EngineProcess:
    """The HTTP side's handle on a text model decoded in a child process; `submit` and `cancel` as `TextScheduler`.

    The queue limit is kept here, so a full queue is a 429 at once: a job waits when more jobs are outstanding
    (submitted, not finished) than the batch has rows."""

    def __init__(self, name: str, path: Path, max_batch: int, max_queue: int, device: str, threads: int,
                 metrics: ServerMetrics, kv_cache_dtype: str = "auto", compiled: bool = False,
                 prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.name, self.path, self.max_batch, self.max_queue = name, path, max_batch, max_queue
        self.device, self.threads, self.metrics, self.kv_cache_dtype = device, threads, metrics, kv_cache_dtype
        self.compiled = compiled  # the child decodes with a torch.compile'd step, compiled before it is ready
        self.prefill_chunk = prefill_chunk  # prompt tokens the child's scheduler reads per pass
        self.jobs: dict[int, TextJob] = {}  # outstanding, by id
        self.running = 0  # rows in the child's batch, as it last reported
        self.dead: str | None = None  # why the child is gone, once it is
        self._ids = itertools.count()
        self._lock = threading.Lock()  # jobs, and sends on the pipe (from every handler's submit and cancel)
        self._latency = TokenLatency(metrics, name)
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._reader: threading.Thread | None = None

    def launch(self) -> None:
        """Start the child and wait until it has loaded the model: a load failure is a one-line GenloomError while
        the server starts, not a failed request later."""
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and torch state
        parent_end, child_end = context.Pipe()
        self._process = context.Process(target=_engine_main, name=f"genloom-engine-{self.name}", daemon=True,
                                        args=(child_end, str(self.path), self.max_batch, self.device, self.threads,
                                              self.kv_cache_dtype, self.compiled, self.prefill_chunk))
        self._process.start()
        child_end.close()
        self._conn = parent_end
        if not parent_end.poll(START_TIMEOUT_S):
            self._process.kill()
            raise GenloomError(f"the engine process for {self.name!r} did not start within {START_TIMEOUT_S:.0f} s")
        try:
            message = parent_end.recv()
        except EOFError:
            raise GenloomError(f"the engine process for {self.name!r} exited while loading {self.path}") from None
        if message[0] != "ready":
            raise GenloomError(f"the engine process for {self.name!r} could not load {self.path}: {message[1]}")

    def start(self) -> None:
        """Begin relaying the child's events (the app's start-up, as for the in-process scheduler)."""
        if self._conn is None:
            self.launch()
        self._reader = threading.Thread(target=self._read, name=f"genloom-engine-reader-{self.name}", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        if self._conn is None or self._process is None:
            return
        with contextlib.suppress(OSError, ValueError), self._lock:  # the child may be gone already
            self._conn.send(("stop",))
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()
        if self._reader is not None:
            self._reader.join(timeout=10)
        self._conn.close()

    def submit(self, jobs: list[TextJob]) -> None:
        """Send the jobs of one request, all or none."""
        with self._lock:
            if self.dead is not None:
                raise ApiError(503, f"the model {self.name!r} cannot generate: {self.dead}", type_="server_error",
                               code="engine_unavailable")
            waiting = max(0, len(self.jobs) - self.max_batch)
            if waiting + len(jobs) > self.max_queue:
                raise QueueFull(waiting)
            messages: list[JobMessage] = []
            for job in jobs:
                job_id = next(self._ids)
                self.jobs[job_id] = job
                job.engine_id = job_id
                messages.append((job_id, job.prompt, job.sampling, job.eos_id, job.top_logprobs, job.tool is not None))
                self.metrics.prompt_tokens.labels(self.name).inc(len(job.prompt))
            assert self._conn is not None
            self._conn.send(("submit", messages))

    def cancel(self, jobs: list[TextJob]) -> None:
        with self._lock:
            ids = [job.engine_id for job in jobs if job.engine_id is not None and job.engine_id in self.jobs]
            for job_id in ids:
                del self.jobs[job_id]
            if ids and self.dead is None:
                assert self._conn is not None
                self._conn.send(("cancel", ids))

    def _read(self) -> None:
        """Hand the child's events to their jobs, as they arrive; when the child is gone, end every job."""
        assert self._conn is not None
        running, waiting = self.metrics.running.labels(self.name), self.metrics.queue_depth.labels(self.name)
        engine_times = EngineTimes(self.metrics, self.name)
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            if message[0] != "events":
                break  # "stopped"
            _, events, self.running, queued, prefill_s, step_s = message
            running.set(self.running)
            waiting.set(queued)
            engine_times.record(LoopTimes(prefill_s, step_s))
            now = time.perf_counter()
            for job_id, *fields in events:
                event = TokenEvent(*fields)
                job = self.jobs.get(job_id)
                if job is None:
                    continue  # cancelled here while the child was decoding it
                if event.error is None:
                    self._latency.record(job, now)
                if event.finish_reason is not None:
                    with self._lock:
                        self.jobs.pop(job_id, None)
                try:
                    job.deliver(event)
                except Exception:  # one request's handler gone wrong (its event loop closed): not the others
                    log.exception("delivering an event failed")
        self._fail_all("its decoding process has exited")

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            if self.dead is None and self._process is not None and self._process.exitcode not in (None, 0):
                reason += f" (exit code {self._process.exitcode})"
            self.dead = self.dead or reason
            jobs, self.jobs = list(self.jobs.values()), {}
        for job in jobs:
            try:
                job.deliver(TokenEvent("", None, None, finish_reason="error", error=reason))
            except Exception:
                log.exception("delivering an event failed")


def _engine_main(conn: Connection, path: str, max_batch: int, device: str, threads: int, kv_cache_dtype: str,
                 compiled: bool = False, prefill_chunk: int = PREFILL_CHUNK) -> None:
    """The child: load the model, run its `TextScheduler`, and relay jobs in and events out until told to stop
    or the parent is gone (the pipe closes)."""
    import signal

    import torch

    # Ctrl-C in a terminal signals the whole process group: the server shuts down and then closes the pipe, which
    # ends this process; a KeyboardInterrupt here would only print a second traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from genloom.generate.compiled import compile_decoding
    from genloom.models.gpt import GPT
    from genloom.registry import load_pretrained
    from genloom.serve.models import kv_cache_dtype as to_dtype
    from genloom.tokenizers.chat_tools import decoder_tool
    from genloom.train.distributed import pick_device

    torch.set_num_threads(threads)
    try:
        kv_dtype = to_dtype(kv_cache_dtype)
        loaded = load_pretrained(Path(path))
        model, tokenizer = loaded.model, loaded.tokenizer
        assert isinstance(model, GPT) and tokenizer is not None
        model.to(pick_device(device)).eval()
        if compiled:
            compile_decoding(model, kv_dtype=kv_dtype)  # now, so no request waits for the compiler
    except Exception as e:  # the parent names it in its one-line error
        conn.send(("failed", str(e)))
        return
    outbox: list[EventMessage] = []
    jobs: dict[int, TextJob] = {}

    def post(job_id: int, event: TokenEvent) -> None:  # on the scheduler's thread
        outbox.append((job_id, event.text, event.token, event.logprobs, event.finish_reason, event.error))
        if event.finish_reason is not None:
            jobs.pop(job_id, None)

    reported = (0, 0)  # (running, waiting) as last sent

    def flush() -> None:  # on the scheduler's thread, after each pass: one message for the step's events
        nonlocal reported
        state = (scheduler.running, len(scheduler.waiting))
        times = scheduler.last_loop
        # A dropped row changes the state without an event; a prefill whose rows all ended at once has no step.
        if outbox or state != reported or times.prefill is not None or times.step is not None:
            conn.send(("events", outbox.copy(), *state, times.prefill, times.step))
            outbox.clear()
            reported = state

    scheduler = TextScheduler("engine", model, tokenizer, max_batch, sys.maxsize, None, after_step=flush,
                              kv_dtype=kv_dtype, prefill_chunk=prefill_chunk)
    tool = decoder_tool(tokenizer)  # one calculator serves every row: it reads only the row's tokens
    scheduler.start()
    conn.send(("ready",))
    try:
        while True:
            try:
                message: Any = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "submit":
                new = []
                for job_id, prompt, sampling, eos_id, top, uses_tool in message[1]:
                    job = TextJob(prompt, sampling, eos_id, top, functools.partial(post, job_id),
                                  tool if uses_tool else None)
                    jobs[job_id] = job
                    new.append(job)
                scheduler.submit(new)
            elif message[0] == "cancel":
                gone = (jobs.pop(job_id, None) for job_id in message[1])  # a job may have just finished
                scheduler.cancel([job for job in gone if job is not None])
            else:
                break
    finally:
        scheduler.stop()
        with contextlib.suppress(OSError, ValueError):  # the parent may be gone
            conn.send(("stopped",))
