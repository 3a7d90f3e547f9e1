"""The Diffusion Transformer: shapes, adaLN-Zero's identity start, patchify round trip, caption conditioning that
ignores padding."""

from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.models.dit import DiT, patchify, preset, unpatchify
from genloom.nn.adaln import AdaLNBlock, timestep_embedding

PAD = 0


def _model() -> DiT:
    torch.manual_seed(0)
    return DiT(preset("dit-tiny", text_vocab_size=20, text_len=8, pad_id=PAD)).eval()


def _captions() -> torch.Tensor:
    return torch.tensor([[1, 5, 6, 2, PAD, PAD, PAD, PAD], [1, 7, 2, PAD, PAD, PAD, PAD, PAD]])


def test_output_has_the_latent_shape_and_starts_at_zero():
    model = _model()
    latents = torch.randn(2, 4, 8, 8)
    out = model(latents, torch.tensor([10, 900]), _captions())
    assert out.shape == latents.shape
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero: the final projection starts at zero


def test_blocks_start_as_the_identity_and_learn():
    block = AdaLNBlock(16, 2, 32, cross_attention=False)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    torch.testing.assert_close(block(x, c), x)
    block(x, c).pow(2).sum().backward()
    assert block.modulation.weight.grad is not None and block.modulation.weight.grad.abs().sum() > 0


def _perturbed() -> DiT:
    model = _model()
    with torch.no_grad():  # past the zero start, so outputs depend on their inputs
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model


def test_patchify_lays_patches_out_row_major_and_round_trips():
    x = torch.randn(2, 4, 8, 8)
    patches = patchify(x, 2)  # (2, 16, 16)
    assert patches.shape == (2, 16, 16)
    torch.testing.assert_close(patches[:, 3], x[:, :, 0:2, 6:8].reshape(2, -1))  # row 0, column 3
    torch.testing.assert_close(unpatchify(patches, 2, 4), x)


def test_the_caption_conditions_and_its_padding_does_not():
    model = _perturbed()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    a = torch.tensor([[1, 5, 6, 2, PAD, PAD, PAD, PAD]])
    b = torch.tensor([[1, 7, 6, 2, PAD, PAD, PAD, PAD]])
    with torch.no_grad():
        assert not torch.allclose(model(x, t, a), model(x, t, b))
        shorter = DiT(model.config)
        shorter.load_state_dict(model.state_dict())
        # Fewer pads, the same output, to float32 rounding: the masked sums run over other lengths (an AVX2 machine
        # differs by 1.4e-5 on an output of 2.9), where changing one caption word moves the output by up to 1.9.
        torch.testing.assert_close(model(x, t, a), shorter.eval()(x, t, a[:, :6]), rtol=1e-5, atol=1e-5)


def test_timestep_embedding_is_sinusoidal():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert e.shape == (2, 8) and torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_bad_configs_name_the_value():
    with pytest.raises(GenloomError, match="divisible by patch_size"):
        preset("dit-tiny", latent_size=7)
