"""Diffusion Transformer blocks with adaLN-Zero conditioning (Peebles & Xie 2023, "DiT", §3.2).

A conditioning vector c (timestep embedding + pooled caption) regresses, per block, a shift, scale and gate for
each sublayer: x + gate * sublayer(norm(x) * (1 + scale) + shift). The regression is zero-initialised, so every
block starts as the identity ("-Zero": the best-performing variant in DiT's Figure 5). Cross-attention to the
caption's tokens (as PixArt-α adds to DiT) sits between self-attention and the MLP, with a plain pre-norm.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genloom.nn.attention import MultiHeadAttention
from genloom.nn.layers import MLP


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x (B, T, d) shifted and scaled by per-sample (B, d) vectors."""
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features (B, dim) of timesteps t (B,), which may be fractional (flow matching's σ·T)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return embedding if dim % 2 == 0 else torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)


class AdaLNBlock(nn.Module):
    """Self-attention, cross-attention (optional) and MLP, the first and last modulated by c."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, cross_attention: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.cross_norm = nn.LayerNorm(d_model, eps=1e-6) if cross_attention else None
        self.cross_attn = MultiHeadAttention(d_model, n_heads, cross=True) if cross_attention else None
        self.mlp_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(d_model, d_ff, "gelu", bias=True, dropout=0.0)
        self.modulation = nn.Linear(d_model, 6 * d_model)  # (shift, scale, gate) x (attention, MLP)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
                ) -> Tensor:
        """x: (B, T, d) latent patches; c: (B, d) conditioning; context: (B, S, d) caption tokens with
        context_mask (B, 1, 1, S) True = real token."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(nn.functional.silu(c)).chunk(6, dim=-1)
        x = x + gate_a[:, None] * self.attn(modulate(self.attn_norm(x), shift_a, scale_a))
        if self.cross_attn is not None and context is not None:
            assert self.cross_norm is not None
            x = x + self.cross_attn(self.cross_norm(x), context, mask=context_mask)
        return x + gate_m[:, None] * self.mlp(modulate(self.mlp_norm(x), shift_m, scale_m))


class AdaLNFinal(nn.Module):
    """The last layer: modulated norm, then a zero-initialised projection to each patch's outputs."""

    def __init__(self, d_model: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, out_features)
        for layer in (self.modulation, self.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(nn.functional.silu(c)).chunk(2, dim=-1)
        return self.proj(modulate(self.norm(x), shift, scale))
