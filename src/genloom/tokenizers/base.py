"""The tokenizer interface every model family uses, and loading a tokenizer saved in a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    """Text <-> token ids. Saved into every checkpoint directory so a model is never separated from it."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None:
        """End-of-text id generation may stop at, if the vocabulary has one."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


def find_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer `directory` holds (genloom char vocabulary, HF tokenizer.json, or GPT-2 files), or None."""
    from genloom.tokenizers.bpe import BPETokenizer
    from genloom.tokenizers.char import CHAR_FILE, CharTokenizer

    if (directory / CHAR_FILE).is_file():
        return CharTokenizer.load(directory)
    if (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file():
        return BPETokenizer.load(directory)
    return None


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load whichever tokenizer `directory` holds, or a one-line error when it holds none."""
    from genloom.errors import GenloomError
    from genloom.tokenizers.char import CHAR_FILE

    tokenizer = find_tokenizer(directory)
    if tokenizer is None:
        raise GenloomError(f"{directory} holds no tokenizer ({CHAR_FILE}, tokenizer.json or vocab.json + merges.txt)")
    return tokenizer
