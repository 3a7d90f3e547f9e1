"""Stopping a training run part-way, as a user's Ctrl-C or a killed process would, for the resume tests."""

from __future__ import annotations

from typing import Any

from genloom.train.task import Task


class Killed(BaseException):
    """A stand-in for `kill -9`: nothing in genloom catches it, so the run stops where it is."""


def interrupt_at(task: Task, step: int, error: type[BaseException] = KeyboardInterrupt) -> Task:
    """`task`, raising `error` when the trainer asks for the batches of step `step` (1-based)."""
    batches = task.micro_batches
    calls = 0

    def micro_batches(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == step:
            raise error
        return batches(*args, **kwargs)

    task.micro_batches = micro_batches  # type: ignore[method-assign]
    return task
