"""Calling `genloom.cli.main` in-process from the CLI tests, and checking its one-line errors."""

from __future__ import annotations

import pytest

from genloom.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `genloom ARGV`; output printed before the call is dropped."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def cli_ok(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    return out


def one_error_line(err: str) -> str:
    """The single line a user error prints: no traceback, exactly one line, from `genloom`."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("genloom"), err
    return lines[0]


def cli_fails(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    """The one error line of `genloom ARGV`, which must exit 1 (a user error, not a crash or a usage error)."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 1, (out, err)
    line = one_error_line(err)
    assert line.startswith("genloom: error: ")
    return line
