"""Step-level batching of a model's whole-result requests (images, translations): one step at a time over every
live request.

The loop is `TextScheduler`'s for requests that return one result, for any engine whose requests join and leave
between steps (`StepBatch`): a diffusion model's `DiffusionBatch` takes one denoiser pass a step, a token model's
`ImageTokenBatch` one image token, a translation model's `TranslationBatch` one target token of every hypothesis.
Each turn admits waiting requests while their items (images, texts) fit the batch (first come, first served: a
request that does not fit yet is not overtaken, so a large one is never starved), drops requests whose client is
gone (their rows free at once), and runs one step, where every request is at its own step with its own settings. A
request that arrives while others run starts at the next step instead of waiting for their whole call, and requests
with different settings (steps, guidance, temperatures, negative prompts, beam sizes) share steps. What to add and
what to return is the model's (`RequestHandler`, serve/models.py); this module knows no images, texts or PNGs.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from genloom.serve.metrics import ServerMetrics
from genloom.serve.scheduler import CallJob, CallQueue

log = logging.getLogger("genloom.serve")


class Group(Protocol):
    """One request's rows in a `StepBatch` (a `LatentGroup`, a `TokenGroup`, a `TranslationGroup`)."""

    @property
    def sample(self) -> Any:
        """The request's result once it has finished: final latents, image tokens, or target ids per text."""
        ...


class StepBatch(Protocol):
    """An engine whose requests join and leave between steps (`DiffusionBatch`, `ImageTokenBatch`,
    `TranslationBatch`)."""

    capacity: int  # items (images, texts) a step holds

    @property
    def rows(self) -> int:
        """Items being run: images being sampled, texts being translated."""
        ...

    def step(self) -> list[Any]:
        """One step of every live group; the groups that finished with it."""
        ...

    def remove(self, group: Any) -> None: ...


class RequestHandler(Protocol):
    def start(self, batch: Any, payload: Any) -> Group:
        """Add the request to `batch` (its captions, seeds, sources and settings); errors go to this request alone."""
        ...

    def finish(self, payload: Any, sample: Any) -> Any:
        """The request's result from its finished group's `sample`."""
        ...


class StepScheduler(CallQueue):
    def __init__(self, name: str, batch: StepBatch, handler: RequestHandler, max_queue: int, metrics: ServerMetrics
                 ) -> None:
        self.batch, self.handler = batch, handler
        self.live: dict[Group, CallJob] = {}
        super().__init__(name, max_queue, metrics)

    @property
    def running(self) -> int:
        return self.batch.rows

    def _run(self) -> None:
        while True:
            with self.wake:
                while not self.stopped and not self.waiting and not self.live:
                    self.wake.wait()
                if self.stopped:
                    return
                admitted = self._take()
                self.metrics.queue_depth.labels(self.name).set(len(self.waiting))
            self._drop_cancelled()
            for job in admitted:
                try:
                    self.live[self.handler.start(self.batch, job.payload)] = job
                except Exception as e:  # a request the model refuses fails alone
                    job.deliver(None, e)
            self.metrics.running.labels(self.name).set(self.batch.rows)
            try:
                finished = self.batch.step()
            except Exception as e:  # a model failure must not kill the server: fail the requests it touched
                log.exception("a batched step failed")
                for group, job in self.live.items():
                    self.batch.remove(group)
                    job.deliver(None, e)
                self.live.clear()
                continue
            for group in finished:
                job = self.live.pop(group)
                try:
                    result = self.handler.finish(job.payload, group.sample)
                except Exception as e:
                    log.exception("making a result failed")
                    job.deliver(None, e)
                else:
                    job.deliver(result, None)
            self.metrics.running.labels(self.name).set(self.batch.rows)

    def _take(self) -> list[CallJob]:
        """Waiting jobs, oldest first, while their rows fit beside the running ones (called holding `wake`)."""
        taken: list[CallJob] = []
        rows = self.batch.rows
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if (rows or taken) and rows + job.items > self.batch.capacity:  # items: the images or texts it runs
                break
            taken.append(self.waiting.popleft())
            rows += job.items
        return taken

    def _drop_cancelled(self) -> None:
        for group, job in list(self.live.items()):
            if job.cancelled:
                self.batch.remove(group)
                del self.live[group]
