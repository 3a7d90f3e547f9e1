"""Batches formed by total tokens with length bucketing, as translation systems train (fairseq, tensor2tensor).

Sentences of similar length go together so little of each batch is padding, and every batch holds about
`max_tokens` tokens (padding included) however long its sentences are.
"""

from __future__ import annotations

import torch

from genloom.errors import GenloomError


def token_batches(lengths: list[int], max_tokens: int, generator: torch.Generator) -> list[list[int]]:
    """Indices of examples grouped into batches of at most `max_tokens` padded tokens, in random order.

    lengths[i] is example i's padded cost per row (e.g. max(source, target) length). Examples are sorted
    by length with random tie order, cut into batches greedily, and the batches are shuffled.
    """
    if max_tokens < 1:
        raise GenloomError(f"max_tokens ({max_tokens}) must be positive")
    too_long = [n for n in lengths if n > max_tokens]
    if too_long:
        raise GenloomError(
            f"{len(too_long)} examples are longer ({max(too_long)} tokens) than a whole batch of {max_tokens} tokens"
        )
    tie_break = torch.randperm(len(lengths), generator=generator).tolist()
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], tie_break[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted ascending, so the new example is the longest: the batch costs (rows) * its length.
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[j] for j in shuffle]
