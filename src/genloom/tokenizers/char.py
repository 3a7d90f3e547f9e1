"""Character-level tokenizer: one id per distinct character of the training text (char-rnn, nanoGPT)."""

from __future__ import annotations

import json
from pathlib import Path

from genloom.errors import GenloomError

CHAR_FILE = "char_tokenizer.json"


class CharTokenizer:
    def __init__(self, chars: list[str]) -> None:
        if not chars:
            raise GenloomError("cannot build a character vocabulary from empty text")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eos_id(self) -> int | None:
        return None

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise GenloomError(f"character {e.args[0]!r} is not in this model's vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, directory: Path) -> None:
        (directory / CHAR_FILE).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        data = json.loads((directory / CHAR_FILE).read_text())
        return cls(list(data["chars"]))
