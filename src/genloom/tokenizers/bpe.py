"""Byte-level BPE (GPT-2's scheme) on the Hugging Face `tokenizers` library.

Trained on the user's text with a chosen vocabulary size, or loaded from GPT-2's `vocab.json` +
`merges.txt` or a `tokenizer.json`. Byte-level means every string is encodable: no unknown token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from genloom.errors import GenloomError
from genloom.tokenizers.chat_template import ChatFormat

EOS_TOKEN = "<|endoftext|>"


class BPETokenizer:
    def __init__(self, tokenizer: HFTokenizer) -> None:
        self.tokenizer = tokenizer
        self._eos_id = tokenizer.token_to_id(EOS_TOKEN)
        self.chat_format: ChatFormat | None = None  # a chat model's template (see chat_template.py)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = ()
    ) -> BPETokenizer:
        """Learn merges from `texts`. `special_tokens` (e.g. `<pad>`, `<s>`, `</s>`, task tags like `<de-en>`)
        get ids right after `<|endoftext|>`, which stays id 0, and always encode to one id each."""
        specials = [EOS_TOKEN, *dict.fromkeys(t for t in special_tokens if t != EOS_TOKEN)]
        if any(not t for t in specials):
            raise GenloomError("special tokens must be non-empty strings")
        # 256 byte symbols + the special tokens is the smallest vocabulary that can encode anything.
        if vocab_size < 256 + len(specials):
            raise GenloomError(
                f"BPE vocab size ({vocab_size}) must be at least {256 + len(specials)} "
                f"(256 bytes + {len(specials)} special tokens)"
            )
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, directory: Path) -> BPETokenizer:
        """Load `tokenizer.json`, or GPT-2's `vocab.json` + `merges.txt`."""
        try:
            if (directory / "tokenizer.json").is_file():
                return cls(HFTokenizer.from_file(str(directory / "tokenizer.json")))
            vocab, merges = directory / "vocab.json", directory / "merges.txt"
            if not (vocab.is_file() and merges.is_file()):
                raise GenloomError(f"{directory} has neither tokenizer.json nor vocab.json + merges.txt")
            tok = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as e:  # the Rust library raises plain Exceptions for malformed files
            if isinstance(e, GenloomError):
                raise
            raise GenloomError(f"cannot read the tokenizer in {directory}: {e}") from None
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        # GPT-2's files list <|endoftext|> as an ordinary vocabulary entry; register it as special so that
        # it encodes to one id, as it does in the trained tokenizer and in GPT-2's own tokenizer.
        if tok.token_to_id(EOS_TOKEN) is not None:
            tok.add_special_tokens([EOS_TOKEN])
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def eos_id(self) -> int | None:
        return self._eos_id

    @property
    def special_tokens(self) -> list[str]:
        """Tokens that always encode to one id (`<|endoftext|>`, `<pad>`, task tags, ...), by id."""
        added = self.tokenizer.get_added_tokens_decoder()
        return [added[i].content for i in sorted(added) if added[i].special]

    def token_id(self, name: str) -> int:
        """The id of a single-token string such as `<pad>` or `<de-en>`; GenloomError if it is not one token."""
        token_id = self.tokenizer.token_to_id(name)
        if token_id is None:
            raise GenloomError(f"the tokenizer has no token {name!r}")
        return int(token_id)

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Append the tokens it lacks as special tokens (after every existing id); the ids of all `tokens`."""
        if any(not isinstance(t, str) or not t for t in tokens):
            raise GenloomError("special tokens must be non-empty strings")
        self.tokenizer.add_special_tokens(list(tokens))
        self._eos_id = self.tokenizer.token_to_id(EOS_TOKEN)
        return [self.token_id(t) for t in tokens]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def save(self, directory: Path) -> None:
        self.tokenizer.save(str(directory / "tokenizer.json"))
        if self.chat_format is not None:
            self.chat_format.save(directory)
