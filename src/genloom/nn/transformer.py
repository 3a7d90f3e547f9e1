"""A stack of Transformer blocks with a final norm: the trunk of every model family."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from genloom.nn.attention import CrossKVCache, KVCache
from genloom.nn.blocks import BlockConfig, TransformerBlock
from genloom.nn.layers import Linear, make_norm


class TransformerStack(nn.Module):
    def __init__(self, cfg: BlockConfig, n_layers: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(n_layers))
        # Pre-norm leaves the residual stream un-normalised, so it needs a final norm; post-norm does not.
        self.final_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps, cfg.bias) if cfg.norm_first else None

    def make_kv_caches(
        self, batch_size: int, max_len: int, device: torch.device, dtype: torch.dtype
    ) -> list[KVCache]:
        head_dim = self.cfg.d_model // self.cfg.n_heads
        return [
            KVCache(batch_size, self.cfg.n_heads, max_len, head_dim, device, dtype) for _ in self.blocks
        ]

    def make_cross_kv_caches(self, context: Tensor) -> list[CrossKVCache]:
        """Every block's cross-attention keys/values of `context` (B, S, d_model), for incremental decoding."""
        caches = []
        for block in self.blocks:
            assert isinstance(block, TransformerBlock)
            caches.append(block.cross_kv_cache(context))
        return caches

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_caches: list[KVCache] | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cross_kv_caches: list[CrossKVCache] | None = None,
    ) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(
                x, mask=mask, is_causal=is_causal, rotary=rotary,
                kv_cache=kv_caches[i] if kv_caches is not None else None,
                context=context, context_mask=context_mask,
                cross_kv=cross_kv_caches[i] if cross_kv_caches is not None else None,
            )
        return self.final_norm(x) if self.final_norm is not None else x


def gpt2_init_(model: nn.Module, n_layers: int) -> None:
    """GPT-2's initialisation, in place: N(0, 0.02) weights and embeddings, zero biases, and residual output
    projections scaled by 1/sqrt(2 * n_layers) (GPT-2 §2.3: each layer adds two residual branches)."""

    def init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, Linear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    model.apply(init_module)  # children before parents, as nn.Module.apply always visited them
    for name, p in model.named_parameters():
        if name.endswith(("attn.out_proj.weight", "mlp.fc_out.weight")):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))
