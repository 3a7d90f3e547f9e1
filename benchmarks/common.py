"""Shared helpers for the benchmarks: paths to ../shared/data, threads, and printing a table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
