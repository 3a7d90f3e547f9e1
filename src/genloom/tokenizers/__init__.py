"""Tokenizers: character-level and byte-level BPE, behind one `Tokenizer` interface."""

from genloom.tokenizers.base import Tokenizer, find_tokenizer, load_tokenizer
from genloom.tokenizers.bpe import BPETokenizer
from genloom.tokenizers.char import CharTokenizer

__all__ = ["BPETokenizer", "CharTokenizer", "Tokenizer", "find_tokenizer", "load_tokenizer"]
