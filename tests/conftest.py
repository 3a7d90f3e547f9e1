"""Shared fixtures: a small text corpus, tokenized once per test into a temporary cache."""

from __future__ import annotations

import pytest
import torch

from genloom.data.text import TokenArrays, tokenize_corpus
from genloom.models.gpt import GPTConfig
from genloom.tokenizers import CharTokenizer

TEXT = "".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog; {i * 7 % 13} apples and {i % 5} pears.\n"
    for i in range(400)
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def corpus(tmp_path) -> TokenArrays:
    return tokenize_corpus([TEXT], "char", lambda d: CharTokenizer.train(d[0]), 0.1, tmp_path / "cache")


@pytest.fixture
def tiny_config(corpus: TokenArrays) -> GPTConfig:
    return GPTConfig(vocab_size=corpus.tokenizer.vocab_size, context_length=16, n_layers=2, d_model=32, n_heads=2)
