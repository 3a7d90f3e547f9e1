"""Transformer blocks (pre-/post-norm, cross-attention, dropout) and the MLP variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.nn import MLP, BlockConfig, RMSNorm, TransformerBlock, TransformerStack, make_norm

D, H, FF = 16, 4, 32


def _block(**kwargs: object) -> TransformerBlock:
    torch.manual_seed(0)
    return TransformerBlock(BlockConfig(d_model=D, n_heads=H, d_ff=FF, **kwargs)).eval()  # type: ignore[arg-type]


def _zero_sublayer_outputs(block: TransformerBlock) -> None:
    with torch.no_grad():
        for lin in (block.attn.out_proj, block.mlp.fc_out):
            lin.weight.zero_()
            lin.bias.zero_()


def test_pre_norm_is_identity_when_sublayers_output_zero() -> None:
    block = _block(norm_first=True)
    _zero_sublayer_outputs(block)
    x = torch.randn(2, 5, D) * 4 + 2
    torch.testing.assert_close(block(x, is_causal=True), x)


def test_post_norm_output_is_normalised() -> None:
    block = _block(norm_first=False)
    x = torch.randn(2, 5, D) * 4 + 2
    y = block(x, is_causal=True)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    _zero_sublayer_outputs(block)
    ln = torch.nn.functional.layer_norm
    torch.testing.assert_close(block(x), ln(ln(x, (D,)), (D,)), atol=1e-5, rtol=1e-5)


def test_pre_norm_output_is_not_normalised() -> None:
    block = _block(norm_first=True)
    x = torch.randn(2, 5, D) * 4 + 2
    y = block(x, is_causal=True)
    assert (y.mean(-1) - 2).abs().mean() < 1.0  # the residual stream carries the input through
    assert y.std(-1).mean() > 2.0


def test_pre_and_post_norm_differ_with_same_weights() -> None:
    pre, post = _block(norm_first=True), _block(norm_first=False)
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 4, D)
    assert not torch.allclose(pre(x), post(x))


def test_stack_final_norm_only_for_pre_norm() -> None:
    cfg = BlockConfig(d_model=D, n_heads=H, d_ff=FF)
    assert TransformerStack(cfg, 2).final_norm is not None
    cfg_post = BlockConfig(d_model=D, n_heads=H, d_ff=FF, norm_first=False)
    assert TransformerStack(cfg_post, 2).final_norm is None


def test_cross_attention_block_uses_context() -> None:
    block = _block(cross_attention=True)
    assert block.cross_attn is not None and block.cross_attn.cross
    x, context = torch.randn(2, 4, D), torch.randn(2, 7, D)
    y = block(x, is_causal=True, context=context)
    assert y.shape == (2, 4, D)
    y_same = block(x, is_causal=True, context=context.clone())
    torch.testing.assert_close(y_same, y)
    y2 = block(x, is_causal=True, context=torch.randn(2, 7, D))
    assert not torch.allclose(y2, y)
    y3 = block(x, is_causal=True, context=torch.randn(2, 3, D))  # another context length
    assert y3.shape == (2, 4, D)


def test_cross_attention_context_mask() -> None:
    block = _block(cross_attention=True)
    x, context = torch.randn(1, 4, D), torch.randn(1, 6, D)
    cmask = torch.tensor([True] * 4 + [False] * 2)[None, None, None, :]  # (1, 1, 1, S)
    context2 = context.clone()
    context2[:, 4:] += 5.0
    torch.testing.assert_close(
        block(x, context=context2, context_mask=cmask), block(x, context=context, context_mask=cmask)
    )


def test_block_without_cross_attention_ignores_context() -> None:
    block = _block()
    assert block.cross_attn is None
    x = torch.randn(1, 3, D)
    torch.testing.assert_close(block(x, context=torch.randn(1, 5, D)), block(x))


def test_dropout_only_in_train_mode() -> None:
    block = _block(dropout=0.5)
    x = torch.randn(2, 6, D)
    block.eval()
    torch.testing.assert_close(block(x, is_causal=True), block(x, is_causal=True))
    block.train()
    assert not torch.allclose(block(x, is_causal=True), block(x, is_causal=True))
    no_drop = _block(dropout=0.0).train()
    torch.testing.assert_close(no_drop(x, is_causal=True), no_drop(x, is_causal=True))


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_mlp_shapes(activation: str) -> None:
    mlp = MLP(D, FF, activation)  # type: ignore[arg-type]
    width = 2 * FF if activation == "swiglu" else FF
    assert mlp.fc_in.weight.shape == (D, width)
    assert mlp.fc_out.weight.shape == (FF, D)
    assert mlp(torch.randn(2, 3, D)).shape == (2, 3, D)


def test_mlp_formulas() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, D)
    for activation, fn in [
        ("gelu", F.gelu),
        ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh")),
        ("relu", F.relu),
    ]:
        mlp = MLP(D, FF, activation)  # type: ignore[arg-type]
        torch.testing.assert_close(mlp(x), mlp.fc_out(fn(mlp.fc_in(x))))
    mlp = MLP(D, FF, "swiglu")
    w, b = mlp.fc_in.weight, mlp.fc_in.bias
    gate = x @ w[:, :FF] + b[:FF]
    up = x @ w[:, FF:] + b[FF:]
    expected = (gate * torch.sigmoid(gate) * up) @ mlp.fc_out.weight + mlp.fc_out.bias
    torch.testing.assert_close(mlp(x), expected)
    with pytest.raises(ValueError):
        MLP(D, FF, "tanh")  # type: ignore[arg-type]


def test_norms() -> None:
    x = torch.randn(2, 3, D) * 3
    rms = RMSNorm(D)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert isinstance(make_norm("layernorm", D), torch.nn.LayerNorm)
    assert make_norm("layernorm", D, bias=False).bias is None
    assert isinstance(make_norm("rmsnorm", D), RMSNorm)
    with pytest.raises(ValueError):
        make_norm("batchnorm", D)  # type: ignore[arg-type]
