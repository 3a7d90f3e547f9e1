"""The `genloom` command line (console script `genloom = genloom.cli:main`)."""

from genloom.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
