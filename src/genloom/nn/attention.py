"""Multi-head attention (Vaswani et al. 2017, §3.2) over `scaled_dot_product_attention`, with a KV cache.

Masks follow SDPA's boolean convention: True means "may attend". A mask has shape (B, 1, T_q, T_k) and
broadcasts over heads.

On a CPU with more than one thread, short sequences are attended by two batched matrix products instead
(`attend`): SDPA's CPU flash kernel pays a fixed cost for every (batch, head) slice, and on 2 threads it runs
short sequences slower than on one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.nn.layers import Linear, RMSNorm
from genloom.nn.positional import apply_rotary


class KVCache:
    """Keys and values of one self-attention layer, pre-allocated to `max_len` so decoding never copies.

    k, v: (B, H, max_len, head_dim); the first `length` positions are filled.
    """

    def __init__(
        self, batch_size: int, n_heads: int, max_len: int, head_dim: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.k = torch.zeros(batch_size, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, T_new, hd) after the filled part; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reorder(self, batch_indices: Tensor) -> None:
        """Keep rows `batch_indices` (beam search re-ranks hypotheses between steps)."""
        self.k = self.k.index_select(0, batch_indices)
        self.v = self.v.index_select(0, batch_indices)


class CrossKVCache:
    """Keys and values of one cross-attention layer, projected once from a fixed context (the encoder output).

    The context does not change while a decoder generates, so re-projecting it at every step would repeat
    the same (S x d) @ (d x 2d) product per layer and token. k, v: (B, H, S, head_dim).
    """

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def reorder(self, batch_indices: Tensor) -> None:
        """Keep rows `batch_indices`, as `KVCache.reorder` does (beam search)."""
        self.k = self.k.index_select(0, batch_indices)
        self.v = self.v.index_select(0, batch_indices)


def build_attention_mask(
    key_valid: Tensor | None, q_len: int, past_len: int, causal: bool, device: torch.device
) -> Tensor | None:
    """Boolean mask (B|1, 1, T_q, T_k) combining causality and key padding; None when nothing is masked.

    key_valid: (B, T_k) with True for real tokens, T_k = past_len + q_len for self-attention. A query at a
    padding position would otherwise see no key at all (softmax of all -inf = NaN), so every query may
    always attend to its own position; padded outputs are garbage but finite and never read.
    """
    if key_valid is None and (not causal or q_len == 1):
        return None
    if key_valid is not None and q_len == 1:
        # One decoding step: every key is in the past or is the (real) query token itself, so causality holds and
        # only padding is masked. The keys need not be contiguous: a batch of rows of different lengths
        # (genloom.generate.batch) marks each row's own columns valid.
        return key_valid[:, None, None, :]
    k_len = key_valid.shape[1] if key_valid is not None else past_len + q_len
    q_pos = torch.arange(past_len, past_len + q_len, device=device)[:, None]  # (T_q, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, T_k)
    mask = k_pos <= q_pos if causal else torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    mask = mask[None, None]  # (1, 1, T_q, T_k)
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]  # (B, 1, T_q, T_k)
        mask = mask | (k_pos == q_pos)[None, None]
    return mask


def build_document_mask(document_ids: Tensor) -> Tensor:
    """Boolean mask (B, 1, T, T) for rows that pack several documents: causal, and each token attends only to
    tokens of its own document. document_ids: (B, T), equal for the tokens of one document."""
    t = document_ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()
    return (same & causal)[:, None]  # (B, 1, T, T)


# The longest key sequence that `attend` gives to matrix products on a CPU. Measured on 2 cores against SDPA's flash
# kernel (fp32; benchmarks/attention_speed.py, README): at 10-24 keys 2-4x as fast, forward and backward; at 64
# keys 1.2-1.8x forward and backward, and 0.5-1.4x forward alone from run to run (the fresh scores' pages); at 128
# even in training and 0.4x forward; from 192 3-5x slower, as the (T_q, T_k) scores outgrow the cache.
MATMUL_MAX_KEYS = 64


def uses_matmul(q: Tensor, k: Tensor) -> bool:
    """Whether `attend` computes this attention by matrix products: on a CPU running more than one thread, for
    several queries (a decoding step's one query stays with SDPA, whose kernel is faster there) over at most
    MATMUL_MAX_KEYS keys. The rule reads no batch size, so a row is attended the same way alone or in a batch.
    Under torch.compile it is SDPA: the compiler makes its own kernel, and reading the thread count would split
    the graph."""
    return (q.device.type == "cpu" and q.shape[-2] > 1 and k.shape[-2] <= MATMUL_MAX_KEYS
            and not torch.compiler.is_compiling() and torch.get_num_threads() > 1)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
           is_causal: bool = False) -> Tensor:
    """`F.scaled_dot_product_attention` (q (B, H, T_q, hd), k and v (B, H, T_k, hd), the same arguments), or the same
    attention by two matrix products where that is faster (`uses_matmul`)."""
    if uses_matmul(q, k):
        return attend_by_matmul(q, k, v, mask, dropout_p, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def attend_by_matmul(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
                     is_causal: bool = False) -> Tensor:
    """softmax(q kᵀ / √hd + mask) v as two batched matrix products, with SDPA's arguments and result."""
    if is_causal and mask is not None:
        raise ValueError("give a mask or is_causal, not both (as scaled_dot_product_attention)")
    # In place on the fresh scores (the product's backward needs only q and k): every (T_q, T_k) tensor
    # allocated is one more that the allocator may hand over as new pages, to be faulted in.
    scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, H, T_q, T_k)
    if is_causal:  # top-left aligned, as SDPA's
        mask = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if mask is not None and mask.dtype == torch.bool:
        # The lowest finite value rather than -inf: a query with no allowed key gets finite (unused) weights
        # instead of NaNs, which a later product would spread through its masked values to every row.
        scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores += mask  # an additive mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, H, T_q, hd)


class MultiHeadAttention(nn.Module):
    """Self-attention (one fused QKV projection) or cross-attention (Q from x, K/V from `context`)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        cross: bool = False,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.cross = cross
        self.dropout = dropout
        if cross:
            self.q_proj = Linear(d_model, d_model, bias=bias)
            self.kv_proj = Linear(d_model, 2 * d_model, bias=bias)
        else:
            self.qkv_proj = Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = Linear(d_model, d_model, bias=bias)
        # QK-norm (Dehghani et al. 2023) bounds attention logits, which stabilises higher learning rates.
        self.q_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, norm_eps) if qk_norm else None

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def _context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (B, H, S, hd) of `context` (B, S, d_model), k-norm applied."""
        k, v = (self._split_heads(part) for part in self.kv_proj(context).split(context.shape[-1], dim=-1))
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k, v

    def cross_kv_cache(self, context: Tensor) -> CrossKVCache:
        """Project `context` once for reuse at every decoding step (pass it back as `cross_kv`)."""
        if not self.cross:
            raise ValueError("cross_kv_cache needs a cross-attention layer (cross=True)")
        return CrossKVCache(*self._context_kv(context))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCache | None = None,
        cross_kv: CrossKVCache | None = None,
    ) -> Tensor:
        """x: (B, T, d_model); context: (B, S, d_model) for cross-attention. Returns (B, T, d_model).

        cross_kv: keys/values from `cross_kv_cache(context)`; when given, `context` is not needed.
        """
        b, t, d = x.shape
        if self.cross:
            q = self._split_heads(self.q_proj(x))
            if cross_kv is not None:
                k, v = cross_kv.k, cross_kv.v  # already k-normed
            else:
                assert context is not None, "cross-attention needs a context or a cross_kv cache"
                k, v = self._context_kv(context)
            if self.q_norm is not None:
                q = self.q_norm(q)
        else:
            assert cross_kv is None, "cross_kv is only for cross-attention"
            q, k, v = (self._split_heads(part) for part in self.qkv_proj(x).split(d, dim=-1))
            if self.q_norm is not None and self.k_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past_len = 0
        if kv_cache is not None:
            past_len = kv_cache.length
            k, v = kv_cache.append(k, v)  # (B, H, past + T, hd)
        # SDPA's is_causal aligns the mask to the top-left corner, so it is only right without a past.
        causal_flag = is_causal and mask is None and past_len == 0 and t > 1
        if is_causal and mask is None and past_len > 0 and t > 1:
            mask = build_attention_mask(None, t, past_len, causal=True, device=x.device)
        dropout_p = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and q.dtype == torch.bfloat16:
            # CPU flash attention's backward is far slower in bf16 than in fp32 (dit-small, batch 64: 31 ms against
            # 1.3 ms a call, and a bf16 step twice the fp32 one), so under CPU autocast attention runs in fp32 and
            # only the projections around it in bf16, where AMX makes matrix products fast: that step then runs
            # 1.4x as fast as in fp32 (benchmarks/train_speed.py, 2 cores).
            with torch.autocast("cpu", enabled=False):
                y = attend(q.float(), k.float(), v.float(), mask, dropout_p, causal_flag)
        elif k.dtype != q.dtype:  # a cache that stores keys and values narrower than the model (16-bit KV cache)
            y = attend(q.to(k.dtype), k, v, mask, dropout_p, causal_flag).to(q.dtype)
        else:
            y = attend(q, k, v, mask, dropout_p, causal_flag)
        # y: (B, H, T, hd)
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.out_proj(y)
