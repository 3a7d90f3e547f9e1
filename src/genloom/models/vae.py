"""KL-regularised image autoencoder: images <-> a continuous latent grid, the "image language" of latent diffusion.

The Stable Diffusion recipe (Rombach et al. 2022, §3): a convolutional encoder predicts a diagonal Gaussian per
latent position, a decoder maps a sample back to pixels, and a small KL term toward N(0, I) keeps the latent
space smooth without forcing it to be uninformative. The encoder and decoder are the shared `genloom.nn.conv`
blocks, as in the VQ tokenizer.

A diffusion model wants latents of unit variance, so the encoder's latents are multiplied by `latent_scale`
(SD's "scaling factor"): 1 / std of the encoded training latents, measured on the data (`measure_latent_scale`)
and saved with the weights as a buffer, never a hard-coded 0.18215.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.nn.conv import ConvDecoder, ConvEncoder


@dataclass
class VAEConfig:
    resolution: int = 32  # images are resolution x resolution RGB, with values in [-1, 1]
    widths: tuple[int, ...] = (64, 128, 128)  # conv channels at each scale; the image is halved between scales
    res_blocks: int = 2  # residual blocks per scale, in the encoder and (mirrored) in the decoder
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    latent_channels: int = 4  # channels of the latent grid (SD: 4)
    kl_weight: float = 1e-4  # weight of KL(q(z|x) || N(0, I)) per latent element, against per-pixel MSE
    edge_weight: float = 0.0  # weight of an L1 loss on image gradients (sharper edges without a perceptual net)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list back
        for name in ("resolution", "res_blocks", "norm_groups", "latent_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths ({list(self.widths)}) must be one or more positive channel counts")
        if any(w % self.norm_groups for w in self.widths):
            raise ValueError(f"every width in {list(self.widths)} must be divisible by norm_groups "
                             f"({self.norm_groups})")
        if self.resolution % 2**self.downsamplings:
            raise ValueError(f"resolution ({self.resolution}) must be divisible by {2**self.downsamplings} "
                             f"({self.downsamplings} halvings for {len(self.widths)} widths)")
        if self.kl_weight < 0 or self.edge_weight < 0:
            raise ValueError(f"kl_weight ({self.kl_weight}) and edge_weight ({self.edge_weight}) must be >= 0")

    @property
    def downsamplings(self) -> int:
        return len(self.widths) - 1

    @property
    def latent_size(self) -> int:
        """Side of the latent grid."""
        return self.resolution // 2**self.downsamplings

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latent."""
        return (self.latent_channels, self.latent_size, self.latent_size)


PRESETS: dict[str, VAEConfig] = {
    # Tests: 32x32 -> 8x8x4.
    "vae-tiny": VAEConfig(widths=(16, 32, 32), res_blocks=1, norm_groups=8),
    # 32x32 RGB (shapes, emoji) -> 8x8x4, the compression of SD's autoencoder (f = 4, c = 4).
    "vae-32": VAEConfig(widths=(32, 64, 64), res_blocks=1, norm_groups=16),
    # 8x8 digits -> 4x4x4.
    "vae-digits": VAEConfig(resolution=8, widths=(32, 64), res_blocks=1, norm_groups=8),
}


def preset(name: str, **overrides: object) -> VAEConfig:
    """A copy of preset `name` with `overrides` applied."""
    return from_presets(PRESETS, name, **overrides)


@dataclass
class VAELosses:
    total: Tensor
    reconstruction: Tensor  # per-pixel MSE on [-1, 1]
    kl: Tensor  # KL per latent element (nats)
    edge: Tensor  # L1 between image gradients


class VAE(nn.Module):
    """(B, 3, H, W) in [-1, 1] <-> (B, latent_channels, H/f, W/f) latents."""

    latent_scale: Tensor

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = ConvEncoder(c.widths, c.res_blocks, c.norm_groups, out_dim=2 * c.latent_channels)
        self.decoder = ConvDecoder(c.widths, c.res_blocks, c.norm_groups, in_dim=c.latent_channels)
        # Saved with the weights; set from the data by `measure_latent_scale` after training.
        self.register_buffer("latent_scale", torch.ones(()))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and log-variance, each (B, latent_channels, h, w)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as SD's DiagonalGaussianDistribution: exp() stays finite

    def decode(self, z: Tensor) -> Tensor:
        """Pixels (B, 3, H, W), about [-1, 1], of unscaled latents."""
        return self.decoder(z)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, mean, logvar), the reconstruction decoded from a posterior sample."""
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + (0.5 * logvar).exp() * noise), mean, logvar

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> VAELosses:
        reconstruction, mean, logvar = self(x, generator)
        mse = F.mse_loss(reconstruction, x)
        kl = gaussian_kl(mean, logvar).mean()
        edge = image_gradient_l1(reconstruction, x) if self.config.edge_weight > 0 else mse.new_zeros(())
        total = mse + self.config.kl_weight * kl + self.config.edge_weight * edge
        return VAELosses(total, mse, kl, edge)

    @torch.no_grad()
    def to_latents(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Scaled latents of images, what a diffusion model learns on: a posterior sample (or its mean)."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=generator, device=mean.device,
                                                           dtype=mean.dtype)
        return z * self.latent_scale

    @torch.no_grad()
    def from_latents(self, z: Tensor) -> Tensor:
        """Pixels of scaled latents, clamped to [-1, 1]."""
        return self.decode(z / self.latent_scale).clamp(-1.0, 1.0)


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) per element: (mean² + var - 1 - logvar) / 2."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def image_gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean |∇a - ∇b| over horizontal and vertical finite differences: edges drawn where the target has them."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


@torch.no_grad()
def measure_latent_scale(model: VAE, batches: Iterable[Tensor], generator: torch.Generator | None = None) -> float:
    """1 / std of the (unscaled, sampled) latents of `batches` of images; also stored in `model.latent_scale`."""
    total, total_sq, count = 0.0, 0.0, 0
    saved = model.latent_scale.clone()
    model.latent_scale.fill_(1.0)
    try:
        for images in batches:
            z = model.to_latents(images, generator).double()
            total += float(z.sum())
            total_sq += float(z.pow(2).sum())
            count += z.numel()
    except BaseException:
        model.latent_scale.copy_(saved)
        raise
    if count == 0:
        model.latent_scale.copy_(saved)
        raise ValueError("no images to measure the latent scale on")
    variance = total_sq / count - (total / count) ** 2
    scale = 1.0 / max(variance, 1e-12) ** 0.5
    model.latent_scale.fill_(scale)
    return scale
