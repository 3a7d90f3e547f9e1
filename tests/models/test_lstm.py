"""LSTM seq2seq: shapes with and without attention, step-by-step decoding, source padding, a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.models.lstm import PRESETS, LSTMConfig, LSTMSeq2Seq, count_parameters, preset
from genloom.models.seq2seq import count_parameters as count_transformer_parameters
from genloom.models.seq2seq import preset as transformer_preset

V, PAD = 40, 0


def _tiny(**overrides: object) -> LSTMConfig:
    base: dict[str, object] = dict(vocab_size=V, embed_dim=16, hidden_size=24, dropout=0.0, pad_id=PAD)
    base.update(overrides)
    return LSTMConfig(**base)  # type: ignore[arg-type]


def _model(config: LSTMConfig) -> LSTMSeq2Seq:
    torch.manual_seed(0)
    model = LSTMSeq2Seq(config).eval()
    with torch.no_grad():  # larger than default weights, so that attention weights are far from uniform
        for p in model.parameters():
            p.mul_(3.0 if p.dim() == 2 else 1.0)
    return model


VARIANTS = {
    "attention-bi": dict(attention=True, bidirectional=True),
    "attention-uni": dict(attention=True, bidirectional=False),
    "plain-bi": dict(attention=False, bidirectional=True),
    "plain-uni-untied": dict(attention=False, bidirectional=False, tie_embeddings=False),
}


def test_lstm_small_is_about_transformer_small() -> None:
    n = count_parameters(preset("lstm-small"))
    reference = count_transformer_parameters(transformer_preset("transformer-small"))
    print(f"lstm-small: {n:,} parameters; transformer-small: {reference:,}")
    assert n == 7_606_536
    assert abs(n - reference) / reference < 0.01


def test_config_validation_and_presets() -> None:
    assert set(PRESETS) == {"lstm-small"}
    with pytest.raises(ValueError, match="hidden_size"):
        _tiny(hidden_size=0)
    with pytest.raises(ValueError, match="pad_id"):
        _tiny(pad_id=-1)
    with pytest.raises(GenloomError, match="nope"):
        preset("nope")
    assert preset("lstm-small", vocab_size=9).vocab_size == 9


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes(variant: str) -> None:
    cfg = _tiny(**VARIANTS[variant])
    model = _model(cfg)
    src, tgt = torch.randint(1, V, (3, 7)), torch.randint(1, V, (3, 5))
    with torch.no_grad():
        memory = model.encode(src)
        assert memory.shape == (3, 7, cfg.encoder_dim)
        assert model(src, tgt).shape == (3, 5, V)
        logits, (h, c) = model.decode_step(tgt[:, :1], None, memory, None)
    assert logits.shape == (3, V)
    assert h.shape == c.shape == (cfg.n_decoder_layers, 3, cfg.hidden_size)
    assert (model.attention is None) == (not cfg.attention)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decode_step_equals_full_decode(variant: str) -> None:
    model = _model(_tiny(**VARIANTS[variant]))
    src = torch.tensor([[5, 6, 7, 8, 9], [11, 12, 13, PAD, PAD]])
    tgt = torch.tensor([[1, 20, 21, 22, 23, 24], [1, 25, 26, 27, 28, 29]])
    with torch.no_grad():
        valid = model.source_key_valid(src)
        memory = model.encode(src, valid)
        full = model.decode(tgt, memory, valid)
        state = None
        steps = []
        for t in range(tgt.shape[1]):
            logits, state = model.decode_step(tgt[:, t : t + 1], state, memory, valid)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_source_padding_does_not_change_outputs(variant: str) -> None:
    model = _model(_tiny(**VARIANTS[variant]))
    sources = [[5, 6, 7, 8, 9], [11, 12, 13]]
    tgt = torch.tensor([[1, 20, 21, 22], [1, 23, 24, 25]])
    width = 7
    src = torch.tensor([s + [PAD] * (width - len(s)) for s in sources])
    with torch.no_grad():
        batch = model(src, tgt)
        for row, s in enumerate(sources):
            alone = model(torch.tensor([s]), tgt[row : row + 1])
            torch.testing.assert_close(batch[row], alone[0], atol=1e-5, rtol=1e-5)
        memory = model.encode(src)
        assert torch.all(memory[1, 3:] == 0)
        # Treating the padding as tokens changes the short sentence's outputs: the test has teeth.
        as_tokens = model.decode(tgt, model.encode(src, torch.ones_like(src, dtype=torch.bool)), None)
        assert not torch.allclose(as_tokens[1], batch[1], atol=1e-4)


def test_decoder_is_causal() -> None:
    model = _model(_tiny())
    src = torch.tensor([[5, 6, 7]])
    tgt = torch.tensor([[1, 20, 21, 22, 23]])
    changed = tgt.clone()
    changed[:, 2:] = torch.tensor([30, 31, 32])
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :2], b[:, :2])
    assert not torch.allclose(a[:, 2:], b[:, 2:], atol=1e-4)


def test_tied_embeddings_share_storage() -> None:
    model = LSTMSeq2Seq(_tiny())
    assert model.output.weight.data_ptr() == model.src_embedding.weight.data_ptr()
    assert model.tgt_embedding.weight is model.src_embedding.weight
    untied = LSTMSeq2Seq(_tiny(tie_embeddings=False))
    assert untied.num_parameters() - model.num_parameters() == 2 * V * 16


@pytest.mark.parametrize("attention", [True, False])
def test_tiny_model_learns_to_reverse_digits(attention: bool, reverse_digits) -> None:
    src, tgt_in, targets = reverse_digits
    torch.manual_seed(0)
    model = LSTMSeq2Seq(_tiny(vocab_size=13, embed_dim=32, hidden_size=32, attention=attention))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model.loss(src, tgt_in, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.02
    model.eval()
    with torch.no_grad():
        valid = model.source_key_valid(src)
        memory = model.encode(src, valid)
        token, state, generated = torch.ones(4, 1, dtype=torch.long), None, []
        for _ in range(targets.shape[1]):
            logits, state = model.decode_step(token, state, memory, valid)
            token = logits.argmax(-1, keepdim=True)
            generated.append(token)
    greedy = torch.cat(generated, dim=1)
    real = targets != -100
    assert torch.equal(greedy[real], targets[real])
