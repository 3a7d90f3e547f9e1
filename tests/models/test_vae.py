"""The KL autoencoder: latent shapes, the KL term against torch.distributions, a latent scale measured from the
data and kept by the checkpoint, and a few steps that lower the loss."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from genloom.checkpoint import save_checkpoint
from genloom.models.vae import VAE, VAEConfig, gaussian_kl, image_gradient_l1, measure_latent_scale, preset
from genloom.registry import load_pretrained


@pytest.mark.parametrize(("name", "resolution", "latent"), [("vae-tiny", 32, (4, 8, 8)), ("vae-32", 32, (4, 8, 8)),
                                                            ("vae-digits", 8, (4, 4, 4))])
def test_presets_map_images_to_their_latent_grid(name, resolution, latent):
    model = VAE(preset(name)).eval()
    x = torch.rand(2, 3, resolution, resolution) * 2 - 1
    mean, logvar = model.encode(x)
    assert tuple(mean.shape[1:]) == latent == model.config.latent_shape and logvar.shape == mean.shape
    assert model.decode(mean).shape == x.shape


def test_kl_is_the_gaussian_kl_to_the_standard_normal():
    mean, logvar = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(torch.zeros(()), torch.ones(())))
    torch.testing.assert_close(gaussian_kl(mean, logvar), expected)


def test_image_gradient_loss_sees_edges_not_offsets():
    a = torch.zeros(1, 3, 8, 8)
    assert image_gradient_l1(a + 0.5, a) == 0  # a flat shift has the same gradients
    b = a.clone()
    b[..., 4:] = 1.0
    assert image_gradient_l1(b, a) > 0


def test_measured_latent_scale_gives_unit_variance_and_survives_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VAE(preset("vae-tiny")).eval()
    images = [torch.rand(8, 3, 32, 32) * 2 - 1 for _ in range(2)]
    scale = measure_latent_scale(model, images, torch.Generator().manual_seed(0))
    z = torch.cat([model.to_latents(x, torch.Generator().manual_seed(1)) for x in images])
    assert float(model.latent_scale) == pytest.approx(scale) and scale != 1.0
    assert float(z.std()) == pytest.approx(1.0, abs=0.1)
    save_checkpoint(tmp_path / "vae", model, "vae", model.config, None)
    loaded = load_pretrained(tmp_path / "vae")
    assert loaded.family == "vae" and float(loaded.model.latent_scale) == pytest.approx(scale)
    mean, _ = model.encode(images[0])
    torch.testing.assert_close(loaded.model.from_latents(model.to_latents(images[0], sample=False)),
                               model.decode(mean).clamp(-1, 1))


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = VAE(preset("vae-tiny", edge_weight=0.1))
    x = (torch.rand(8, 3, 4, 4) * 2 - 1).repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # flat blocks
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for step in range(60):
        losses = model.loss(x, torch.Generator().manual_seed(step))
        first = first if first is not None else float(losses.total)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    assert float(losses.total) < 0.5 * first and float(losses.kl) >= 0


def test_bad_configs_name_the_value():
    with pytest.raises(ValueError, match="divisible by 4"):
        VAEConfig(resolution=30, widths=(16, 32, 32), norm_groups=8)
    with pytest.raises(ValueError, match="kl_weight"):
        VAEConfig(kl_weight=-1.0)
