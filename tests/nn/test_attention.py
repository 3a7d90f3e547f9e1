"""MultiHeadAttention against a naive softmax(QKᵀ/√d)V reference, masks, and the KV cache."""

from __future__ import annotations

import math

import pytest
import torch

import genloom.nn.attention as attention
from genloom.nn import KVCache, MultiHeadAttention, RotaryEmbedding, build_attention_mask

D, H = 16, 4
HD = D // H


@pytest.fixture(autouse=True, params=["sdpa", "matmul"])
def attention_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs once through SDPA and once through `attend`'s matrix products, whatever this machine's
    threads would choose."""
    path: str = request.param
    monkeypatch.setattr(attention, "uses_matmul", lambda q, k: path == "matmul")
    return path


def _mha(**kwargs: object) -> MultiHeadAttention:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():  # random biases and norm gains too, so that every parameter matters
        for p in mha.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.shape[0] == HD else 0.0))
    return mha.eval()


def _heads(x: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    return x.reshape(b, t, H, HD).permute(0, 2, 1, 3)  # (B, H, T, hd)


def _rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoFormer rotation written independently: pair (i, i + hd/2) is a complex number turned by pos·θ_i."""
    half = x.shape[-1] // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])  # (hd/2,)
    angle = positions.to(torch.float64)[:, None] * theta[None, :]  # (T, hd/2)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _reference(
    mha: MultiHeadAttention,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    causal: bool = False,
    allowed: torch.Tensor | None = None,  # (B|1, 1, T_q, T_k) True = may attend
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    b, t, d = x.shape
    if mha.cross:
        assert context is not None
        q = x @ mha.q_proj.weight + mha.q_proj.bias
        kv = context @ mha.kv_proj.weight + mha.kv_proj.bias
        k, v = kv[..., :d], kv[..., d:]
    else:
        qkv = x @ mha.qkv_proj.weight + mha.qkv_proj.bias
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    q, k, v = _heads(q), _heads(k), _heads(v)
    if mha.q_norm is not None and mha.k_norm is not None:
        eps = mha.q_norm.eps
        q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps) * mha.q_norm.weight
        k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps) * mha.k_norm.weight
    if positions is not None:
        q, k = _rotate(q, positions), _rotate(k, positions)
    scores = q @ k.transpose(-1, -2) / math.sqrt(HD)  # (B, H, T_q, T_k)
    if causal:
        future = torch.ones(t, k.shape[2], dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, H, T_q, hd)
    y = y.permute(0, 2, 1, 3).reshape(b, t, d)
    return y @ mha.out_proj.weight + mha.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_reference(causal: bool) -> None:
    mha = _mha()
    x = torch.randn(2, 7, D)
    torch.testing.assert_close(mha(x, is_causal=causal), _reference(mha, x, causal=causal))


def test_padding_mask_matches_reference() -> None:
    mha = _mha()
    x = torch.randn(2, 6, D)
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    mask = build_attention_mask(valid, 6, 0, causal=True, device=x.device)
    assert mask is not None
    out = mha(x, mask=mask)
    ref = _reference(mha, x, allowed=mask)
    torch.testing.assert_close(out, ref)
    # For real query positions, the mask is exactly "causal and key is real".
    explicit = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    torch.testing.assert_close(out[1, 2:], _reference(mha, x, allowed=explicit)[1, 2:])


def test_cross_attention_with_context_of_another_length() -> None:
    mha = _mha(cross=True)
    x, context = torch.randn(2, 3, D), torch.randn(2, 9, D)
    out = mha(x, context)
    assert out.shape == (2, 3, D)
    torch.testing.assert_close(out, _reference(mha, x, context))
    ctx_valid = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    mask = build_attention_mask(ctx_valid, 3, 0, causal=False, device=x.device)
    assert mask is not None and mask.shape == (2, 1, 3, 9)
    torch.testing.assert_close(mha(x, context, mask=mask), _reference(mha, x, context, allowed=mask))


def test_qk_norm_matches_reference() -> None:
    mha = _mha(qk_norm=True)
    assert mha.q_norm is not None
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(mha(x, is_causal=True), _reference(mha, x, causal=True))


def test_rotary_matches_reference() -> None:
    mha = _mha(qk_norm=True)
    x = torch.randn(2, 6, D)
    positions = torch.arange(3, 9)  # not starting at zero, as after a prefix
    rope = RotaryEmbedding(HD, 16)
    out = mha(x, is_causal=True, rotary=rope(positions))
    torch.testing.assert_close(out, _reference(mha, x, causal=True, positions=positions))


def test_causal_mask_blocks_the_future() -> None:
    mha = _mha()
    x = torch.randn(1, 8, D)
    y = mha(x, is_causal=True)
    x2 = x.clone()
    x2[:, 5] += 3.0
    y2 = mha(x2, is_causal=True)
    torch.testing.assert_close(y2[:, :5], y[:, :5])
    assert not torch.allclose(y2[:, 5:], y[:, 5:])
    # Without the causal flag the change reaches every position.
    assert not torch.allclose(mha(x2)[:, :5], mha(x)[:, :5])


def test_padded_key_has_no_influence() -> None:
    mha = _mha()
    x = torch.randn(2, 6, D)
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 3] = False
    mask = build_attention_mask(valid, 6, 0, causal=False, device=x.device)
    y = mha(x, mask=mask)
    x2 = x.clone()
    x2[1, 3] = torch.randn(D) * 10
    y2 = mha(x2, mask=mask)
    others = [0, 1, 2, 4, 5]
    torch.testing.assert_close(y2[1, others], y[1, others])
    torch.testing.assert_close(y2[0], y[0])


def test_masked_context_key_has_no_influence() -> None:
    mha = _mha(cross=True)
    x, context = torch.randn(1, 4, D), torch.randn(1, 6, D)
    mask = build_attention_mask(torch.tensor([[True] * 4 + [False] * 2]), 4, 0, False, x.device)
    context2 = context.clone()
    context2[:, 4:] = torch.randn(2, D) * 10
    torch.testing.assert_close(mha(x, context2, mask=mask), mha(x, context, mask=mask))
    assert not torch.allclose(mha(x, context2), mha(x, context))


def test_build_attention_mask_shapes() -> None:
    cpu = torch.device("cpu")
    assert build_attention_mask(None, 5, 0, causal=False, device=cpu) is None
    assert build_attention_mask(None, 1, 7, causal=True, device=cpu) is None  # one new query sees all
    m = build_attention_mask(None, 4, 0, causal=True, device=cpu)
    assert m is not None and m.shape == (1, 1, 4, 4)
    assert torch.equal(m[0, 0], torch.ones(4, 4, dtype=torch.bool).tril())
    m = build_attention_mask(None, 2, 3, causal=True, device=cpu)  # 2 new queries after 3 cached keys
    assert m is not None and m.shape == (1, 1, 2, 5)
    assert m[0, 0].tolist() == [[True, True, True, True, False], [True] * 5]
    valid = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    m = build_attention_mask(valid, 1, 5, causal=True, device=cpu)
    assert m is not None and m.shape == (2, 1, 1, 6)
    assert m[1, 0, 0].tolist() == valid[1].tolist()
    m = build_attention_mask(valid[:, :4], 4, 0, causal=False, device=cpu)
    assert m is not None and m.shape == (2, 1, 4, 4)


def test_pad_query_attends_to_itself_so_no_nan() -> None:
    valid = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = build_attention_mask(valid, 4, 0, causal=True, device=torch.device("cpu"))
    assert mask is not None
    # The first query is padding and causal: its only allowed key is itself.
    assert mask[0, 0, 0].tolist() == [True, False, False, False]
    assert mask[0, 0, 1].tolist() == [False, True, False, False]
    assert mask[0, 0, 3].tolist() == [False, False, True, True]
    assert mask.any(-1).all()
    mha = _mha()
    out = mha(torch.randn(2, 4, D), mask=mask)
    assert torch.isfinite(out).all()


def _cache(b: int, max_len: int) -> KVCache:
    return KVCache(b, H, max_len, HD, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("chunks", [[1] * 8, [5, 1, 1, 1], [3, 4, 1], [8]])
@pytest.mark.parametrize("use_rotary", [False, True])
def test_kv_cache_incremental_equals_full(chunks: list[int], use_rotary: bool) -> None:
    mha = _mha(qk_norm=use_rotary)
    rope = RotaryEmbedding(HD, 16)
    x = torch.randn(2, sum(chunks), D)
    full = mha(x, is_causal=True, rotary=rope(torch.arange(x.shape[1])) if use_rotary else None)
    cache = _cache(2, 10)
    outs, start = [], 0
    for n in chunks:
        rot = rope(torch.arange(start, start + n)) if use_rotary else None
        outs.append(mha(x[:, start : start + n], is_causal=True, rotary=rot, kv_cache=cache))
        start += n
        assert cache.length == start
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_raises() -> None:
    cache = _cache(1, 4)
    k = torch.randn(1, H, 3, HD)
    cache.append(k, k)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(torch.randn(1, H, 2, HD), torch.randn(1, H, 2, HD))
    assert cache.length == 3
    mha = _mha()
    with pytest.raises(ValueError):
        mha(torch.randn(1, 2, D), is_causal=True, kv_cache=cache)


def test_kv_cache_append_returns_filled_prefix() -> None:
    cache = _cache(2, 6)
    k1, v1 = torch.randn(2, H, 2, HD), torch.randn(2, H, 2, HD)
    k2, v2 = torch.randn(2, H, 3, HD), torch.randn(2, H, 3, HD)
    cache.append(k1, v1)
    k, v = cache.append(k2, v2)
    torch.testing.assert_close(k, torch.cat([k1, k2], dim=2))
    torch.testing.assert_close(v, torch.cat([v1, v2], dim=2))


def test_kv_cache_reorder_selects_rows() -> None:
    cache = _cache(3, 4)
    k = torch.arange(3.0)[:, None, None, None].expand(3, H, 2, HD).clone()
    cache.append(k, -k)
    cache.reorder(torch.tensor([2, 0, 0]))
    assert cache.k.shape[0] == 3 and cache.length == 2
    assert cache.k[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0]
    assert cache.v[:, 0, 0, 0].tolist() == [-2.0, 0.0, 0.0]
    cache.reorder(torch.tensor([0]))  # beams may also shrink
    assert cache.k.shape == (1, H, 4, HD)


def test_d_model_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b10\b)(?=.*\b3\b)"):
        MultiHeadAttention(10, 3)


def test_dropout_only_in_training() -> None:
    mha = MultiHeadAttention(D, H, dropout=0.5)
    x = torch.randn(1, 6, D)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


def test_causal_attention_on_a_hand_computed_example() -> None:
    """Two positions, one head, identity projections: every number below is worked out by hand."""
    mha = MultiHeadAttention(2, 1, bias=False).eval()
    with torch.no_grad():
        mha.qkv_proj.weight.copy_(torch.cat([torch.eye(2)] * 3, dim=1))  # q = k = v = x
        mha.out_proj.weight.copy_(torch.eye(2))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, 2, 2)
    out = mha(x, is_causal=True)
    # Position 0 sees only itself. Position 1 scores its keys q1·k0 = 0 and q1·k1 = 1, scaled by 1/sqrt(2).
    w1 = math.exp(1 / math.sqrt(2)) / (1 + math.exp(1 / math.sqrt(2)))
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0.0], [1 - w1, w1]]]))
    # Without the causal mask position 0 also sees position 1, with the same two weights.
    torch.testing.assert_close(mha(x)[0, 0], torch.tensor([w1, 1 - w1]))


@pytest.mark.parametrize("cross", [False, True])
def test_cpu_autocast_attends_in_fp32(cross: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under CPU bf16 autocast the projections run in bf16 but attention itself in fp32 (its bf16 backward is
    # far slower on CPU): same result as fp32 to bf16 precision, and gradients reach every parameter.
    seen: list[torch.dtype] = []
    attend = attention.attend

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args: object) -> torch.Tensor:
        seen.extend((q.dtype, k.dtype, v.dtype))
        return attend(q, k, v, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "attend", recording)
    mha = _mha(cross=cross).train()
    x, context = torch.randn(2, 5, D), torch.randn(2, 3, D)
    expected = mha(x, context if cross else None, is_causal=not cross)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(x, context if cross else None, is_causal=not cross)
    assert out.dtype == torch.bfloat16 and seen[3:] == [torch.float32] * 3
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())


def _qkv(b: int, t_q: int, t_k: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(b, H, t, HD, dtype=dtype, requires_grad=True) for t in (t_q, t_k, t_k)]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: object) -> torch.Tensor:
    return attention.F.scaled_dot_product_attention(q, k, v, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("masking", ["none", "causal", "padding", "additive"])
def test_matmul_attention_equals_sdpa_forward_and_backward(masking: str) -> None:
    q, k, v = _qkv(3, 5, 5 if masking == "causal" else 7)
    mask: torch.Tensor | None = None
    if masking == "padding":
        mask = torch.ones(3, 1, 5, 7, dtype=torch.bool)
        mask[1, :, :, 4:] = False
    elif masking == "additive":
        mask = torch.randn(3, 1, 5, 7)
    expected = _sdpa(q, k, v, attn_mask=mask, is_causal=masking == "causal")
    grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    out = attention.attend_by_matmul(q, k, v, mask, 0.0, masking == "causal")
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), grads, strict=True):
        torch.testing.assert_close(got, want)


def test_matmul_attention_gives_a_query_without_keys_finite_values() -> None:
    # A NaN there would reach every row through the product with the values of masked positions.
    q, k, v = _qkv(1, 3, 4)
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool)
    mask[0, 0, 1] = False
    out = attention.attend_by_matmul(q, k, v, mask)
    assert torch.isfinite(out).all()
    keep = [0, 2]
    torch.testing.assert_close(out[:, :, keep], _sdpa(q[:, :, keep], k, v))


def test_matmul_attention_in_bf16_takes_its_softmax_in_fp32() -> None:
    q, k, v = _qkv(2, 6, 6)
    out = attention.attend_by_matmul(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.0, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _sdpa(q, k, v, is_causal=True), atol=0.03, rtol=0.03)


def test_matmul_attention_refuses_a_mask_with_is_causal() -> None:
    q, k, v = _qkv(1, 3, 3)
    with pytest.raises(ValueError, match="not both"):
        attention.attend_by_matmul(q, k, v, torch.ones(3, 3, dtype=torch.bool), 0.0, True)


def test_matmul_attention_dropout() -> None:
    q, k, v = _qkv(2, 6, 6)
    torch.manual_seed(0)
    dropped = attention.attend_by_matmul(q, k, v, None, 0.5)
    assert torch.isfinite(dropped).all() and not torch.allclose(dropped, attention.attend_by_matmul(q, k, v))


def test_uses_matmul_for_several_queries_over_few_keys_on_a_cpu_with_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the module's own rule, not the fixture's
    few, many = torch.empty(2, H, attention.MATMUL_MAX_KEYS, HD), torch.empty(2, H, attention.MATMUL_MAX_KEYS + 1, HD)
    queries, one = torch.empty(2, H, 8, HD), torch.empty(2, H, 1, HD)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert attention.uses_matmul(queries, few)
        assert attention.uses_matmul(queries[:1], few[:1])  # a row alone is attended as in its batch
        assert not attention.uses_matmul(queries, many)  # long sequences: SDPA's flash kernel is faster
        assert not attention.uses_matmul(one, few)  # a decoding step
        torch.set_num_threads(1)
        assert not attention.uses_matmul(queries, few)
    finally:
        torch.set_num_threads(threads)


def test_attention_compiles_without_graph_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reading the thread count is not traceable: under torch.compile the rule must not reach it.
    monkeypatch.undo()
    import torch._dynamo

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_mha())(torch.randn(2, 8, D), is_causal=True)
    assert explanation.graph_break_count == 0
