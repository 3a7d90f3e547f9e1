"""Transformer blocks: self-attention, optional cross-attention, feed-forward; pre- or post-norm.

One block class serves the encoder (non-causal), the GPT decoder (causal) and the translation decoder
(causal + cross-attention), as x-transformers does with `causal=`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from genloom.nn.attention import CrossKVCache, KVCache, MultiHeadAttention
from genloom.nn.layers import MLP, Activation, NormKind, dropout_layer, make_norm


@dataclass
class BlockConfig:
    d_model: int
    n_heads: int
    d_ff: int
    activation: Activation = "gelu"
    norm: NormKind = "layernorm"
    norm_first: bool = True  # pre-norm (GPT-2) when True; post-norm ("Attention Is All You Need") when False
    bias: bool = True
    dropout: float = 0.0
    qk_norm: bool = False
    norm_eps: float = 1e-5
    cross_attention: bool = False


class TransformerBlock(nn.Module):
    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, bias=cfg.bias, dropout=cfg.dropout, qk_norm=cfg.qk_norm,
            norm_eps=cfg.norm_eps,
        )
        self.cross_norm: nn.Module | None = None
        self.cross_attn: MultiHeadAttention | None = None
        if cfg.cross_attention:
            self.cross_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
            self.cross_attn = MultiHeadAttention(
                cfg.d_model, cfg.n_heads, bias=cfg.bias, dropout=cfg.dropout, cross=True, qk_norm=cfg.qk_norm,
                norm_eps=cfg.norm_eps,
            )
        self.mlp_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = MLP(cfg.d_model, cfg.d_ff, cfg.activation, cfg.bias, cfg.dropout)
        self.resid_dropout = dropout_layer(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: nn.Module, **kwargs: object) -> Tensor:
        if self.norm_first:
            return x + self.resid_dropout(sublayer(norm(x), **kwargs))
        return norm(x + self.resid_dropout(sublayer(x, **kwargs)))

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cross_kv: CrossKVCache | None = None,
    ) -> Tensor:
        """x: (B, T, d_model); context: (B, S, d_model) for cross-attention, or its projected `cross_kv`.

        context_mask: (B, 1, 1, S) True = may attend, for a padded context.
        """
        x = self._residual(
            x, self.attn_norm, self.attn, mask=mask, is_causal=is_causal, rotary=rotary, kv_cache=kv_cache
        )
        if self.cross_attn is not None:
            assert self.cross_norm is not None
            x = self._residual(
                x, self.cross_norm, self.cross_attn, context=context, mask=context_mask, cross_kv=cross_kv
            )
        # The MLP's own dropout already sits on its output, so no second residual dropout here.
        if self.norm_first:
            return x + self.mlp(self.mlp_norm(x))
        return self.mlp_norm(x + self.mlp(x))

    def cross_kv_cache(self, context: Tensor) -> CrossKVCache:
        """This block's cross-attention keys/values of `context` (B, S, d_model), computed once."""
        if self.cross_attn is None:
            raise ValueError("cross_kv_cache needs a block with cross_attention=True")
        return self.cross_attn.cross_kv_cache(context)
