"""Beam search: exact on small problems, greedy at beam 1, batch-independent, GNMT length penalty."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.generate.beam import Hypothesis, beam_search, length_penalty

BOS, EOS, VOCAB = 0, 1, 5


class TableDecoder:
    """Log-probs that depend on the whole prefix (a seeded table per prefix), like a real decoder."""

    def __init__(self, batch_size: int, beam_size: int, seed: int) -> None:
        self.seed = seed
        self.prefixes: list[tuple[int, ...]] = [()] * (batch_size * beam_size)
        self.rows_per_input = beam_size
        self.started = False

    def log_probs(self, input_index: int, prefix: tuple[int, ...]) -> Tensor:
        g = torch.Generator().manual_seed(hash((self.seed, input_index, prefix)) % 2**31)
        logits = torch.randn(VOCAB, generator=g).mul(2)
        logits[BOS] = float("-inf")  # never generated, as in a real vocabulary's start token
        return logits.log_softmax(-1)

    def step(self, tokens: Tensor) -> Tensor:
        if self.started:  # the first call feeds BOS, which is not part of the prefix
            self.prefixes = [(*p, int(t)) for p, t in zip(self.prefixes, tokens.tolist(), strict=True)]
        self.started = True
        return torch.stack([self.log_probs(i // self.rows_per_input, p) for i, p in enumerate(self.prefixes)])

    def reorder(self, indices: Tensor) -> None:
        self.prefixes = [self.prefixes[int(i)] for i in indices]


def exhaustive(decoder: TableDecoder, input_index: int, max_len: int, alpha: float) -> Hypothesis:
    best = Hypothesis([], float("-inf"))
    for length in range(1, max_len + 1):
        for body in itertools.product(range(2, VOCAB), repeat=length - 1):
            for last in range(1, VOCAB):  # EOS, or any token when the length limit forces the end
                if last != EOS and length < max_len:
                    continue
                seq = (*body, last)
                logp = sum(float(decoder.log_probs(input_index, seq[:i])[seq[i]]) for i in range(length))
                score = logp / length_penalty(length, alpha)
                if score > best.score:
                    best = Hypothesis(list(body) if last == EOS else list(seq), score)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_wide_beam_finds_the_exact_best(alpha):
    max_len = 4
    decoder = TableDecoder(batch_size=2, beam_size=64, seed=3)
    result = beam_search(decoder, 2, 64, BOS, EOS, [max_len, max_len], alpha)
    for i in range(2):
        best = exhaustive(TableDecoder(2, 64, seed=3), i, max_len, alpha)
        assert result[i].tokens == best.tokens
        assert result[i].score == pytest.approx(best.score, abs=1e-5)


def test_beam_one_is_greedy():
    decoder = TableDecoder(batch_size=1, beam_size=1, seed=5)
    result = beam_search(decoder, 1, 1, BOS, EOS, [8], alpha=0.0)[0]
    probe, prefix = TableDecoder(1, 1, seed=5), ()
    for _ in range(8):
        token = int(probe.log_probs(0, prefix).argmax())
        if token == EOS:
            break
        prefix = (*prefix, token)
    assert tuple(result.tokens) == prefix


def test_batched_search_equals_one_input_at_a_time():
    batched = beam_search(TableDecoder(3, 4, seed=9), 3, 4, BOS, EOS, [6, 3, 5], alpha=0.6)
    for i, max_len in enumerate([6, 3, 5]):
        single = TableDecoder(1, 4, seed=9)
        single.log_probs = lambda _, prefix, i=i, d=single: TableDecoder.log_probs(d, i, prefix)  # type: ignore[method-assign]
        alone = beam_search(single, 1, 4, BOS, EOS, [max_len], alpha=0.6)[0]
        assert alone.tokens == batched[i].tokens
        assert len(batched[i].tokens) <= max_len


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    assert length_penalty(10, 0.0) == 1.0
    assert math.isclose(length_penalty(15, 1.0), 20 / 6)


def test_invalid_beam_size():
    with pytest.raises(GenloomError, match="beam size"):
        beam_search(TableDecoder(1, 1, 0), 1, 0, BOS, EOS, [3])
