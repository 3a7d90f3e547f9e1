"""Translating sentences with a trained `Seq2SeqTransformer` or `LSTMSeq2Seq`: greedy or beam search.

`translate` runs each length-sorted batch of sources through `TranslationBatch` (translate_batch.py), the engine the
HTTP server shares between requests. The adapters here (`TransformerDecoder`, `LSTMDecoder`) run the same searches
over a fixed batch (`beam.beam_search`, `beam.greedy_search`): the reference that the engine is tested against, and,
re-running the decoder over the whole prefix at every step (`recompute`), the measure of what the KV cache saves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.translation import encode_source, pad_sequences
from genloom.errors import GenloomError
from genloom.generate.beam import IncrementalDecoder, beam_search, greedy_search
from genloom.generate.translate_batch import (
    TranslationBatch,
    check_source_lengths,
    max_target_lengths,
)
from genloom.models.lstm import LSTMSeq2Seq, State
from genloom.models.seq2seq import Seq2SeqTransformer
from genloom.tokenizers import SpecialIds, Tokenizer

# Beam search only ever continues a hypothesis of the same input, and every input's rows share one memory,
# so the adapters never reorder the memory or its padding mask: rows i and indices[i] hold the same one.


class TransformerDecoder:
    """Incremental decoding with the KV caches (self-attention) and projected memory (cross-attention).

    recompute=True re-runs the decoder over the whole prefix at every step instead, without any cache: the
    same numbers, for measuring what the cache saves.
    """

    def __init__(
        self, model: Seq2SeqTransformer, memory: Tensor, src_key_valid: Tensor, max_len: int, recompute: bool = False
    ) -> None:
        self.model, self.memory, self.src_key_valid = model, memory, src_key_valid
        self.cache = None if recompute else model.make_kv_caches(memory.shape[0], max_len)
        self.prefix: Tensor | None = None  # (N, t) for recompute

    def step(self, tokens: Tensor) -> Tensor:
        tokens = tokens.to(self.memory.device)[:, None]  # (N, 1)
        if self.cache is not None:
            logits = self.model.decode(tokens, self.memory, self.src_key_valid, self.cache)[:, -1]
        else:
            self.prefix = tokens if self.prefix is None else torch.cat([self.prefix, tokens], dim=1)
            logits = self.model.decode(self.prefix, self.memory, self.src_key_valid)[:, -1]
        return F.log_softmax(logits.float(), dim=-1)  # (N, V)

    def reorder(self, indices: Tensor) -> None:
        indices = indices.to(self.memory.device)
        if self.cache is not None:
            self.cache.reorder(indices)
        elif self.prefix is not None:
            self.prefix = self.prefix.index_select(0, indices)


class LSTMDecoder:
    """Incremental decoding with the LSTM's (h, c) state."""

    def __init__(self, model: LSTMSeq2Seq, memory: Tensor, src_key_valid: Tensor) -> None:
        self.model, self.memory, self.src_key_valid = model, memory, src_key_valid
        self.keys = model.project_keys(memory)  # the attention's keys, once per batch rather than per step
        self.state: State | None = None

    def step(self, tokens: Tensor) -> Tensor:
        tokens = tokens.to(self.memory.device)[:, None]  # (N, 1)
        logits, self.state = self.model.decode_step(tokens, self.state, self.memory, self.src_key_valid, self.keys)
        return F.log_softmax(logits.float(), dim=-1)  # (N, V)

    def reorder(self, indices: Tensor) -> None:
        if self.state is not None:
            indices = indices.to(self.memory.device)
            h, c = self.state  # each (L, N, hidden)
            self.state = (h.index_select(1, indices), c.index_select(1, indices))


def make_decoder(model: nn.Module, memory: Tensor, src_key_valid: Tensor, max_len: int, recompute: bool = False
                 ) -> IncrementalDecoder:
    if isinstance(model, Seq2SeqTransformer):
        return TransformerDecoder(model, memory, src_key_valid, max_len, recompute)
    if isinstance(model, LSTMSeq2Seq):
        if recompute:
            raise GenloomError("recompute applies only to the Transformer (the LSTM has no KV cache)")
        return LSTMDecoder(model, memory, src_key_valid)
    raise GenloomError(f"cannot translate with a {type(model).__name__}; need a seq2seq or lstm model")


def check_sources(model: nn.Module, tokenizer: Tokenizer, sources: Sequence[str]) -> None:
    """A one-line GenloomError when a source cannot be translated (too long, or not encodable), before any work."""
    ids = SpecialIds.of(tokenizer)
    check_source_lengths(model, [encode_source(tokenizer, ids, text) for text in sources])


@torch.no_grad()
def translate_fixed_batch(
    model: nn.Module,
    sources: Sequence[Sequence[int]],
    ids: SpecialIds,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    recompute: bool = False,
) -> list[list[int]]:
    """Target ids (no BOS/EOS) for encoded sources decoded as one fixed batch: the searches of beam.py over the
    model's incremental decoder, beam_size rows per source from start to end. The reference `TranslationBatch` is
    tested against; recompute=True re-runs the Transformer's decoder over the whole prefix at every step without
    any cache (for measuring what the cache saves). The model must be in eval mode."""
    if not isinstance(model, Seq2SeqTransformer | LSTMSeq2Seq):
        raise GenloomError(f"cannot translate with a {type(model).__name__}; need a seq2seq or lstm model")
    if beam_size < 1:
        raise GenloomError(f"beam size ({beam_size}) must be at least 1")
    max_lengths = max_target_lengths(model, sources, max_len_a, max_len_b)
    device = next(model.parameters()).device
    src = pad_sequences(sources, ids.pad).to(device)  # (B, S)
    src_key_valid = model.source_key_valid(src)
    memory = model.encode(src, src_key_valid)  # (B, S, d)
    if beam_size > 1:
        memory = memory.repeat_interleave(beam_size, dim=0)  # (B*k, S, d): row b*k + j is input b's beam j
        src_key_valid = src_key_valid.repeat_interleave(beam_size, dim=0)
    decoder = make_decoder(model, memory, src_key_valid, max(max_lengths), recompute)
    if beam_size == 1:
        return greedy_search(decoder, len(sources), ids.bos, ids.eos, max_lengths)
    hyps = beam_search(decoder, len(sources), beam_size, ids.bos, ids.eos, max_lengths, alpha)
    return [h.tokens for h in hyps]


def translate(
    model: nn.Module,
    tokenizer: Tokenizer,
    sources: Sequence[str],
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    batch_size: int = 32,
    recompute: bool = False,
) -> list[str]:
    """Translations of `sources`, in input order. beam_size 1 is greedy decoding; alpha is GNMT's length
    penalty. Sources are batched by length, so batch_size changes speed, not results (up to float noise).

    Each batch runs as one request of a `TranslationBatch` (a source's hypotheses leave it as its search ends).
    recompute=True runs the reference instead: the same batches with no KV cache (`translate_fixed_batch`)."""
    if batch_size < 1:
        raise GenloomError(f"batch size ({batch_size}) must be at least 1")
    if beam_size < 1:
        raise GenloomError(f"beam size ({beam_size}) must be at least 1")
    ids = SpecialIds.of(tokenizer)
    encoded = [encode_source(tokenizer, ids, text) for text in sources]
    check_source_lengths(model, encoded)  # before any work, not after the shorter batches
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[str] = [""] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            chunk_sources = [encoded[i] for i in chunk]
            if recompute:
                targets = translate_fixed_batch(model, chunk_sources, ids, beam_size, alpha, max_len_a, max_len_b,
                                                recompute=True)
            else:
                batch = TranslationBatch(model, len(chunk), ids, alpha, max_len_a, max_len_b)
                group = batch.add(chunk_sources, beam_size)
                while not group.done:
                    batch.step()
                targets = group.sample
            for i, target in zip(chunk, targets, strict=True):
                results[i] = tokenizer.decode(target)
    finally:
        model.train(was_training)
    return results


def translate_stream(
    model: nn.Module,
    tokenizer: Tokenizer,
    sources: Iterable[str],
    window: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    batch_size: int = 32,
) -> Iterator[str]:
    """Translations of `sources` in input order, produced as they are ready: `sources` is read lazily, `window`
    at a time (each window length-sorted into batches), so a long or endless input (stdin) starts printing
    after its first window. A blank source gives a blank translation, keeping output line n = input line n."""
    if window < 1:
        raise GenloomError(f"window ({window}) must be at least 1")
    iterator = iter(sources)
    while chunk := list(itertools.islice(iterator, window)):
        texts = [text for text in chunk if text.strip()]
        done = iter(translate(model, tokenizer, texts, beam_size, alpha, batch_size=batch_size) if texts else [])
        yield from (next(done) if text.strip() else "" for text in chunk)
