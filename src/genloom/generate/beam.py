"""Batched beam search with the GNMT length penalty, over any incremental decoder.

The search knows nothing about models: a decoder gives next-token log-probabilities for every live
hypothesis and reorders its own state (KV caches, recurrent state) when hypotheses are re-ranked. The
encoder therefore runs once per batch, before the search.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@torch.no_grad()
def beam_search(
    decoder: IncrementalDecoder,
    batch_size: int,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_lengths: list[int],
    alpha: float = 0.6,
) -> list[Hypothesis]:
    """The best hypothesis for each of `batch_size` inputs.

    A hypothesis ends when it emits EOS or reaches its input's max length. An input's search stops once
    `beam_size` hypotheses have ended and no live one can still beat them: with alpha >= 0 a live score
    can only fall, and its normalised value is bounded by its current log-prob over the longest lp.
    """
    if beam_size < 1:
        raise GenloomError(f"beam size ({beam_size}) must be at least 1")
    if len(max_lengths) != batch_size:
        raise ValueError(f"{len(max_lengths)} max lengths for a batch of {batch_size}")
    k = beam_size
    # Only beam 0 is live at the start, so the first step does not expand k copies of BOS.
    scores = torch.full((batch_size, k), float("-inf"))
    scores[:, 0] = 0.0
    tokens = torch.full((batch_size * k,), bos_id, dtype=torch.long)
    history: list[list[int]] = [[] for _ in range(batch_size * k)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    longest = max(max_lengths)
    for t in range(longest):
        log_probs = decoder.step(tokens).float().cpu()  # (B*k, V)
        vocab = log_probs.shape[-1]
        candidates = (scores[:, :, None] + log_probs.view(batch_size, k, vocab)).view(batch_size, k * vocab)
        # 2k candidates: even if k of them end with EOS, k live ones remain.
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2k)
        new_scores = torch.full((batch_size, k), float("-inf"))
        origin = torch.arange(batch_size * k).view(batch_size, k)  # finished inputs' rows just idle
        new_tokens = torch.full((batch_size, k), eos_id, dtype=torch.long)
        for b in range(batch_size):
            if done[b]:
                continue
            last_step = t + 1 >= max_lengths[b]
            live = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist(), strict=True):
                if score == float("-inf"):
                    break
                beam, token = divmod(index, vocab)
                row = b * k + beam
                if token == eos_id or last_step:
                    # EOS (or the token that hits the length limit) counts towards |Y|, as in GNMT.
                    body = history[row] if token == eos_id else [*history[row], token]
                    finished[b].append(Hypothesis(body, score / length_penalty(len(history[row]) + 1, alpha)))
                elif live < k:
                    new_scores[b, live], origin[b, live], new_tokens[b, live] = score, row, token
                    live += 1
            finished[b] = sorted(finished[b], key=lambda h: -h.score)[:k]
            if live == 0 or last_step:
                done[b] = True
            elif len(finished[b]) == k:
                # A live hypothesis' log-prob only falls, so with alpha >= 0 its final normalised score is at
                # most its current log-prob over the largest penalty; stop when that cannot beat the k-th.
                bound = float(new_scores[b, 0]) / length_penalty(max_lengths[b], alpha)
                done[b] = alpha >= 0 and bound <= finished[b][-1].score
        if all(done):
            break
        flat_origin = origin.view(-1)
        history = [[*history[int(o)], int(tok)] for o, tok in zip(flat_origin, new_tokens.view(-1), strict=True)]
        decoder.reorder(flat_origin)
        scores = new_scores
        tokens = new_tokens.view(-1)
    return [f[0] if f else Hypothesis([], float("-inf")) for f in finished]
