"""The colour half of factorised image tokens: split an image into brightness and per-patch colour, and back.

An image of flat colours on a dark background is, pixel by pixel, brightness x colour: the brightness (the
max over R, G, B, HSV's "value") says where something is drawn and is the same for every colour, and the colour
is constant over a patch that one object covers. Tokenizing the two apart gives an image language in which
"green" and "triangle" are separate symbols, so a caption->image model can draw a green triangle from a green
circle's colour codes and a red triangle's shape codes, though it never saw a green triangle (builtin:shapes
holds such pairs out to test exactly that). `VQVAE` uses these modules when `VQConfig.colour_codes` > 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def value_and_chroma(images: Tensor, patch: int) -> tuple[Tensor, Tensor]:
    """Images (B, 3, H, W) in [-1, 1] -> brightness (B, 1, H, W) in [-1, 1] and patch colours (B, 3, h, w).

    A patch's colour c minimises sum over its pixels of ||rgb - v c||^2 (v = the pixel's brightness in [0, 1]):
    c = sum(v rgb) / sum(v^2), exactly the fill colour when the patch shows one flat colour, in [0, 1] per
    channel, and 0 for a black patch.
    """
    unit = (images.float() + 1.0) / 2.0  # (B, 3, H, W) in [0, 1]
    value = unit.amax(dim=1, keepdim=True)  # (B, 1, H, W)
    weighted = F.avg_pool2d(unit * value, patch)  # (B, 3, h, w)
    energy = F.avg_pool2d(value * value, patch)  # (B, 1, h, w)
    chroma = weighted / energy.clamp(min=1e-6)  # 0 / 1e-6 = 0 where the patch is black
    return value * 2.0 - 1.0, chroma


class ColourEncoder(nn.Module):
    """Patch colours (B, 3, h, w) -> vectors (B, code_dim, h, w), an MLP applied at each position."""

    def __init__(self, code_dim: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, width, 1), nn.SiLU(), nn.Conv2d(width, code_dim, 1))

    def forward(self, chroma: Tensor) -> Tensor:
        return self.layers(chroma * 2.0 - 1.0)


class ColourDecoder(nn.Module):
    """Colour code vectors (B, code_dim, h, w) -> colours (B, 3, h*p, w*p), constant over each p x p patch."""

    def __init__(self, code_dim: int, width: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.layers = nn.Sequential(nn.Conv2d(code_dim, width, 1), nn.SiLU(), nn.Conv2d(width, 3, 1))

    def forward(self, codes: Tensor) -> Tensor:
        return F.interpolate(self.layers(codes), scale_factor=self.patch, mode="nearest")


def compose(value: Tensor, colour: Tensor) -> Tensor:
    """Brightness (B, 1, H, W) in [-1, 1] x colour (B, 3, H, W) in [0, 1] -> image (B, 3, H, W) in [-1, 1]."""
    return (value + 1.0) * colour - 1.0
