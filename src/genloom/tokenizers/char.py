"""Character-level tokenizer: one id per distinct character of the training text (char-rnn, nanoGPT).

Special tokens (chat markers, say) get the ids after the characters and encode to one id each wherever their
text appears; a character vocabulary trained before them keeps every id it had.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from genloom.errors import GenloomError, UnencodableTextError
from genloom.tokenizers.chat_template import ChatFormat

CHAR_FILE = "char_tokenizer.json"


class CharTokenizer:
    def __init__(self, chars: list[str], special_tokens: Sequence[str] = ()) -> None:
        if not chars:
            raise GenloomError("cannot build a character vocabulary from empty text")
        self.chars = list(chars)
        self.specials: list[str] = []
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._special_pattern: re.Pattern[str] | None = None
        self.chat_format: ChatFormat | None = None  # a chat model's template (see chat_template.py)
        self.add_special_tokens(special_tokens)

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def special_tokens(self) -> list[str]:
        return list(self.specials)

    def token_id(self, name: str) -> int:
        if name not in self.specials:
            raise GenloomError(f"the tokenizer has no token {name!r}")
        return len(self.chars) + self.specials.index(name)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise GenloomError(f"special tokens must be non-empty strings, got {token!r}")
            if token not in self.specials:
                self.specials.append(token)
        # Longest first, so a special token that contains another one wins.
        ordered = sorted(self.specials, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        return [self.token_id(t) for t in tokens]

    def _encode_chars(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise UnencodableTextError(f"character {e.args[0]!r} is not in this model's vocabulary") from None

    def encode(self, text: str) -> list[int]:
        if self._special_pattern is None:
            return self._encode_chars(text)
        ids: list[int] = []
        start = 0
        for match in self._special_pattern.finditer(text):
            ids += self._encode_chars(text[start : match.start()])
            ids.append(self.token_id(match.group()))
            start = match.end()
        return ids + self._encode_chars(text[start:])

    def decode(self, ids: list[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def save(self, directory: Path) -> None:
        record = {"type": "char", "chars": self.chars, "special_tokens": self.specials}
        (directory / CHAR_FILE).write_text(json.dumps(record, ensure_ascii=False))
        if self.chat_format is not None:
            self.chat_format.save(directory)

    @classmethod
    def load(cls, directory: Path) -> CharTokenizer:
        """The vocabulary in `directory`; a one-line GenloomError for a malformed file."""
        path = directory / CHAR_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GenloomError(f"{path} is not a valid character vocabulary: {e}") from None
        chars = data.get("chars") if isinstance(data, dict) else None
        specials = data.get("special_tokens", []) if isinstance(data, dict) else None
        if (not isinstance(chars, list) or not chars or not all(isinstance(c, str) and len(c) == 1 for c in chars)
                or len(set(chars)) != len(chars)):
            raise GenloomError(f"{path} is not a valid character vocabulary: \"chars\" must list distinct "
                               "single characters")
        if not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials):
            raise GenloomError(f"{path} is not a valid character vocabulary: \"special_tokens\" must list strings")
        return cls(chars, specials)
