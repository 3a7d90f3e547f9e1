"""Token layout of translation examples, shared by training and generation so the two never disagree.

One byte-level BPE serves source and target (Vaswani et al. 2017, §5.1) with three special tokens:
`<pad>`, `<s>` (BOS) and `</s>` (EOS), plus task tags such as `<de-en>` as single tokens. A source is its
tokens + EOS (as fairseq encodes it, so the encoder sees where the sentence ends); the decoder reads
BOS + target and must predict target + EOS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from genloom.data.parallel import task_tag
from genloom.errors import GenloomError
from genloom.tokenizers import SPECIAL_TOKENS, BPETokenizer, SpecialIds, Tokenizer

_TAG = re.compile(r"^(<[^<>\s]+-[^<>\s]+>)")  # a leading task tag as `task_tag` writes it, e.g. "<de-en> "


def find_task_tags(sources: Iterable[str]) -> list[str]:
    """Distinct leading task tags (`<de-en>`) of the sources, in order of first appearance."""
    tags: dict[str, None] = {}
    for src in sources:
        match = _TAG.match(src)
        if match:
            tags[match.group(1)] = None
    return list(tags)


def model_task_tags(tokenizer: Tokenizer) -> list[str]:
    """The task tags a multi-task model's tokenizer was trained with (`<de-en>`, ...); [] for one direction."""
    return [t for t in tokenizer.special_tokens if _TAG.fullmatch(t)]


def direction_prefix(tokenizer: Tokenizer, src_lang: str | None, tgt_lang: str | None) -> str:
    """What to put before each source to ask for `src_lang` -> `tgt_lang`: the task tag of a multi-task model,
    nothing for a one-direction model (which translates whatever it was trained on, languages unchecked)."""
    tags = model_task_tags(tokenizer)
    if not tags:
        return ""
    served = ", ".join(t[1:-1] for t in tags)
    if src_lang is None or tgt_lang is None:
        raise GenloomError(f"this multi-task model serves {served}; pass --src-lang and --tgt-lang")
    prefix = task_tag(src_lang, tgt_lang)
    if prefix.strip() not in tags:
        raise GenloomError(f"unknown language pair {src_lang}-{tgt_lang} for this multi-task model; it serves {served}")
    return prefix


def train_translation_tokenizer(
    pairs: Sequence[tuple[str, str]], vocab_size: int, task_tags: Sequence[str] = ()
) -> BPETokenizer:
    """A shared source/target BPE with <pad>, <s>, </s> and the task tags (found in the sources, plus
    `task_tags`) as single tokens."""
    tags = list(dict.fromkeys([*task_tags, *find_task_tags(src for src, _ in pairs)]))
    texts = [text for pair in pairs for text in pair]
    return BPETokenizer.train(texts, vocab_size, special_tokens=[*SPECIAL_TOKENS, *tags])


def encode_source(tokenizer: Tokenizer, ids: SpecialIds, text: str) -> list[int]:
    return [*tokenizer.encode(text), ids.eos]


def encode_target(tokenizer: Tokenizer, text: str) -> list[int]:
    """Target tokens without BOS/EOS; `collate` adds them."""
    return tokenizer.encode(text)


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """(B, max length) long tensor, right-padded with pad_id."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[tuple[list[int], list[int]]], ids: SpecialIds) -> tuple[Tensor, Tensor, Tensor]:
    """(source ids, target ids) pairs -> src (B, S), tgt_in = BOS + target (B, T), tgt_out = target + EOS (B, T),
    all right-padded with pad."""
    src = pad_sequences([s for s, _ in examples], ids.pad)
    tgt_in = pad_sequences([[ids.bos, *t] for _, t in examples], ids.pad)
    tgt_out = pad_sequences([[*t, ids.eos] for _, t in examples], ids.pad)
    return src, tgt_in, tgt_out
