"""Sinusoidal (1D, 2D), rotary and learned positions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genloom.nn import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    sinusoidal_2d_table,
    sinusoidal_table,
)


@pytest.mark.parametrize(("pos", "i"), [(0, 0), (1, 0), (3, 1), (7, 5), (50, 2), (99, 15)])
def test_sinusoidal_matches_paper_formula(pos: int, i: int) -> None:
    dim = 32
    table = sinusoidal_table(100, dim)
    assert table.shape == (100, dim)
    angle = pos / 10000 ** (2 * i / dim)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sinusoidal_position_zero_and_odd_dim() -> None:
    table = sinusoidal_table(4, 8)
    assert table[0, 0::2].abs().max().item() == 0.0
    assert torch.all(table[0, 1::2] == 1.0)
    with pytest.raises(ValueError, match="7"):
        sinusoidal_table(4, 7)


def test_sinusoidal_module_looks_up_table() -> None:
    enc = SinusoidalPositionalEncoding(20, 8)
    positions = torch.tensor([[0, 5, 19], [3, 3, 0]])
    out = enc(positions)
    assert out.shape == (2, 3, 8)
    torch.testing.assert_close(out, sinusoidal_table(20, 8)[positions])
    assert "table" not in enc.state_dict()  # a pure function of the shape, not checkpointed


def test_sinusoidal_2d_rows_and_columns() -> None:
    h, w, dim = 3, 5, 16
    grid = sinusoidal_2d_table(h, w, dim)
    assert grid.shape == (h * w, dim)
    rows, cols = sinusoidal_table(h, dim // 2), sinusoidal_table(w, dim // 2)
    for r in range(h):
        for c in range(w):
            token = grid[r * w + c]  # row-major
            torch.testing.assert_close(token[: dim // 2], rows[r])
            torch.testing.assert_close(token[dim // 2 :], cols[c])
    g = grid.view(h, w, dim)
    # The row half is constant along a row, the column half is constant down a column.
    assert torch.equal(g[:, :, : dim // 2], g[:, :1, : dim // 2].expand(h, w, dim // 2))
    assert torch.equal(g[:, :, dim // 2 :], g[:1, :, dim // 2 :].expand(h, w, dim // 2))
    with pytest.raises(ValueError):
        sinusoidal_2d_table(2, 2, 6)


def _dot_at(q: torch.Tensor, k: torch.Tensor, rope: RotaryEmbedding, pq: int, pk: int) -> torch.Tensor:
    cos_q, sin_q = rope(torch.tensor([pq]))
    cos_k, sin_k = rope(torch.tensor([pk]))
    return (apply_rotary(q, cos_q, sin_q) * apply_rotary(k, cos_k, sin_k)).sum(-1)


@pytest.mark.parametrize(("p", "k"), [(5, 3), (17, 0), (40, 9), (2, -2)])
def test_rotary_dot_product_depends_only_on_offset(p: int, k: int) -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(16, 64)
    q, key = torch.randn(2, 3, 1, 16), torch.randn(2, 3, 1, 16)
    base = (0, k) if k >= 0 else (-k, 0)
    shifted = (p + base[0], p + base[1])
    torch.testing.assert_close(
        _dot_at(q, key, rope, *shifted), _dot_at(q, key, rope, *base), atol=1e-4, rtol=1e-4
    )
    # ...and it does depend on the offset.
    assert not torch.allclose(_dot_at(q, key, rope, 0, 1), _dot_at(q, key, rope, 0, 7), atol=1e-3)


def test_rotary_preserves_norm_and_identity_at_zero() -> None:
    rope = RotaryEmbedding(8, 32)
    x = torch.randn(2, 2, 5, 8)
    cos, sin = rope(torch.arange(5))
    assert cos.shape == (1, 1, 5, 4)
    y = apply_rotary(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    cos_b, _ = rope(torch.tensor([[0, 1], [4, 9]]))  # per-row positions broadcast over heads
    assert cos_b.shape == (2, 1, 2, 4)
    with pytest.raises(ValueError):
        RotaryEmbedding(7, 8)


def test_learned_embedding_is_an_embedding() -> None:
    emb = LearnedPositionalEmbedding(10, 6)
    assert isinstance(emb, nn.Embedding)
    assert emb.weight.shape == (10, 6) and emb.weight.requires_grad
    positions = torch.tensor([[0, 9], [2, 2]])
    torch.testing.assert_close(emb(positions), emb.weight[positions])
