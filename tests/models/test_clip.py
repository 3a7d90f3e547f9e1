"""The CLIP-style reranker: shapes, unit embeddings, factorised image embedding, padding, config checks."""

from __future__ import annotations

import pytest
import torch

from genloom.models.clip import Clip, ClipConfig, preset

CONFIG = ClipConfig(text_vocab_size=40, text_len=6, pad_id=1, image_vocab_size=12, colour_codes=4, grid_size=2,
                    d_model=16, n_layers=1, n_heads=2, d_ff=32, embed_dim=8)


def _model(config: ClipConfig = CONFIG) -> Clip:
    torch.manual_seed(0)
    return Clip(config).eval()


def test_embeddings_are_unit_vectors_and_logits_score_every_pair() -> None:
    model = _model()
    text = torch.tensor([[2, 5, 6, 3, 1, 1], [2, 7, 3, 1, 1, 1], [2, 8, 9, 10, 3, 1]])
    codes = torch.randint(12, (2, 4))
    t, i = model.encode_text(text), model.encode_image(codes.view(2, 2, 2))  # a (B, g, g) grid is flattened
    assert t.shape == (3, 8) and i.shape == (2, 8)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    logits = model(text, codes)
    assert logits.shape == (2, 3)  # image i against caption j
    torch.testing.assert_close(logits, model.logit_scale.exp() * i @ t.T)
    torch.testing.assert_close(model.score(text[:2], codes), (t[:2] * i).sum(-1))


def test_factorised_image_tokens_embed_shape_plus_colour() -> None:
    model = _model()
    codes = torch.tensor([[5, 0, 11, 4]])  # token s * 4 + c
    shape, colour = codes // 4, codes % 4
    assert model.colour_embedding is not None
    expected = model.image_embedding(shape) + model.colour_embedding(colour)
    captured: list[torch.Tensor] = []
    model.image_encoder.transformer.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    model.encode_image(codes)
    positions = model.row_embedding(model.image_rows) + model.col_embedding(model.image_cols)
    torch.testing.assert_close(captured[0], expected + positions)


def test_padding_is_left_out_of_the_caption_mean() -> None:
    model = _model()
    text = torch.tensor([[2, 5, 3, 1, 1, 1]])
    captured: list[torch.Tensor] = []
    model.text_encoder.projection.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    model.encode_text(text)
    hidden = model.text_encoder.transformer(model.text_embedding(text) + model.text_positions.weight)
    torch.testing.assert_close(captured[0], hidden[:, :3].mean(1))


def test_config_checks_and_presets() -> None:
    with pytest.raises(ValueError, match="divide image_vocab_size"):
        ClipConfig(image_vocab_size=10, colour_codes=4)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ClipConfig(d_model=30, n_heads=4)
    small = preset("clip-small", text_vocab_size=300, image_vocab_size=96, colour_codes=8)
    assert 0.5e6 < Clip(small).num_parameters() < 1.5e6
