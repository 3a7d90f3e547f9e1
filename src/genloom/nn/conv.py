"""Convolutional image encoder and decoder blocks (VQ-VAE, and any autoencoder that reuses them).

The encoder halves the image between consecutive widths and ends in a 1x1 projection to `code_dim` channels;
the decoder mirrors it with nearest-neighbour upsampling (no transposed convolutions, so no checkerboard
artefacts). Residual blocks are GroupNorm -> SiLU -> conv, as in the VQGAN / Stable Diffusion autoencoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a skip (1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class ConvEncoder(nn.Module):
    """(B, channels, H, W) -> (B, out_dim, H/2^d, W/2^d), d = len(widths) - 1.

    `res_blocks` residual blocks at each width, a stride-2 conv between widths, then a last residual block,
    norm, SiLU and a 1x1 projection to `out_dim` (the low-dimensional code or latent space).
    """

    def __init__(self, widths: Sequence[int], res_blocks: int, groups: int, out_dim: int, channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1)]
        c = widths[0]
        for i, width in enumerate(widths):
            for _ in range(res_blocks):
                layers.append(ResBlock(c, width, groups))
                c = width
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # halve H and W
        layers += [ResBlock(c, c, groups), nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, out_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ConvDecoder(nn.Module):
    """(B, in_dim, h, w) -> (B, channels, h*2^d, w*2^d): `ConvEncoder` mirrored, nearest-neighbour upsampling."""

    def __init__(self, widths: Sequence[int], res_blocks: int, groups: int, in_dim: int, channels: int = 3) -> None:
        super().__init__()
        c = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, c, 3, padding=1), ResBlock(c, c, groups)]
        for i in reversed(range(len(widths))):
            for _ in range(res_blocks):
                layers.append(ResBlock(c, widths[i], groups))
                c = widths[i]
            if i > 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [nn.GroupNorm(groups, c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(z)
