"""Where commands write: the publishing renames hold Ctrl-C and SIGTERM until they are done."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from genloom.outputs import interruptions_deferred


class Stopped(Exception):
    """What the test's SIGTERM handler raises (genloom's CLI raises its Terminated)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stopped


@pytest.fixture
def sigterm_raises_stopped() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _stop)
    yield
    signal.signal(signal.SIGTERM, previous)


def _sigterm_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # bytecodes: Python runs a handler between them, in the main thread
        pass


@pytest.mark.usefixtures("sigterm_raises_stopped")
def test_a_signal_inside_the_block_is_delivered_when_it_ends() -> None:
    done = []
    with pytest.raises(Stopped), interruptions_deferred():
        _sigterm_self()
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGTERM) is _stop
    with pytest.raises(Stopped):  # outside the block, a signal stops the program where it is
        _sigterm_self()


@pytest.mark.usefixtures("sigterm_raises_stopped")
def test_a_block_without_a_signal_restores_the_handlers_and_raises_nothing() -> None:
    sigint = signal.getsignal(signal.SIGINT)
    with interruptions_deferred():
        pass
    assert signal.getsignal(signal.SIGTERM) is _stop and signal.getsignal(signal.SIGINT) is sigint


def test_outside_the_main_thread_it_changes_nothing() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with interruptions_deferred():  # signal.signal would raise ValueError here
                pass
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors == []
