"""Shared data of the model tests."""

from __future__ import annotations

import pytest
import torch

PAD = 0


@pytest.fixture
def reverse_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 fixed pairs: a digit string -> the same digits reversed, as (src, tgt_in, targets with -100 ignored).

    Ids: 0 pad, 1 BOS, 2 EOS, 3..12 digits. A sequence-to-sequence model of any family must learn it exactly.
    """
    digits = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 0, 1, 2], [3, 3, 7]]
    width = 6
    src = torch.tensor([[d + 3 for d in s] + [2] + [PAD] * (width - len(s) - 1) for s in digits])
    out = [[d + 3 for d in reversed(s)] + [2] for s in digits]
    tgt_in = torch.tensor([[1, *o] + [PAD] * (width - len(o)) for o in out])
    targets = torch.tensor([o + [-100] * (width + 1 - len(o)) for o in out])
    return src, tgt_in, targets
