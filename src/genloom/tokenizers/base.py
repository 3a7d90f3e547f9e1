"""The tokenizer interface every model family uses, and loading a tokenizer saved in a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from genloom.errors import GenloomError

if TYPE_CHECKING:
    from genloom.tokenizers.chat_template import ChatFormat


class Tokenizer(Protocol):
    """Text <-> token ids. Saved into every checkpoint directory so a model is never separated from it.

    Special tokens (`<pad>`, `<s>`, task tags, chat markers such as `<|im_start|>`) always encode to one id
    each, wherever they appear in a text; any tokenizer can be given more of them (`add_special_tokens`). A chat
    model's tokenizer carries its `chat_format` (the template and its tokens), saved and loaded with it.
    """

    chat_format: ChatFormat | None

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int | None:
        """End-of-text id generation may stop at, if the vocabulary has one."""
        ...

    @property
    def special_tokens(self) -> list[str]:
        """The special tokens, in id order."""
        ...

    def token_id(self, name: str) -> int:
        """The id of special token `name`; a GenloomError when the tokenizer has no such token."""
        ...

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Append the `tokens` it does not have yet to the vocabulary; the ids of all `tokens`."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


def find_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer `directory` holds (genloom char vocabulary, HF tokenizer.json, or GPT-2 files), or None;
    with the chat format saved beside it, checked against its special tokens."""
    from genloom.tokenizers.bpe import BPETokenizer
    from genloom.tokenizers.char import CHAR_FILE, CharTokenizer
    from genloom.tokenizers.chat_template import ChatFormat

    tokenizer: Tokenizer
    if (directory / CHAR_FILE).is_file():
        tokenizer = CharTokenizer.load(directory)
    elif (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file():
        tokenizer = BPETokenizer.load(directory)
    else:
        return None
    chat_format = ChatFormat.load(directory)
    if chat_format is not None:
        chat_format.check_tokenizer(tokenizer, str(directory))
    tokenizer.chat_format = chat_format
    return tokenizer


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load whichever tokenizer `directory` holds, or a one-line error when it holds none."""
    from genloom.tokenizers.char import CHAR_FILE

    tokenizer = find_tokenizer(directory)
    if tokenizer is None:
        raise GenloomError(f"{directory} holds no tokenizer ({CHAR_FILE}, tokenizer.json or vocab.json + merges.txt)")
    return tokenizer


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int, where: str, exact: bool = True) -> None:
    """A one-line GenloomError unless `tokenizer`'s ids fit a model with `vocab_size` embedding rows: the same
    number (`exact`, as every genloom checkpoint is made), or at most that many (a Hugging Face model may pad
    its vocabulary; generation then never samples the extra rows)."""
    n = tokenizer.vocab_size
    if n > vocab_size or (exact and n != vocab_size):
        raise GenloomError(f"{where}: the tokenizer has {n} tokens but the model's vocabulary has {vocab_size}; "
                           "the tokenizer files do not belong to these weights")
