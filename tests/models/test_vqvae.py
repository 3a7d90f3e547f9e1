"""VQ-VAE image tokenizer: shapes, straight-through gradients, EMA codebook, k-means init, dead-code restarts,
usage statistics, cosine lookup, checkpoints and codebook agreement across processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genloom.checkpoint import save_checkpoint
from genloom.config import config_from_dict, config_to_dict
from genloom.errors import GenloomError
from genloom.models.vq_colour import compose, value_and_chroma
from genloom.models.vqvae import PRESETS, VQVAE, VQConfig, preset
from genloom.registry import load_language_model, load_pretrained


def _tiny(**overrides) -> VQConfig:
    settings = dict(resolution=16, widths=(8, 16), res_blocks=1, norm_groups=4, codebook_size=16, code_dim=4)
    settings.update(overrides)
    return VQConfig(**settings)  # type: ignore[arg-type]


def _images(b: int = 4, r: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, r, r) * 2 - 1


def test_presets_and_config_validation() -> None:
    for name, config in PRESETS.items():
        assert config.grid_size == config.resolution // 2**config.downsamplings, name
    assert preset("vq-small").grid_size == 8 and preset("vq-tiny").grid_size == 8 and preset("vq-digits").grid_size == 4
    # JSON turns the widths tuple into a list; loading turns it back.
    config = preset("vq-tiny", codebook_size=64)
    assert config_from_dict(VQConfig, config_to_dict(config) | {"widths": [16, 32, 32]}) == config
    with pytest.raises(GenloomError, match="unknown preset 'vq-huge'"):
        preset("vq-huge")
    with pytest.raises(ValueError, match=r"resolution \(30\) must be divisible by 4"):
        VQConfig(resolution=30, widths=(32, 32, 32), norm_groups=8)
    with pytest.raises(ValueError, match=r"norm_groups \(32\)"):
        VQConfig(widths=(16, 32, 32))
    with pytest.raises(ValueError, match=r"ema_decay \(1.0\)"):
        _tiny(ema_decay=1.0)
    with pytest.raises(ValueError, match=r"codebook_size \(0\)"):
        _tiny(codebook_size=0)


def test_encode_decode_and_forward_shapes() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny()).eval()
    images = _images()
    assert model.grid_size == 8
    codes = model.encode(images)
    assert codes.shape == (4, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    decoded = model.decode(codes)
    assert decoded.shape == (4, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1
    reconstruction, vq_loss, forward_codes = model(images)
    assert reconstruction.shape == (4, 3, 16, 16) and vq_loss.dim() == 0
    assert torch.equal(forward_codes, codes)
    torch.testing.assert_close(reconstruction.clamp(-1, 1), decoded)
    # Parameters only: the codebook is a buffer.
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert "quantizer.codebook" not in dict(model.named_parameters())
    with pytest.raises(GenloomError, match=r"expected images of shape \(B, 3, 16, 16\), got \(4, 3, 32, 32\)"):
        model.encode(_images(r=32))
    with pytest.raises(GenloomError, match=r"codes must be in \[0, 16\)"):
        model.decode(torch.full((1, 8, 8), 16))


def test_patch_encoder_codes_depend_only_on_their_own_patch() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny(encoder="patch")).eval()  # 16x16 -> 8x8 codes of 2x2 patches
    images = _images(b=1)
    changed = images.clone()
    changed[:, :, :2, :2] = -images[:, :, :2, :2]  # only the top-left patch
    z, z_changed = model.encoder(images), model.encoder(changed)
    assert z.shape == (1, 4, 8, 8)
    assert not torch.allclose(z[..., 0, 0], z_changed[..., 0, 0])
    torch.testing.assert_close(z[..., 1:, :], z_changed[..., 1:, :])  # every other patch: the same vector
    torch.testing.assert_close(z[..., 0, 1:], z_changed[..., 0, 1:])
    # Equal patches anywhere in the image get equal codes.
    tiled = images[:, :, :2, :2].repeat(1, 1, 8, 8)
    assert model.encode(tiled).unique().numel() == 1
    # The convolutional encoder's codes see their neighbours.
    conv = VQVAE(_tiny()).eval()
    assert not torch.allclose(conv.encoder(images)[..., 0, 1], conv.encoder(changed)[..., 0, 1])
    reconstruction, _, _ = VQVAE(_tiny(encoder="patch"))(images)
    assert reconstruction.shape == images.shape
    with pytest.raises(ValueError, match="encoder"):
        _tiny(encoder="vit")


def _flat_colour_images() -> torch.Tensor:
    """(2, 3, 16, 16) in [-1, 1]: black, a red 4x4 block on the patch lattice, a dimmed green one, a blue corner."""
    unit = torch.zeros(2, 3, 16, 16)
    unit[0, 0, 4:8, 4:8] = 1.0  # red
    unit[0, 1, 8:12, 0:4] = 0.5  # green at half brightness
    unit[1, 2, 0:1, 14:16] = 1.0  # blue, two pixels of one patch
    return unit * 2 - 1


def test_value_and_chroma_split_flat_colours_exactly() -> None:
    images = _flat_colour_images()
    value, chroma = value_and_chroma(images, 4)
    assert value.shape == (2, 1, 16, 16) and chroma.shape == (2, 3, 4, 4)
    torch.testing.assert_close(chroma[0, :, 1, 1], torch.tensor([1.0, 0.0, 0.0]))  # the red block's patch
    torch.testing.assert_close(chroma[0, :, 2, 0], torch.tensor([0.0, 1.0, 0.0]))  # green whatever its brightness
    torch.testing.assert_close(chroma[1, :, 0, 3], torch.tensor([0.0, 0.0, 1.0]))  # a partly lit patch
    assert torch.count_nonzero(chroma[0, :, 0, 0]) == 0  # black patch: no colour
    # Brightness x patch colour gives the image back.
    torch.testing.assert_close(compose(value, F.interpolate(chroma, scale_factor=4, mode="nearest")), images)


def test_colour_factorised_tokens() -> None:
    torch.manual_seed(0)
    config = _tiny(resolution=16, widths=(8, 16, 16), encoder="patch", codebook_size=6, colour_codes=5)
    assert config.vocab_size == 30 and config.patch_size == 4
    model = VQVAE(config)
    images = _flat_colour_images()
    model.train()
    model(images)  # k-means initialises both codebooks
    model.eval()
    codes = model.encode(images)
    assert codes.shape == (2, 4, 4) and int(codes.max()) < 30
    shapes, colours = codes // 5, codes % 5
    # The shape code sees only brightness: the same lit block in another colour keeps its shape code.
    recoloured = images.clone()
    recoloured[0, :, 4:8, 4:8] = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]  # the red block turned blue
    codes2 = model.encode(recoloured)
    assert int(codes2[0, 1, 1]) // 5 == int(shapes[0, 1, 1]) and int(codes2[0, 1, 1]) % 5 != int(colours[0, 1, 1])
    assert torch.equal(codes2[1], codes[1])
    reconstruction, vq_loss, forward_codes = model(images)
    assert torch.equal(forward_codes, codes) and vq_loss.dim() == 0
    torch.testing.assert_close(reconstruction.clamp(-1, 1), model.decode(codes))
    with pytest.raises(GenloomError, match=r"codes must be in \[0, 30\)"):
        model.decode(torch.full((1, 4, 4), 30))
    with pytest.raises(ValueError, match="colour_codes needs the patch encoder"):
        _tiny(colour_codes=4)
    with pytest.raises(ValueError, match=r"colour_codes \(-1\)"):
        _tiny(encoder="patch", colour_codes=-1)


def test_straight_through_gradient_trains_the_encoder() -> None:
    """Through the whole model (quantizer in between), a pure reconstruction loss reaches the encoder's first layer."""
    torch.manual_seed(0)
    model = VQVAE(_tiny())
    model(_images())[0].pow(2).mean().backward()
    first = model.encoder.layers[0].weight.grad
    assert first is not None and float(first.abs().sum()) > 0


def test_eval_mode_and_encode_leave_the_codebook_alone() -> None:
    torch.manual_seed(0)
    model = VQVAE(_tiny())
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode(_images())  # train mode, but encode never learns
    model.eval()
    model(_images())
    after = model.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not bool(model.quantizer.initialized) and int(model.quantizer.usage.sum()) == 0


def test_checkpoint_without_tokenizer_roundtrips_through_the_registry(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = _tiny()
    model = VQVAE(config)
    model(_images(8))  # train mode: k-means init + one EMA update, so the buffers are not the defaults
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, "vqvae", config, None)
    assert not any(p.name.startswith(("tokenizer", "vocab", "char")) for p in (tmp_path / "ckpt").iterdir())
    loaded = load_pretrained(tmp_path / "ckpt")
    assert loaded.family == "vqvae" and loaded.tokenizer is None and loaded.config == config
    assert isinstance(loaded.model, VQVAE) and not loaded.model.training
    assert bool(loaded.model.quantizer.initialized)
    images = _images()
    torch.testing.assert_close(loaded.model.quantizer.codebook, model.quantizer.codebook, rtol=0, atol=0)
    assert torch.equal(loaded.model.encode(images), model.encode(images))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images)[0], model(images)[0], rtol=0, atol=0)
    with pytest.raises(GenloomError, match="not a language model"):
        load_language_model(tmp_path / "ckpt")
