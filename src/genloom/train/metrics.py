"""Metrics appended to `metrics.jsonl` in the run directory: one JSON object per line.

A crash or a full disk can leave the last line half-written; readers drop such a torn last line with a
warning (the rows before it are intact, and a resumed run rewrites everything after its checkpoint). A bad
line anywhere else means the file was edited or damaged, and is a one-line error naming it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from genloom.errors import GenloomError
from genloom.outputs import write_text_atomically

METRICS_FILE = "metrics.jsonl"


def _parse(path: Path) -> list[dict[str, Any]]:
    """The records of `path`, without a torn last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise GenloomError(f"cannot read {path}: {e.strerror}") from None
    lines = text.splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if n == len(lines):
                print(f"genloom: warning: {path}:{n}: dropped a torn last line (an interrupted write)",
                      file=sys.stderr)
                break
            raise GenloomError(f"{path}:{n}: not a JSON object; the metrics log is damaged") from None
        records.append(record)
    return records


class MetricsLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (and a torn last line): a resumed run rewrites them, and must not log them
        twice."""
        if not self.path.is_file():
            return
        kept = [r for r in _parse(self.path) if r.get("step", 0) <= step]
        write_text_atomically(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return _parse(path)
