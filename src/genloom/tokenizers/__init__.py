"""Tokenizers: character-level and byte-level BPE, behind one `Tokenizer` interface."""

from genloom.tokenizers.base import Tokenizer, check_tokenizer_fits, find_tokenizer, load_tokenizer
from genloom.tokenizers.bpe import BPETokenizer
from genloom.tokenizers.char import CharTokenizer
from genloom.tokenizers.special import SPECIAL_TOKENS, SpecialIds

__all__ = [
    "SPECIAL_TOKENS",
    "BPETokenizer",
    "CharTokenizer",
    "SpecialIds",
    "Tokenizer",
    "check_tokenizer_fits",
    "find_tokenizer",
    "load_tokenizer",
]
