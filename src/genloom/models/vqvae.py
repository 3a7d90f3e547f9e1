"""VQ-VAE image tokenizer: images <-> a grid of discrete codes, the "image language" of DALL-E style generation.

A convolutional encoder maps an image to a grid of low-dimensional vectors, each is replaced by its nearest
codebook entry, and a convolutional decoder maps the codes back to pixels (van den Oord et al. 2017). The
encoder, decoder and EMA codebook are the shared `genloom.nn.conv` and `genloom.nn.quantizer` blocks. Codes are
low-dimensional and, by default, l2-normalised so the lookup is by cosine similarity (Yu et al. 2021,
"ViT-VQGAN" §3.2): both keep most of the codebook in use.

With `colour_codes` > 0 a token is a pair: a shape code of the patch's brightness and a code of its colour
(see `vq_colour.value_and_chroma`), so that one colour drawn in a new shape is a new pair of known parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.errors import GenloomError
from genloom.models.vq_colour import ColourDecoder, ColourEncoder, compose, value_and_chroma
from genloom.nn.conv import ConvDecoder, ConvEncoder
from genloom.nn.quantizer import VectorQuantizer

EncoderKind = Literal["conv", "patch"]


@dataclass
class VQConfig:
    resolution: int = 32  # images are resolution x resolution RGB, with values in [-1, 1]
    widths: tuple[int, ...] = (64, 128, 128)  # conv channels at each scale; the image is halved between scales
    res_blocks: int = 2  # residual blocks per scale, in the encoder and (mirrored) in the decoder
    # conv: a convolutional encoder whose codes also see the neighbouring patches. patch: each code sees only its
    # own patch (an MLP on the patch's pixels), so equal patches always get the same code; see `PatchEncoder`.
    encoder: EncoderKind = "conv"
    norm_groups: int = 32  # GroupNorm groups; must divide every width
    codebook_size: int = 512  # K codes: the vocabulary of the image language
    code_dim: int = 8  # dimension of a code; a low one (4-32) keeps codes in use (ViT-VQGAN §3.2)
    cosine: bool = True  # l2-normalise encoder outputs and codes, so the lookup is by cosine similarity
    ema_decay: float = 0.99  # gamma of the EMA codebook update (van den Oord et al. 2017, appendix A.1)
    commitment: float = 0.25  # beta: weight of ||z - sg(e)||^2 keeping encoder outputs near their codes
    kmeans_iters: int = 10  # Lloyd iterations (after k-means++ seeding) on the first training batch; 0: random codes
    dead_code_steps: int = 100  # a code assigned in none of this many consecutive training steps is re-seeded; 0: never
    eps: float = 1e-5  # Laplace smoothing of the EMA cluster sizes, so no code divides by zero
    # > 0: factorised tokens for flat-coloured images on a dark background. The patch encoder sees only the
    # brightness (per-pixel max over RGB) and its `codebook_size` codes say where the patch is lit; a second
    # quantizer with `colour_codes` codes says the patch's colour; the image is brightness x colour. A token is
    # shape * colour_codes + colour. A patch has one colour: multicoloured images (emoji) lose detail.
    colour_codes: int = 0

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list back
        for name in ("resolution", "res_blocks", "norm_groups", "codebook_size", "code_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths ({list(self.widths)}) must be one or more positive channel counts")
        if any(w % self.norm_groups for w in self.widths):
            raise ValueError(
                f"every width in {list(self.widths)} must be divisible by norm_groups ({self.norm_groups})"
            )
        factor = 2**self.downsamplings
        if self.resolution % factor:
            raise ValueError(
                f"resolution ({self.resolution}) must be divisible by {factor} ({self.downsamplings} halvings "
                f"for {len(self.widths)} widths)"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay ({self.ema_decay}) must be in [0, 1)")
        if self.commitment < 0:
            raise ValueError(f"commitment ({self.commitment}) must be >= 0")
        if self.kmeans_iters < 0 or self.dead_code_steps < 0:
            raise ValueError(
                f"kmeans_iters ({self.kmeans_iters}) and dead_code_steps ({self.dead_code_steps}) must be >= 0"
            )
        if self.eps <= 0:
            raise ValueError(f"eps ({self.eps}) must be positive")
        if self.encoder not in ("conv", "patch"):
            raise ValueError(f"encoder ({self.encoder!r}) must be conv or patch")
        if self.colour_codes < 0:
            raise ValueError(f"colour_codes ({self.colour_codes}) must be >= 0")
        if self.colour_codes and self.encoder != "patch":
            raise ValueError("colour_codes needs the patch encoder (encoder='patch')")

    @property
    def downsamplings(self) -> int:
        """How many times the encoder halves the image: one between consecutive widths."""
        return len(self.widths) - 1

    @property
    def grid_size(self) -> int:
        """Side of the code grid: an image becomes grid_size**2 tokens."""
        return self.resolution // 2**self.downsamplings

    @property
    def patch_size(self) -> int:
        """Side in pixels of the patch one token stands for."""
        return 2**self.downsamplings

    @property
    def vocab_size(self) -> int:
        """Distinct tokens: codebook_size, or codebook_size * colour_codes for factorised tokens."""
        return self.codebook_size * max(1, self.colour_codes)


PRESETS: dict[str, VQConfig] = {
    # Tests: 32x32 -> 8x8 codes, 154k parameters.
    "vq-tiny": VQConfig(widths=(16, 32, 32), res_blocks=1, norm_groups=8, codebook_size=128),
    # 32x32 emoji and shapes -> 8x8 = 64 tokens per image from 512 codes; 3.7M parameters.
    "vq-small": VQConfig(widths=(64, 128, 128), res_blocks=2, norm_groups=32, codebook_size=512),
    # Flat-coloured images on a dark background (builtin:shapes): vq-tiny's size with a patch encoder and tokens
    # that pair one of 64 shape codes with one of 8 colour codes, so unseen colour+shape pairs are new pairs of
    # known codes. The image quickstart's. 98k parameters.
    "vq-colour": VQConfig(
        widths=(16, 32, 32), res_blocks=1, norm_groups=8, encoder="patch", codebook_size=64, colour_codes=8
    ),
    # 8x8 digits (scikit-learn) -> 4x4 = 16 tokens per image.
    "vq-digits": VQConfig(resolution=8, widths=(32, 64), res_blocks=1, norm_groups=8, codebook_size=128),
}


def preset(name: str, **overrides: object) -> VQConfig:
    """A copy of preset `name` with `overrides` applied."""
    return from_presets(PRESETS, name, **overrides)


class PatchEncoder(nn.Module):
    """(B, C, H, W) -> (B, code_dim, H/p, W/p), each code a function of its own p x p patch only (p = 2^d).

    A convolutional encoder's receptive field spans neighbouring patches, so one patch content gets different
    codes in different surroundings: on builtin:shapes (85 distinct 4x4 patches) about 3 nats of code entropy
    per token that the caption->image model must learn to predict and that no image needs. Here a patch's pixels
    go through a residual MLP with per-position LayerNorm (ViT-style patch embedding; no norm pools over
    positions), so equal patches get equal codes. The decoder still sees neighbours, to draw smooth seams.
    """

    def __init__(self, config: VQConfig, channels: int = 3) -> None:
        super().__init__()
        self.patch = config.patch_size
        width = config.widths[-1]
        self.embed = nn.Linear(channels * self.patch**2, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
            for _ in range(config.res_blocks * len(config.widths))
        )
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.code_dim))

    def forward(self, x: Tensor) -> Tensor:
        patches = F.pixel_unshuffle(x, self.patch).permute(0, 2, 3, 1)  # (B, h, w, C * p * p)
        h = self.embed(patches)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).permute(0, 3, 1, 2)  # (B, code_dim, h, w)


class VQVAE(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> codes (B, h, w) in [0, vocab_size)."""

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.colour_codes = config.colour_codes  # 0: one quantizer; > 0: shape x colour tokens
        factorised = self.colour_codes > 0
        channels = 1 if factorised else 3  # factorised tokens: the shape half sees and draws brightness only
        widths, blocks, groups, dim = config.widths, config.res_blocks, config.norm_groups, config.code_dim
        self.encoder: nn.Module = (
            PatchEncoder(config, channels) if config.encoder == "patch" else ConvEncoder(widths, blocks, groups, dim)
        )
        self.quantizer = self._quantizer(config.codebook_size)
        self.decoder = ConvDecoder(widths, blocks, groups, dim, channels)
        # The colour half of factorised tokens (see `genloom.models.vq_colour`).
        self.colour_encoder: ColourEncoder | None = None
        self.colour_quantizer: VectorQuantizer | None = None
        self.colour_decoder: ColourDecoder | None = None
        if factorised:
            width = config.widths[0]
            self.colour_encoder = ColourEncoder(config.code_dim, width)
            self.colour_quantizer = self._quantizer(config.colour_codes)
            self.colour_decoder = ColourDecoder(config.code_dim, width, config.patch_size)

    def _quantizer(self, codebook_size: int) -> VectorQuantizer:
        c = self.config
        return VectorQuantizer(
            codebook_size, c.code_dim, cosine=c.cosine, ema_decay=c.ema_decay, commitment=c.commitment,
            kmeans_iters=c.kmeans_iters, dead_code_steps=c.dead_code_steps, eps=c.eps,
        )

    @property
    def grid_size(self) -> int:
        """Side of the code grid of one image."""
        return self.config.grid_size

    def num_parameters(self) -> int:
        """Trainable parameters (the EMA codebook is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())

    def _check_images(self, images: Tensor) -> None:
        r = self.config.resolution
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, r, r):
            raise GenloomError(f"expected images of shape (B, 3, {r}, {r}), got {tuple(images.shape)}")

    def _latents(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Encoder outputs (B, D, h, w) for the (shape) quantizer and for the colour quantizer (None if unused)."""
        if self.colour_encoder is None:
            return self.encoder(images), None
        value, chroma = value_and_chroma(images, self.config.patch_size)
        return self.encoder(value), self.colour_encoder(chroma)

    def _render(self, shape_vectors: Tensor, colour_vectors: Tensor | None) -> Tensor:
        """Unclamped image (B, 3, H, W) from quantized vectors (B, D, h, w)."""
        if colour_vectors is None:
            return self.decoder(shape_vectors)
        assert self.colour_decoder is not None
        return compose(self.decoder(shape_vectors), self.colour_decoder(colour_vectors))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction (B, 3, H, W), unclamped; vq loss; codes (B, h, w)). Trains the codebook in train mode."""
        self._check_images(images)
        z, z_colour = self._latents(images)  # (B, D, h, w) each
        quantized, vq_loss, codes = self.quantizer(z)
        if z_colour is None:
            return self._render(quantized, None), vq_loss, codes
        assert self.colour_quantizer is not None
        colour_quantized, colour_loss, colours = self.colour_quantizer(z_colour)
        return (
            self._render(quantized, colour_quantized), vq_loss + colour_loss, codes * self.colour_codes + colours
        )

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Codes (B, h, w), dtype long, of images (B, 3, H, W) in [-1, 1]; never changes the codebook."""
        self._check_images(images)
        z, z_colour = self._latents(images)
        codes = self.quantizer.lookup(z)
        if z_colour is None:
            return codes
        assert self.colour_quantizer is not None
        return codes * self.colour_codes + self.colour_quantizer.lookup(z_colour)

    @torch.no_grad()
    def blank_token(self) -> int:
        """Factorised tokens: the token of an all-black patch, whose colour code (black) no lit patch gets; -1
        otherwise. See `genloom.models.dalle.Dalle._image_logits`."""
        if self.colour_quantizer is None:
            return -1
        r = self.config.resolution
        p = next(self.parameters())
        return int(self.encode(torch.full((1, 3, r, r), -1.0, device=p.device, dtype=p.dtype))[0, 0, 0])

    def decode(self, codes: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] of codes (B, h, w)."""
        g = self.grid_size
        if codes.dim() != 3 or tuple(codes.shape[1:]) != (g, g):
            raise GenloomError(f"expected codes of shape (B, {g}, {g}), got {tuple(codes.shape)}")
        vocab = self.config.vocab_size
        if codes.min() < 0 or codes.max() >= vocab:
            raise GenloomError(
                f"codes must be in [0, {vocab}), got values from {int(codes.min())} to {int(codes.max())}"
            )
        if self.colour_quantizer is None:
            return self._render(self.quantizer.embed(codes), None).clamp(-1.0, 1.0)
        shapes, colours = codes // self.colour_codes, codes % self.colour_codes
        image = self._render(self.quantizer.embed(shapes), self.colour_quantizer.embed(colours))
        return image.clamp(-1.0, 1.0)
