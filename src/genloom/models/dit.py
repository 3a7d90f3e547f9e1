"""Diffusion Transformer (DiT, Peebles & Xie 2023) over VAE latents, conditioned on a caption.

Latents (B, C, H, W) are cut into p x p patches, embedded, given 2D sinusoidal positions and run through
adaLN-Zero blocks (`genloom.nn.adaln`). The conditioning vector is the timestep's embedding plus the mean of the
caption encoder's output; every block also cross-attends to the caption's tokens. The caption encoder is a
non-causal Transformer stack of the shared core, trained jointly. The output has the latent's shape: ε, v, x_0 or
a flow velocity, as the run's objective says. An empty caption (<s></s>) is the unconditional input that caption
dropout trains and classifier-free guidance uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from genloom.config import from_presets
from genloom.diffusion.process import DiffusionConfig
from genloom.nn.adaln import AdaLNBlock, AdaLNFinal, timestep_embedding
from genloom.nn.blocks import BlockConfig
from genloom.nn.positional import sinusoidal_2d_table, sinusoidal_table
from genloom.nn.transformer import TransformerStack


@dataclass
class DiTConfig:
    latent_channels: int = 4  # = the VAE's
    latent_size: int = 8  # latents are latent_size x latent_size
    patch_size: int = 2  # p: a token is a p x p patch of the latent
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 1024
    text_vocab_size: int = 512  # the caption tokenizer's
    text_len: int = 24  # caption positions: <s> + caption + </s>, right-padded
    text_layers: int = 2  # layers of the caption encoder
    pad_id: int = 0  # the caption tokenizer's <pad>: masked out of cross-attention and the pooled caption
    # How the denoiser is trained and so how it must be sampled; the module itself never reads it.
    process: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        for name in ("latent_channels", "latent_size", "patch_size", "d_model", "n_layers", "n_heads", "d_ff",
                     "text_vocab_size", "text_len", "text_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size ({self.latent_size}) must be divisible by patch_size ({self.patch_size})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.d_model % 4:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by 4 for 2D sinusoidal positions")

    @property
    def grid_size(self) -> int:
        return self.latent_size // self.patch_size


PRESETS: dict[str, DiTConfig] = {
    "dit-tiny": DiTConfig(d_model=64, n_layers=2, n_heads=4, d_ff=256, text_layers=1),  # tests, CPU minutes
    "dit-small": DiTConfig(d_model=192, n_layers=6, n_heads=6, d_ff=768),  # CPU, 30 minutes
    "dit-b": DiTConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072, text_layers=4),  # DiT-B's width and depth
}


def preset(name: str, **overrides: object) -> DiTConfig:
    return from_presets(PRESETS, name, **overrides)


class DiT(nn.Module):
    positions: Tensor  # (N, d) 2D sinusoids of the patch grid
    text_positions: Tensor  # (text_len, d)

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = c = config
        p, d = c.patch_size, c.d_model
        self.patch_embed = nn.Linear(c.latent_channels * p * p, d)
        self.register_buffer("positions", sinusoidal_2d_table(c.grid_size, c.grid_size, d), persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.text_embedding = nn.Embedding(c.text_vocab_size, d)
        self.register_buffer("text_positions", sinusoidal_table(c.text_len, d), persistent=False)
        self.text_encoder = TransformerStack(BlockConfig(d, c.n_heads, c.d_ff), c.text_layers)
        self.blocks = nn.ModuleList(AdaLNBlock(d, c.n_heads, c.d_ff, cross_attention=True) for _ in range(c.n_layers))
        self.final = AdaLNFinal(d, c.latent_channels * p * p)

    def encode_caption(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """(B, Lt) caption ids -> (tokens (B, Lt, d), valid (B, Lt))."""
        valid = text != self.config.pad_id
        x = self.text_embedding(text) + self.text_positions[: text.shape[1]]
        return self.text_encoder(x, mask=valid[:, None, None, :]), valid

    def forward(self, latents: Tensor, t: Tensor, text: Tensor | None = None,
                caption: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """latents (B, C, H, W) at timesteps t (B,) with captions text (B, Lt) -> (B, C, H, W).

        caption: `encode_caption(text)` computed once, instead of text: a sampler's captions are the same at
        every step, so it encodes them once."""
        c = self.config
        x = self.patch_embed(patchify(latents, c.patch_size)) + self.positions  # (B, N, d)
        if caption is None:
            assert text is not None, "pass the caption ids or their encoding"
            caption = self.encode_caption(text)
        tokens, valid = caption
        pooled = (tokens * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)  # (B, d)
        cond = self.time_mlp(timestep_embedding(t, c.d_model)) + pooled
        mask = valid[:, None, None, :]  # (B, 1, 1, Lt)
        for block in self.blocks:
            x = block(x, cond, tokens, mask)
        return unpatchify(self.final(x, cond), c.patch_size, c.latent_channels)


def patchify(latents: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): p x p patches in row-major order, each flattened channel-major."""
    b, ch, h, w = latents.shape
    x = latents.view(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, H/p, W/p, C, p, p)
    return x.reshape(b, (h // p) * (w // p), ch * p * p)


def unpatchify(x: Tensor, p: int, channels: int) -> Tensor:
    """`patchify` undone: (B, N, C*p*p) -> (B, C, H, W) for a square grid of N patches."""
    b, n, _ = x.shape
    g = math.isqrt(n)
    x = x.view(b, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
    return x.reshape(b, channels, g * p, g * p)
