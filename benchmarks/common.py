"""Shared helpers for the benchmarks: paths to ../shared/data, threads, and printing a table."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("GENLOOM_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        sys.exit(f"benchmark data {path} not found; set GENLOOM_SHARED_DATA to the shared/data folder")
    return path


def set_threads(n: int = 2) -> None:
    torch.set_num_threads(n)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A GitHub-markdown table, ready to paste into README.md."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Run client(0) .. client(clients - 1) on threads of their own until all return; the seconds that took."""
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def median_ms(run: Callable[[], object], steps: int, warmup: int = 3) -> float:
    """The median wall time of `steps` calls of run() after `warmup` untimed ones, in ms."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@contextlib.contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """owner.name set to value inside the block, restored after: genloom code that looks the name up at each call
    (a module's function or constant) runs with the replacement."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
