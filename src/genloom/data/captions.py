"""Captions as the fixed-length token rows that caption/image-token models read (DALL-E, the CLIP reranker).

Layout: `<s>` caption `</s>` then `<pad>` up to `text_len`. The unconditional caption of classifier-free
guidance is the EMPTY caption, `<s></s><pad>...`. Captions use a small byte-level BPE trained on the
training captions with `<pad>`, `<s>` and `</s>` (saved in every checkpoint, as every family does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.tokenizers import SPECIAL_TOKENS, BPETokenizer, SpecialIds, Tokenizer


def encode_captions(
    tokenizer: Tokenizer, captions: list[str], text_len: int, pad_id: int, bos_id: int, eos_id: int
) -> Tensor:
    """Captions -> (B, text_len) long: <s> caption </s> <pad>...; a one-line GenloomError if one is too long."""
    if isinstance(captions, str):
        raise GenloomError("captions must be a list of strings, not one string")
    out = torch.full((len(captions), text_len), pad_id, dtype=torch.long)
    for row, caption in enumerate(captions):
        ids = [bos_id, *tokenizer.encode(caption), eos_id]
        if len(ids) > text_len:
            shown = caption if len(caption) <= 60 else caption[:57] + "..."
            raise GenloomError(
                f"caption {shown!r} is {len(ids)} tokens with <s> and </s>, more than the model's {text_len}"
            )
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


@dataclass(frozen=True)
class CaptionCodec:
    """Captions <-> the model's fixed-length caption ids; `empty` is the unconditional caption."""

    tokenizer: Tokenizer
    text_len: int

    @property
    def ids(self) -> SpecialIds:
        return SpecialIds.of(self.tokenizer)

    def encode(self, captions: Sequence[str]) -> Tensor:
        """(B, text_len) long ids; a one-line GenloomError when a caption does not fit."""
        ids = self.ids
        return encode_captions(self.tokenizer, list(captions), self.text_len, ids.pad, ids.bos, ids.eos)

    def empty(self, n: int = 1) -> Tensor:
        """n copies of the empty caption <s></s><pad>..., (n, text_len)."""
        return self.encode([""] * n)


def train_caption_tokenizer(captions: Sequence[str], vocab_size: int = 512) -> BPETokenizer:
    """A byte-level BPE over `captions` with <pad>, <s>, </s>; it stops early when the captions run out of merges."""
    return BPETokenizer.train(list(captions), vocab_size, special_tokens=list(SPECIAL_TOKENS))


def caption_length(tokenizer: Tokenizer, captions: Sequence[str]) -> int:
    """Caption positions the longest caption needs: its tokens + <s> + </s>."""
    return max(len(tokenizer.encode(c)) for c in captions) + 2
