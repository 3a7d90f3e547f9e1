"""Token-based batches: every example once, under the token budget, similar lengths together."""

from __future__ import annotations

import pytest
import torch

from genloom.data.batching import token_batches
from genloom.errors import GenloomError


def test_batches_cover_every_example_once_within_budget():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (500,), generator=g).tolist()
    batches = token_batches(lengths, max_tokens=200, generator=torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 200
    # Bucketing: within a batch, lengths are close (sorted input cut into consecutive runs).
    padding = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert padding < 0.1 * sum(lengths)


def test_same_seed_same_batches_and_order_is_shuffled():
    lengths = [5, 3, 8, 8, 2, 7, 1, 4] * 10
    a = token_batches(lengths, 24, torch.Generator().manual_seed(3))
    b = token_batches(lengths, 24, torch.Generator().manual_seed(3))
    assert a == b
    first_lengths = [max(lengths[i] for i in batch) for batch in a]
    assert first_lengths != sorted(first_lengths)  # batches are not served shortest-first


def test_example_longer_than_a_batch_is_a_user_error():
    with pytest.raises(GenloomError, match="longer"):
        token_batches([3, 50], max_tokens=40, generator=torch.Generator())
