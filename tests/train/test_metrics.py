"""metrics.jsonl: a torn last line (an interrupted write) is dropped with a warning; other damage is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from genloom.errors import GenloomError
from genloom.train.metrics import METRICS_FILE, MetricsLog, read_metrics


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.4}\n{"step": 3, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]
    assert f"{tmp_path / METRICS_FILE}:3: dropped a torn last line" in capsys.readouterr().err
    log = MetricsLog(tmp_path)
    log.truncate_after(1)  # --resume from step 1: the torn line goes, and later rows after it
    log.write({"step": 2, "loss": 2.0})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}]


def test_a_damaged_line_before_the_last_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(GenloomError, match=rf"{METRICS_FILE}:2: not a JSON object"):
        read_metrics(tmp_path)
