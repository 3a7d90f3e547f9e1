"""Beam search with the GNMT length penalty, and greedy search, one input at a time over any decoder.

The search knows nothing about models. `BeamInput` and `GreedyInput` hold one input's hypotheses: given the
next-token log-probabilities of its live hypotheses, they choose the next ones and say which hypothesis each
continues. The engine that owns the decoder state (`genloom.generate.translate_batch.TranslationBatch`, where
inputs of different requests join and leave between steps) reorders its rows accordingly; `beam_search` and
`greedy_search` run the same searches over an `IncrementalDecoder` in a fixed batch, as the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from genloom.errors import GenloomError


class IncrementalDecoder(Protocol):
    def step(self, tokens: Tensor) -> Tensor:
        """tokens (N,): the last token of each of the N = batch * beam hypotheses -> log-probs (N, V)."""
        ...

    def reorder(self, indices: Tensor) -> None:
        """Hypothesis i continues hypothesis indices[i] (N,): permute the decoder's state accordingly."""
        ...


def length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al. 2016, eq. 14): lp(Y) = ((5 + |Y|) / 6) ** alpha; scores are log P(Y) / lp(Y)."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS, without EOS
    score: float  # length-normalised log-probability


@dataclass
class BeamInput:
    """One input's beam search. `tokens` holds the last token of each live hypothesis (BOS alone at the start, so
    the first step does not expand k copies of it); `advance` takes their next-token log-probabilities.

    A hypothesis ends when it emits EOS or reaches `max_length`. The search stops once `beam_size` hypotheses
    have ended and no live one can still beat them: with alpha >= 0 a live score can only fall, and its normalised
    value is bounded by its current log-prob over the longest lp."""

    beam_size: int
    bos_id: int
    eos_id: int
    max_length: int
    alpha: float = 0.6
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    finished: list[Hypothesis] = field(default_factory=list)
    _scores: Tensor = field(default_factory=lambda: torch.zeros(1))  # (live,) log-probs
    _histories: list[list[int]] = field(default_factory=lambda: [[]])
    _steps: int = 0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise GenloomError(f"beam size ({self.beam_size}) must be at least 1")
        self.tokens = [self.bos_id]

    def advance(self, log_probs: Tensor) -> list[int]:
        """log_probs (live, V), float, of the live hypotheses -> for each new live hypothesis, the index of the one
        it continues (an empty list once the search is done; `tokens` then is empty too)."""
        k, eos = self.beam_size, self.eos_id
        self._steps += 1
        last_step = self._steps >= self.max_length
        vocab = log_probs.shape[-1]
        candidates = (self._scores[:, None] + log_probs).view(-1)  # (live * V,)
        # 2k candidates: even if k of them end with EOS, k live ones remain.
        top_scores, top_index = candidates.topk(min(2 * k, candidates.numel()))
        scores: list[float] = []
        origins: list[int] = []
        tokens: list[int] = []
        for score, index in zip(top_scores.tolist(), top_index.tolist(), strict=True):
            if score == float("-inf"):
                break
            beam, token = divmod(index, vocab)
            if token == eos or last_step:
                # EOS (or the token that hits the length limit) counts towards |Y|, as in GNMT.
                history = self._histories[beam]
                body = history if token == eos else [*history, token]
                self.finished.append(Hypothesis(body, score / length_penalty(len(history) + 1, self.alpha)))
            elif len(scores) < k:
                scores.append(score)
                origins.append(beam)
                tokens.append(token)
        self.finished = sorted(self.finished, key=lambda h: -h.score)[:k]
        if not scores or last_step:
            self.done = True
        elif len(self.finished) == k:
            # A live hypothesis' log-prob only falls, so with alpha >= 0 its final normalised score is at most its
            # current log-prob over the largest penalty; stop when that cannot beat the k-th.
            bound = scores[0] / length_penalty(self.max_length, self.alpha)
            self.done = self.alpha >= 0 and bound <= self.finished[-1].score
        if self.done:
            self.tokens = []
            return []
        self._histories = [[*self._histories[o], t] for o, t in zip(origins, tokens, strict=True)]
        self._scores = torch.tensor(scores)
        self.tokens = tokens
        return origins

    @property
    def result(self) -> list[int]:
        """The best finished hypothesis' tokens (no BOS or EOS)."""
        return self.finished[0].tokens if self.finished else []

    @property
    def best(self) -> Hypothesis:
        return self.finished[0] if self.finished else Hypothesis([], float("-inf"))


@dataclass
class GreedyInput:
    """One input's greedy search: the most likely next token at every step until EOS or `max_length` tokens
    (EOS not included). The same interface as `BeamInput`, with one live hypothesis."""

    bos_id: int
    eos_id: int
    max_length: int
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    result: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = [self.bos_id]

    def advance(self, log_probs: Tensor) -> list[int]:
        """log_probs (1, V) -> [0] while the search goes on, [] once it is done."""
        token = int(log_probs[0].argmax())
        if token != self.eos_id:
            self.result.append(token)
        self.done = token == self.eos_id or len(self.result) >= self.max_length
        self.tokens = [] if self.done else [token]
        return [] if self.done else [0]


Search = BeamInput | GreedyInput


def make_search(beam_size: int, bos_id: int, eos_id: int, max_length: int, alpha: float) -> Search:
    """Greedy search for beam size 1 (not beam search with one beam, which keeps hypotheses that ended early),
    beam search otherwise."""
    if beam_size == 1:
        return GreedyInput(bos_id, eos_id, max_length)
    return BeamInput(beam_size, bos_id, eos_id, max_length, alpha)


@torch.no_grad()
def run_fixed_batch(decoder: IncrementalDecoder, searches: Sequence[Search], width: int) -> None:
    """Run `searches` to their end over `decoder`, whose rows are `width` per input (input b's at b * width ...):
    the reference loop, with no rows joining or leaving. An input's rows beyond its live hypotheses, and all the
    rows of a finished input, idle on a copy of its first row (so they keep its memory)."""
    tokens = torch.full((len(searches) * width,), searches[0].tokens[0], dtype=torch.long)
    while not all(s.done for s in searches):
        log_probs = decoder.step(tokens).float().cpu()  # (B * width, V)
        tokens = tokens.clone()  # a decoder may keep the tensor it was given (a prefix to recompute)
        origin = torch.arange(len(searches) * width).view(len(searches), width)
        for b, search in enumerate(searches):
            live = len(search.tokens)
            if not live:
                continue
            first = b * width
            origins = search.advance(log_probs[first : first + live])
            origin[b] = first
            for j, (o, token) in enumerate(zip(origins, search.tokens, strict=True)):
                origin[b, j] = first + o
                tokens[first + j] = token
        decoder.reorder(origin.view(-1))


def beam_search(
    decoder: IncrementalDecoder,
    batch_size: int,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_lengths: list[int],
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """The best hypothesis for each of `batch_size` inputs; the decoder holds `beam_size` rows per input."""
    if beam_size < 1:
        raise GenloomError(f"beam size ({beam_size}) must be at least 1")
    if len(max_lengths) != batch_size:
        raise ValueError(f"{len(max_lengths)} max lengths for a batch of {batch_size}")
    searches = [BeamInput(beam_size, bos_id, eos_id, n, alpha) for n in max_lengths]
    run_fixed_batch(decoder, searches, beam_size)
    return [s.best for s in searches]


def greedy_search(
    decoder: IncrementalDecoder, batch_size: int, bos_id: int, eos_id: int, max_lengths: Sequence[int]
) -> list[list[int]]:
    """The most likely next token at every step until EOS or the input's max length (EOS not included)."""
    if len(max_lengths) != batch_size:
        raise ValueError(f"{len(max_lengths)} max lengths for a batch of {batch_size}")
    searches = [GreedyInput(bos_id, eos_id, n) for n in max_lengths]
    run_fixed_batch(decoder, searches, 1)
    return [s.result for s in searches]
