"""Positional information: sinusoidal (1D and 2D), learned, and rotary.

Attention is permutation-invariant, so order must be injected. "Attention Is All You Need" (§3.5) adds
fixed sinusoids; GPT-2 learns a table; RoFormer rotates queries and keys so that their dot product
depends only on the relative offset.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(max_len: int, dim: int, base: float = 10000.0) -> Tensor:
    """PE[pos, 2i] = sin(pos / base^(2i/dim)), PE[pos, 2i+1] = cos(...). Returns (max_len, dim)."""
    if dim % 2:
        raise ValueError(f"sinusoidal dim ({dim}) must be even")
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))  # (dim/2,)
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def sinusoidal_2d_table(height: int, width: int, dim: int) -> Tensor:
    """2D sinusoids for an image grid: half the channels encode the row, half the column.

    Returns (height * width, dim) in row-major order, as a flattened grid of image tokens is laid out.
    """
    if dim % 4:
        raise ValueError(f"2D sinusoidal dim ({dim}) must be divisible by 4")
    rows = sinusoidal_table(height, dim // 2)  # (H, dim/2)
    cols = sinusoidal_table(width, dim // 2)  # (W, dim/2)
    grid = torch.cat(
        [rows[:, None, :].expand(height, width, -1), cols[None, :, :].expand(height, width, -1)], dim=-1
    )  # (H, W, dim)
    return grid.reshape(height * width, dim)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal encoding looked up by position index."""

    table: Tensor

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        # Not persistent: it is a pure function of (max_len, dim), so checkpoints need not carry it.
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        return self.table[positions]  # (..., dim)


class LearnedPositionalEmbedding(nn.Embedding):
    """GPT-2's learned absolute positions: one trained vector per index."""


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021), "rotate half" layout as in GPT-NeoX / Llama."""

    cos: Tensor
    sin: Tensor

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary head_dim ({head_dim}) must be even")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (max_len, hd/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (B, T) or (T,) -> cos, sin of shape (B or 1, 1, T, head_dim/2), ready to broadcast."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(0)
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[i], x[i + hd/2]) of x (B, H, T, hd) by the angles in cos/sin (B|1, 1, T, hd/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
