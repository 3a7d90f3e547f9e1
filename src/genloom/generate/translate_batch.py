"""Step-level batching of translation requests: inputs join and leave the running search between decoding steps.

`TranslationBatch` is for an encoder–decoder what `DecodeBatch` (generate/batch.py) is for a GPT. Each request is a
group of source sentences with its own beam size; its sources are encoded when it joins, and each source's live
hypotheses own rows of the decoder state. One step decodes every row once, whichever request and step it is at:

- a row's target position and self-attention columns are its own (`SlotKVCache`s with a key mask, as text rows
  decode), and its memory is its own source's (cross-attention over a per-row memory with a source mask), so a
  request translates as it would alone;
- every source's search (`BeamInput`, `GreedyInput`: beam.py) then picks its next hypotheses and says which row each
  continues; one `select` over the state re-ranks the beams, drops the rows of searches that ended, and keeps the
  rows packed 0..n-1. A source that ends frees its rows at once, before the rest of its request;
- a request that arrives while others are decoding starts at the next step, instead of waiting for their whole
  search; requests with different beam sizes share steps.

`translate` (generate/translate.py) runs one group to its end; the HTTP server's `StepScheduler` feeds requests as
they come. The decoder state of each family sits behind `RowDecoder`: `TransformerRows` (KV and cross-attention
caches in slots) and `LSTMRows` (recurrent state, memory and attention keys per row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.translation import pad_sequences
from genloom.errors import GenloomError
from genloom.generate.batch import SlotKVCache, prepare_step
from genloom.generate.beam import Search, make_search
from genloom.models.lstm import LSTMSeq2Seq
from genloom.models.seq2seq import Seq2SeqTransformer
from genloom.nn import CrossKVCache
from genloom.tokenizers import SpecialIds


class RowDecoder(Protocol):
    """A translation model's decoder state for `rows` hypotheses, each with its own source."""

    rows: int

    def join(self, src: Tensor) -> None:
        """Encode sources src (m, S) (right-padded) and add m rows, one per source, about to read BOS."""
        ...

    def step(self, tokens: Tensor) -> Tensor:
        """tokens (rows,): each row's last token -> next-token log-probabilities (rows, V), float, on the CPU."""
        ...

    def select(self, rows: Tensor) -> None:
        """Keep rows `rows` (m,), in that order: row i continues row rows[i] (a beam re-ranked); the others end."""
        ...


def check_source_lengths(model: nn.Module, sources: Sequence[Sequence[int]]) -> int | None:
    """The model's max length (None: unlimited); GenloomError if a source is longer."""
    limit: int | None = getattr(model.config, "max_len", None)
    longest = max((len(s) for s in sources), default=0)
    if limit is not None and longest > limit:
        raise GenloomError(f"a source of {longest} tokens (with </s>) exceeds the model's max_len {limit}")
    return limit


def max_target_lengths(model: nn.Module, sources: Sequence[Sequence[int]], max_len_a: float, max_len_b: int
                       ) -> list[int]:
    """Each source's longest target, EOS included: max_len_a * |source| + max_len_b (fairseq's rule), within the
    model's max_len."""
    limit = check_source_lengths(model, sources)
    lengths = [max(1, math.floor(max_len_a * (len(s) - 1) + max_len_b)) for s in sources]
    return lengths if limit is None else [min(n, limit) for n in lengths]


@dataclass(eq=False)
class TranslationGroup:
    """One request's sources in a `TranslationBatch`: one search each, in input order."""

    searches: list[Search]

    @property
    def done(self) -> bool:
        return all(s.done for s in self.searches)

    @property
    def rows(self) -> int:
        """Decoder rows held now: the live hypotheses of its searches."""
        return sum(len(s.tokens) for s in self.searches)

    @property
    def running(self) -> int:
        """Sources still being searched."""
        return sum(not s.done for s in self.searches)

    @property
    def sample(self) -> list[list[int]]:
        """Each source's best target ids (no BOS or EOS), once done."""
        return [s.result for s in self.searches]


class TranslationBatch:
    """Requests of translation (`add`: a group of sources and a beam size) that decode one token a step together.

        batch = TranslationBatch(model, capacity=16, ids=SpecialIds.of(tokenizer))
        group = batch.add(encoded_sources, beam_size=4)
        while not group.done:
            batch.step()  # the groups that finished with this step
        group.sample      # target ids per source

    capacity: the sources a step holds (`rows` counts the sources still being searched: one that has ended frees its
    place before the rest of its request); the scheduler admits requests while theirs fit, and a larger one runs
    alone. The model must be in eval mode.
    """

    def __init__(self, model: nn.Module, capacity: int, ids: SpecialIds, alpha: float = 0.6,
                 max_len_a: float = 1.2, max_len_b: int = 10) -> None:
        if capacity < 1:
            raise GenloomError(f"batch capacity ({capacity}) must be at least 1")
        self.model, self.capacity, self.ids = model, capacity, ids
        self.alpha, self.max_len_a, self.max_len_b = alpha, max_len_a, max_len_b
        self.decoder = row_decoder(model)
        self.groups: list[TranslationGroup] = []  # live, in row order

    @property
    def rows(self) -> int:
        """Sources being translated (their searches not yet ended)."""
        return sum(g.running for g in self.groups)

    def add(self, sources: Sequence[Sequence[int]], beam_size: int) -> TranslationGroup:
        """Encode `sources` (ids ending in EOS) and start their searches at the next step."""
        if not sources:
            raise GenloomError("a translation request needs at least one source")
        if beam_size < 1:
            raise GenloomError(f"beam size ({beam_size}) must be at least 1")
        if any(not s for s in sources):
            raise GenloomError("every source needs at least one token")
        lengths = max_target_lengths(self.model, sources, self.max_len_a, self.max_len_b)
        group = TranslationGroup([make_search(beam_size, self.ids.bos, self.ids.eos, n, self.alpha) for n in lengths])
        with torch.inference_mode():
            self.decoder.join(pad_sequences(sources, self.ids.pad))
        self.groups.append(group)
        return group

    def step(self) -> list[TranslationGroup]:
        """One token for every live hypothesis; the groups whose searches have all ended with this step."""
        if not self.groups:
            return []
        searches = [s for g in self.groups for s in g.searches if s.tokens]
        tokens = torch.tensor([t for s in searches for t in s.tokens])
        try:
            with torch.inference_mode():
                log_probs = self.decoder.step(tokens)  # (rows, V)
                keep: list[int] = []
                first = 0
                for search in searches:
                    live = len(search.tokens)
                    keep.extend(first + o for o in search.advance(log_probs[first : first + live]))
                    first += live
                self.decoder.select(torch.tensor(keep, dtype=torch.long))
        except BaseException:
            # The searches and the decoder's rows may no longer match: every request ends here (the caller fails
            # them), and the batch starts empty rather than decode one request with another's state.
            self.groups = []
            with torch.inference_mode():
                self.decoder.select(torch.zeros(0, dtype=torch.long))
            raise
        finished = [g for g in self.groups if g.done]
        self.groups = [g for g in self.groups if not g.done]
        return finished

    def remove(self, group: TranslationGroup) -> None:
        """End `group` now (its client is gone): its rows free at once. Removing a group that has left is a no-op."""
        if group not in self.groups:
            return
        keep: list[int] = []
        first = 0
        for g in self.groups:
            if g is not group:
                keep.extend(range(first, first + g.rows))
            first += g.rows
        with torch.inference_mode():
            self.decoder.select(torch.tensor(keep, dtype=torch.long))
        self.groups.remove(group)


def row_decoder(model: nn.Module) -> RowDecoder:
    if isinstance(model, Seq2SeqTransformer):
        return TransformerRows(model)
    if isinstance(model, LSTMSeq2Seq):
        return LSTMRows(model)
    raise GenloomError(f"cannot translate with a {type(model).__name__}; need a seq2seq or lstm model")


class TransformerRows:
    """A `Seq2SeqTransformer`'s rows: per decoder layer, the self-attention keys and values in a `SlotKVCache`
    (row i's from column 0, `columns[i]` filled) and the projected memory (cross-attention keys and values, and
    the source mask), right-padded. The storage grows, doubling, when rows, target columns or source columns run
    out (columns up to the model's max_len), so a batch of short sentences holds short caches."""

    def __init__(self, model: Seq2SeqTransformer) -> None:
        self.model = model
        c = model.config
        self.n_heads, self.head_dim, self.max_len = c.n_heads, c.d_model // c.n_heads, c.max_len
        weight = model.src_embedding.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.rows = 0
        self.columns: list[int] = []  # per row: target tokens read so far (its next token's position)
        self.source_lengths: list[int] = []  # per row: its source's length, EOS included
        # Any: a SlotKVCache quacks as the KVCache the decoder's blocks take.
        self.self_caches: list[Any] = [self._slots(0, 0) for _ in model.decoder.blocks]
        self.cross: list[tuple[Tensor, Tensor]] = [(self._zeros(0, 0), self._zeros(0, 0)) for _ in model.decoder.blocks]
        self.src_valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # (capacity, source columns)

    def _zeros(self, rows: int, columns: int) -> Tensor:
        return torch.zeros(rows, self.n_heads, columns, self.head_dim, device=self.device, dtype=self.dtype)

    def _slots(self, rows: int, columns: int) -> SlotKVCache:
        return SlotKVCache(rows, self.n_heads, columns, self.head_dim, self.device, self.dtype)

    def _reserve(self, rows: int, target: int, source: int) -> None:
        """Storage for at least `rows` rows, `target` self-attention columns and `source` memory columns, keeping
        the live rows' contents."""
        have_rows, have_source = self.src_valid.shape
        have_target = self.self_caches[0].k.shape[2]
        if rows <= have_rows and target <= have_target and source <= have_source:
            return

        def grown(need: int, have: int, limit: int | None = None) -> int:
            size = have if need <= have else max(need, 2 * have)
            return size if limit is None else min(size, limit)

        new_rows, new_target = grown(rows, have_rows), grown(target, have_target, self.max_len)
        new_source = grown(source, have_source, self.max_len)
        n = self.rows
        caches = [self._slots(new_rows, new_target) for _ in self.self_caches]
        for new, old in zip(caches, self.self_caches, strict=True):
            new.k[:n, :, :have_target], new.v[:n, :, :have_target] = old.k[:n], old.v[:n]
        cross = [(self._zeros(new_rows, new_source), self._zeros(new_rows, new_source)) for _ in self.cross]
        for (k, v), (old_k, old_v) in zip(cross, self.cross, strict=True):
            k[:n, :, :have_source], v[:n, :, :have_source] = old_k[:n], old_v[:n]
        src_valid = torch.zeros(new_rows, new_source, dtype=torch.bool, device=self.device)
        src_valid[:n, :have_source] = self.src_valid[:n]
        self.self_caches, self.cross, self.src_valid = caches, cross, src_valid

    def join(self, src: Tensor) -> None:
        m, s = src.shape
        self._reserve(self.rows + m, self.self_caches[0].k.shape[2], s)
        src = src.to(self.device)
        valid = self.model.source_key_valid(src)
        memory = self.model.encode(src, valid)  # (m, S, d)
        new = slice(self.rows, self.rows + m)
        for (k, v), projected in zip(self.cross, self.model.decoder.make_cross_kv_caches(memory), strict=True):
            k[new, :, :s], v[new, :, :s] = projected.k, projected.v
        self.src_valid[new] = False
        self.src_valid[new, :s] = valid
        self.columns += [0] * m
        self.source_lengths += [int(n) for n in valid.sum(dim=1).tolist()]
        self.rows += m

    def step(self, tokens: Tensor) -> Tensor:
        n = self.rows
        width = max(self.columns) + 1  # from the Python list: no device sync
        self._reserve(n, width, 0)
        fill = torch.tensor(self.columns, device=self.device)  # (n,) each row's columns before this token
        prepare_step(self.self_caches, fill, width)
        key_valid = torch.arange(width, device=self.device)[None, :] <= fill[:, None]  # (n, width)
        s = max(self.source_lengths)  # sources are right-padded: no row has a real token past this
        cross = [CrossKVCache(k[:n, :, :s], v[:n, :, :s]) for k, v in self.cross]
        logits = self.model.decode_rows(tokens.to(self.device)[:, None], fill[:, None], key_valid,
                                        self.self_caches, cross, self.src_valid[:n, :s])  # (n, V)
        self.columns = [c + 1 for c in self.columns]
        return F.log_softmax(logits.float(), dim=-1).cpu()

    def select(self, rows: Tensor) -> None:
        m = rows.numel()
        order = rows.tolist()
        if order == list(range(self.rows)):
            return  # nothing moved (greedy rows, or beams that kept their order)
        self._reserve(m, 0, 0)  # a beam search widening from its first row to k
        width = max(self.columns, default=0)
        s = max(self.source_lengths, default=0)
        index = rows.to(self.device)
        for cache in self.self_caches:  # gathered first, then written: the rows may swap
            cache.k[:m, :, :width] = cache.k[index, :, :width]
            cache.v[:m, :, :width] = cache.v[index, :, :width]
        for k, v in self.cross:
            k[:m, :, :s] = k[index, :, :s]
            v[:m, :, :s] = v[index, :, :s]
        self.src_valid[:m] = self.src_valid[index]
        self.columns = [self.columns[i] for i in order]
        self.source_lengths = [self.source_lengths[i] for i in order]
        self.rows = m


class LSTMRows:
    """An `LSTMSeq2Seq`'s rows: the recurrent state (L, rows, hidden), and each row's memory, attention keys and
    source mask, padded to the longest live source."""

    def __init__(self, model: LSTMSeq2Seq) -> None:
        self.model = model
        self.rows = 0
        self.state: tuple[Tensor, Tensor] | None = None
        self.memory: Tensor | None = None  # (rows, S, encoder_dim)
        self.keys: Tensor | None = None  # (rows, S, attention_dim), None without attention
        self.src_valid: Tensor | None = None  # (rows, S)

    def join(self, src: Tensor) -> None:
        src = src.to(next(self.model.parameters()).device)
        valid = self.model.source_key_valid(src)
        memory = self.model.encode(src, valid)  # zeros at padding
        h, c = self.model.init_state(memory, valid)
        keys = self.model.project_keys(memory)
        if self.state is None or self.memory is None or self.src_valid is None:
            self.state, self.memory, self.keys, self.src_valid = (h, c), memory, keys, valid
        else:
            s = max(self.memory.shape[1], memory.shape[1])
            self.memory = torch.cat([_pad_to(self.memory, s), _pad_to(memory, s)])
            self.src_valid = torch.cat([_pad_to(self.src_valid, s), _pad_to(valid, s)])
            if self.keys is not None and keys is not None:
                self.keys = torch.cat([_pad_to(self.keys, s), _pad_to(keys, s)])
            self.state = (torch.cat([self.state[0], h], dim=1), torch.cat([self.state[1], c], dim=1))
        self.rows += src.shape[0]

    def step(self, tokens: Tensor) -> Tensor:
        assert self.memory is not None and self.state is not None
        logits, self.state = self.model.decode_step(tokens.to(self.memory.device)[:, None], self.state, self.memory,
                                                    self.src_valid, self.keys)
        return F.log_softmax(logits.float(), dim=-1).cpu()  # (rows, V)

    def select(self, rows: Tensor) -> None:
        if self.memory is None or self.state is None or self.src_valid is None:
            return
        index = rows.to(self.memory.device)
        self.memory, self.src_valid = self.memory[index], self.src_valid[index]
        self.keys = None if self.keys is None else self.keys[index]
        self.state = (self.state[0][:, index], self.state[1][:, index])
        self.rows = rows.numel()


def _pad_to(x: Tensor, length: int) -> Tensor:
    """x (B, S, ...) right-padded with zeros (False) to `length` positions along dim 1."""
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))
