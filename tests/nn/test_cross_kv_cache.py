"""Cross-attention keys/values projected once from the context (`CrossKVCache`) equal recomputing them."""

from __future__ import annotations

import pytest
import torch

from genloom.nn import BlockConfig, CrossKVCache, MultiHeadAttention, TransformerStack

D, H, FF = 16, 4, 32


def _randomise(module: torch.nn.Module) -> None:
    """Random biases and norm gains as well, so that a skipped bias or norm shows up."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.3 + 1.0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_with_cross_kv_equals_context(qk_norm: bool) -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, cross=True, qk_norm=qk_norm).eval()
    _randomise(mha)
    x, context = torch.randn(2, 3, D), torch.randn(2, 7, D)
    cache = mha.cross_kv_cache(context)
    assert isinstance(cache, CrossKVCache)
    assert cache.k.shape == (2, H, 7, D // H) and cache.length == 7
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])[:, None, None, :]  # (B, 1, 1, S)
    torch.testing.assert_close(mha(x, cross_kv=cache, mask=mask), mha(x, context, mask=mask))


def test_cross_kv_cache_needs_cross_attention() -> None:
    with pytest.raises(ValueError, match="cross"):
        MultiHeadAttention(D, H).cross_kv_cache(torch.randn(1, 2, D))


def test_cross_kv_cache_reorder_selects_rows() -> None:
    mha = MultiHeadAttention(D, H, cross=True).eval()
    context = torch.randn(3, 5, D)
    cache = mha.cross_kv_cache(context)
    cache.reorder(torch.tensor([2, 2, 0]))
    expected = mha.cross_kv_cache(context[[2, 2, 0]])
    torch.testing.assert_close(cache.k, expected.k)
    torch.testing.assert_close(cache.v, expected.v)


@pytest.mark.parametrize("norm_first", [True, False])
def test_stack_incremental_decoding_with_cross_kv_equals_full(norm_first: bool) -> None:
    torch.manual_seed(0)
    cfg = BlockConfig(d_model=D, n_heads=H, d_ff=FF, norm_first=norm_first, cross_attention=True)
    stack = TransformerStack(cfg, 2).eval()
    _randomise(stack)
    x, context = torch.randn(2, 6, D), torch.randn(2, 5, D)
    cmask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    full = stack(x, is_causal=True, context=context, context_mask=cmask)
    caches = stack.make_kv_caches(2, 6, x.device, x.dtype)
    cross = stack.make_cross_kv_caches(context)
    steps = [
        stack(x[:, t : t + 1], is_causal=True, kv_caches=caches, context_mask=cmask, cross_kv_caches=cross)
        for t in range(6)
    ]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_make_cross_kv_caches_needs_cross_attention_blocks() -> None:
    stack = TransformerStack(BlockConfig(d_model=D, n_heads=H, d_ff=FF), 1)
    with pytest.raises(ValueError, match="cross_attention"):
        stack.make_cross_kv_caches(torch.randn(1, 2, D))
