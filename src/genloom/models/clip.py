"""A small CLIP-style contrastive model (Radford et al. 2021) over captions and VQ image tokens, for reranking.

Two Transformer encoders map a caption (B, Lt) and an image's VQ codes (B, N) to unit vectors in one space;
their cosine, times a learned temperature, scores how well the caption describes the image. DALL-E (Ramesh
et al. 2021, §2.5) draws many candidates per caption and keeps the ones such a model ranks highest.

The image side reads the same tokens the text-to-image model writes (with the same factorisation into
shape and colour codes, and row + column positions), so a candidate is scored without decoding it, and the
model is tied to one VQ image tokenizer: `genloom.train.clip` saves a copy of it beside the checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import from_presets
from genloom.models.caption_image import CaptionImageEmbeddings, check_caption_image_config
from genloom.nn import BlockConfig, TransformerStack, gpt2_init_
from genloom.nn.layers import Linear


@dataclass
class ClipConfig:
    text_vocab_size: int = 512  # caption tokenizer's vocabulary (set from the tokenizer)
    text_len: int = 24  # caption positions: <s> + caption + </s>, right-padded with <pad>
    pad_id: int = 1  # the caption tokenizer's <pad>: left out of the caption's mean
    image_vocab_size: int = 512  # = the VQ tokenizer's vocabulary
    colour_codes: int = 0  # > 0: factorised (shape, colour) image tokens, embedded as the sum of the two parts
    grid_size: int = 8  # an image is grid_size x grid_size codes in raster order
    d_model: int = 128  # width of both encoders
    n_layers: int = 2  # layers of each encoder
    n_heads: int = 4
    d_ff: int = 512
    embed_dim: int = 128  # the shared caption/image space

    def __post_init__(self) -> None:
        check_caption_image_config(self, ("n_layers", "d_ff", "embed_dim"))

    @property
    def image_len(self) -> int:
        return self.grid_size**2

    def block_config(self) -> BlockConfig:
        return BlockConfig(d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff)


PRESETS: dict[str, ClipConfig] = {
    "clip-tiny": ClipConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, embed_dim=32),  # tests
    # 0.4M parameters per encoder; on 2 CPU cores about 10 steps/s at batch 128 on builtin:shapes.
    "clip-small": ClipConfig(),
}


def preset(name: str, **overrides: object) -> ClipConfig:
    return from_presets(PRESETS, name, **overrides)


class _Encoder(nn.Module):
    """Embedded sequence (B, T, d) -> unit vector (B, embed_dim): Transformer, mean over kept positions, projection."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        self.transformer = TransformerStack(config.block_config(), config.n_layers)
        self.projection = Linear(config.d_model, config.embed_dim, bias=False)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        h = self.transformer(x)  # (B, T, d): every position sees every other
        weights = keep.to(h.dtype)[..., None]  # (B, T, 1)
        pooled = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, d)
        return F.normalize(self.projection(pooled), dim=-1)


class Clip(CaptionImageEmbeddings):
    """Captions (B, Lt) and image codes (B, N) -> unit embeddings (B, embed_dim) each; `score` = their cosine."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__(config)
        self.config = config
        self.text_encoder, self.image_encoder = _Encoder(config), _Encoder(config)
        gpt2_init_(self, config.n_layers)
        # CLIP's initial temperature 0.07, learned as a log scale (applied as exp, capped at 100 in `logits`).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, text: Tensor) -> Tensor:
        """(B, Lt) caption ids -> (B, embed_dim) unit vectors; pads are left out of the mean."""
        return self.text_encoder(self.embed_caption(text), text != self.config.pad_id)

    def encode_image(self, codes: Tensor) -> Tensor:
        """(B, N) or (B, g, g) image codes -> (B, embed_dim) unit vectors."""
        codes = codes.flatten(1)
        return self.image_encoder(self.embed_image(codes), torch.ones_like(codes, dtype=torch.bool))

    def forward(self, text: Tensor, codes: Tensor) -> Tensor:
        """Captions (Bt, Lt), image codes (Bi, N) -> (Bi, Bt) logits: every image against every caption."""
        return self.logits(self.encode_image(codes), self.encode_text(text))

    def logits(self, image_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """(Bi, E) x (Bt, E) -> (Bi, Bt) scaled cosines: row i scores image i against every caption."""
        return self.logit_scale.exp().clamp(max=100.0) * image_embeddings @ text_embeddings.T

    def score(self, text: Tensor, codes: Tensor) -> Tensor:
        """(B,) cosine of caption i and image i."""
        return (self.encode_text(text) * self.encode_image(codes)).sum(-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
