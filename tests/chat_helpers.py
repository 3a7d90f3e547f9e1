"""A base model for the chat tests: a random-weight character GPT that can read every built-in conversation."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from genloom.checkpoint import save_checkpoint
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import CharTokenizer

BASE_CONTEXT = 96


def printable_chars() -> CharTokenizer:
    """Every printable ASCII character but tabs and the rarer line breaks."""
    return CharTokenizer(sorted(set(string.printable) - set("\t\r\x0b\x0c")))


def make_base(directory: Path, context: int = BASE_CONTEXT) -> Path:
    chars = printable_chars()
    config = GPTConfig(vocab_size=chars.vocab_size, context_length=context, n_layers=1, d_model=32, n_heads=2)
    torch.manual_seed(0)
    save_checkpoint(directory, GPT(config), "gpt", config, chars)
    return directory
