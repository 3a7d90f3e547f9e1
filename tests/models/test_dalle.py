"""The DALL-E style Transformer: cached decoding, causality, separate heads, loss weighting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genloom.errors import GenloomError
from genloom.models.dalle import Dalle, DalleConfig, dalle_loss, preset

PAD = 1


def tiny(**overrides: object) -> Dalle:
    cfg = DalleConfig(
        text_vocab_size=40, text_len=6, image_vocab_size=24, grid_size=3, d_model=32, n_layers=2, n_heads=4,
        d_ff=64, pad_id=PAD, **overrides,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    model = Dalle(cfg).eval()
    with torch.no_grad():  # larger weights than the init, so outputs differ visibly between inputs
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def batch(model: Dalle, b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    cfg = model.config
    text = torch.randint(3, cfg.text_vocab_size, (b, cfg.text_len), generator=g)
    text[0, 4:] = PAD  # a padded caption
    image = torch.randint(0, cfg.image_vocab_size, (b, cfg.image_len), generator=g)
    return text, image


def test_shapes_and_presets() -> None:
    model = tiny()
    text, image = batch(model)
    text_logits, image_logits = model(text, image)
    assert text_logits.shape == (3, 5, 40)  # predicts text[:, 1:]
    assert image_logits.shape == (3, 9, 24)  # predicts every image token
    for name in ("dalle-tiny", "dalle-small", "dalle-compact"):
        assert preset(name).image_len == preset(name).grid_size ** 2


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_cached_decoding_equals_full_forward(positional: str) -> None:
    model = tiny(image_positional=positional)
    text, image = batch(model)
    _, full = model(text, image)  # (B, N, V)
    caches = model.make_kv_caches(len(text))
    steps = [model.next_image_logits(text, None, caches)]
    for j in range(model.config.image_len - 1):
        steps.append(model.next_image_logits(None, image[:, j : j + 1], caches))
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # Without a cache, recomputing each prefix gives the same numbers too.
    for j in (0, 4, 8):
        torch.testing.assert_close(model.next_image_logits(text, image[:, :j]), full[:, j], atol=1e-5, rtol=1e-5)


def test_causal_image_logits_ignore_later_tokens() -> None:
    model = tiny()
    text, image = batch(model)
    text_logits, image_logits = model(text, image)
    t = 4
    changed = image.clone()
    changed[:, t:] = (changed[:, t:] + 7) % model.config.image_vocab_size
    text_logits2, image_logits2 = model(text, changed)
    torch.testing.assert_close(image_logits2[:, : t + 1], image_logits[:, : t + 1])  # position t sees tokens < t
    assert not torch.allclose(image_logits2[:, t + 1 :], image_logits[:, t + 1 :])
    torch.testing.assert_close(text_logits2, text_logits)  # the caption never sees the image
    # And a caption token only sees earlier caption tokens.
    text2 = text.clone()
    text2[:, 3] = 5 if int(text[0, 3]) != 5 else 6
    text_logits3, _ = model(text2, image)
    torch.testing.assert_close(text_logits3[:, :3], text_logits[:, :3])


def test_text_and_image_heads_are_separate() -> None:
    model = tiny()
    text, image = batch(model)
    _, image_logits = model(text, image)
    with torch.no_grad():
        model.text_head.weight.zero_()
    text_logits2, image_logits2 = model(text, image)
    torch.testing.assert_close(image_logits2, image_logits)
    assert torch.count_nonzero(text_logits2) == 0
    with torch.no_grad():
        model.image_head.weight.mul_(2.0)
    _, image_logits3 = model(text, image)
    torch.testing.assert_close(image_logits3, 2 * image_logits)


def test_factorised_image_tokens_get_independent_shape_and_colour_probabilities() -> None:
    model = tiny(colour_codes=4)  # 24 tokens = 6 shape codes x 4 colour codes
    assert model.image_embedding.num_embeddings == 6 and model.colour_head is not None
    text, image = batch(model)
    _, logits = model(text, image)  # (B, N, 24)
    assert logits.shape == (3, 9, 24)
    joint = logits.view(3, 9, 6, 4).exp()  # token s * 4 + c
    torch.testing.assert_close(joint.sum((-1, -2)), torch.ones(3, 9))  # normalised log-probabilities
    p_shape, p_colour = joint.sum(-1), joint.sum(-2)
    torch.testing.assert_close(joint, p_shape[..., :, None] * p_colour[..., None, :])  # independent given context
    # A token's embedding is its shape code's embedding plus its colour code's.
    assert model.colour_embedding is not None
    shapes, colours = torch.tensor([[1, 3]]), torch.tensor([[2, 0]])
    torch.testing.assert_close(
        model.embed_image(shapes * 4 + colours) - model.image_positions_at(torch.arange(2)),
        model.image_embedding(shapes) + model.colour_embedding(colours),
    )
    # Cached decoding still equals the full forward pass.
    caches = model.make_kv_caches(len(text))
    steps = [model.next_image_logits(text, None, caches)]
    for j in range(model.config.image_len - 1):
        steps.append(model.next_image_logits(None, image[:, j : j + 1], caches))
    torch.testing.assert_close(torch.stack(steps, dim=1), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"colour_codes \(5\) must be 0 or divide image_vocab_size \(24\)"):
        tiny(colour_codes=5)


def test_blank_patches_have_no_colour_and_lit_ones_are_never_black() -> None:
    model = tiny(colour_codes=4, blank_token=2 * 4 + 3)  # shape code 2 is the blank patch, colour code 3 black
    text, image = batch(model)
    _, logits = model(text, image)
    joint = logits.view(3, 9, 6, 4).exp()
    torch.testing.assert_close(joint.sum((-1, -2)), torch.ones(3, 9))
    assert torch.count_nonzero(joint[..., 2, :3]) == 0  # a blank patch in colour: impossible
    assert torch.count_nonzero(joint[..., [0, 1, 3, 4, 5], 3]) == 0  # a lit patch in black: impossible
    # Lit patches: shape and colour still independent given the context.
    lit = joint[..., [0, 1, 3, 4, 5], :3]
    p_lit = lit.sum((-1, -2), keepdim=True)
    torch.testing.assert_close(lit / p_lit, (lit.sum(-1, keepdim=True) / p_lit) * (lit.sum(-2, keepdim=True) / p_lit))
    # Guidance keeps impossible tokens impossible (no NaN from -inf - -inf).
    guided = logits[0] + 3.0 * (logits[0] - logits[1])
    assert torch.isfinite(guided).all() and torch.softmax(guided, -1).view(9, 6, 4)[:, 2, :3].max() == 0
    with pytest.raises(ValueError, match=r"blank_token \(5\) must be -1, or a token below"):
        tiny(blank_token=5)


def test_caption_tokens_attending_only_to_themselves() -> None:
    model = tiny(caption_attention="self")
    text, image = batch(model)
    text_logits, image_logits = model(text, image)
    changed = text.clone()
    changed[:, 2] = 5 if int(text[0, 2]) != 5 else 6
    text_logits2, image_logits2 = model(changed, image)
    # Caption position t's output depends on token t alone (all but the last, which predicts image token 0):
    # only position 2's prediction of the caption changes ...
    torch.testing.assert_close(text_logits2[:, :2], text_logits[:, :2])
    torch.testing.assert_close(text_logits2[:, 3:], text_logits[:, 3:])
    assert not torch.allclose(text_logits2[:, 2], text_logits[:, 2])
    # ... while every image token still reads the whole caption.
    assert not torch.allclose(image_logits2[:, 0], image_logits[:, 0])
    caches = model.make_kv_caches(len(text))
    steps = [model.next_image_logits(text, None, caches)]
    for j in range(model.config.image_len - 1):
        steps.append(model.next_image_logits(None, image[:, j : j + 1], caches))
    torch.testing.assert_close(torch.stack(steps, dim=1), image_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="caption_attention"):
        tiny(caption_attention="bidirectional")


def test_loss_weighting_and_padding() -> None:
    model = tiny()
    text, image = batch(model)
    text_logits, image_logits = model(text, image)
    for w in (0.0, 1.0, 7.0):
        loss = dalle_loss(text_logits, image_logits, text, image, PAD, w)
        torch.testing.assert_close(loss.total, (loss.text + w * loss.image) / (1 + w))
    loss = dalle_loss(text_logits, image_logits, text, image, PAD, 7.0)
    targets = text[:, 1:]
    keep = targets != PAD
    expected_text = F.cross_entropy(text_logits[keep], targets[keep])  # pads are not predicted
    torch.testing.assert_close(loss.text, expected_text)
    torch.testing.assert_close(loss.image, F.cross_entropy(image_logits.reshape(-1, 24), image.reshape(-1)))
    # Weight 7 puts 7/8 of the gradient on image tokens.
    assert torch.isclose(loss.total, (loss.text + 7 * loss.image) / 8)


def test_bad_config_and_inputs() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DalleConfig(d_model=30, n_heads=4)
    model = tiny()
    text, image = batch(model)
    with pytest.raises(GenloomError, match="captions must be 6 tokens"):
        model(text[:, :5], image)
