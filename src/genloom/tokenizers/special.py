"""The special tokens of sequence layouts with padding and boundaries (translation, captions)."""

from __future__ import annotations

from dataclasses import dataclass

from genloom.tokenizers.base import Tokenizer

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)


@dataclass(frozen=True)
class SpecialIds:
    """The ids of `<pad>`, `<s>` and `</s>` in a tokenizer that has them."""

    pad: int
    bos: int
    eos: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        """A one-line GenloomError (from `token_id`) when the tokenizer lacks one of them."""
        return cls(*(tokenizer.token_id(t) for t in SPECIAL_TOKENS))
