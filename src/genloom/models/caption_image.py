"""What the models over [caption ids ; VQ image tokens] share: the Dalle generator and the Clip reranker.

- `CaptionImageConfig` / `ReadsImageTokens`: the config fields both have, checked once
  (`check_caption_image_config`), and the check that a VQ tokenizer makes the tokens a model reads
  (`check_image_tokenizer`);
- `CaptionImageEmbeddings`: a caption embedding with learned positions, and an image-token embedding with
  row + column positions for the grid (DALL-E §2.2) or fixed 2D sinusoids. With a factorised tokenizer
  (`colour_codes` = C > 0) image token i is the pair (i // C, i % C), a shape and a colour code, embedded as
  the sum of one embedding per part, so a pair never seen in training is the sum of two known vectors.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor, nn

from genloom.errors import GenloomError
from genloom.nn import sinusoidal_2d_table

ImagePositional = Literal["learned", "sinusoidal"]


class ReadsImageTokens(Protocol):
    """A model config over VQ image tokens (Dalle's, Clip's): what the tokenizer has to match."""

    grid_size: int
    image_vocab_size: int
    colour_codes: int


class MakesImageTokens(Protocol):
    """A VQ tokenizer config: the tokens it makes."""

    colour_codes: int

    @property
    def grid_size(self) -> int: ...

    @property
    def vocab_size(self) -> int: ...


class CaptionImageConfig(ReadsImageTokens, Protocol):
    """A Transformer config over [caption ids ; image tokens] (Dalle's, Clip's)."""

    text_vocab_size: int
    text_len: int
    pad_id: int
    d_model: int
    n_heads: int

    @property
    def image_len(self) -> int: ...


def check_caption_image_config(config: CaptionImageConfig, positive: tuple[str, ...] = ()) -> None:
    """The ValueErrors every caption/image-token config shares; `positive` names more fields that must be > 0."""
    for name in ("text_vocab_size", "image_vocab_size", "grid_size", "d_model", "n_heads", *positive):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} ({getattr(config, name)}) must be positive")
    if config.text_len < 2:
        raise ValueError(f"text_len ({config.text_len}) must be at least 2 (<s> and </s>)")
    if config.d_model % config.n_heads:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads})")
    if not 0 <= config.pad_id < config.text_vocab_size:
        raise ValueError(f"pad_id ({config.pad_id}) must be in [0, text_vocab_size {config.text_vocab_size})")
    if config.colour_codes < 0 or (config.colour_codes and config.image_vocab_size % config.colour_codes):
        raise ValueError(
            f"colour_codes ({config.colour_codes}) must be 0 or divide image_vocab_size ({config.image_vocab_size})"
        )


def check_image_tokenizer(vq: MakesImageTokens, model: ReadsImageTokens, vq_name: str, model_name: str) -> None:
    """A one-line GenloomError unless the VQ tokenizer makes the image tokens the model reads and writes."""

    def grid(g: int, vocab: int, colours: int) -> str:
        return f"{g}x{g} grids of {vocab} tokens" + (f" ({colours} colours)" if colours else "")

    made = grid(vq.grid_size, vq.vocab_size, vq.colour_codes)
    expected = grid(model.grid_size, model.image_vocab_size, model.colour_codes)
    if made != expected:
        raise GenloomError(f"{vq_name} makes {made}; {model_name} expects {expected}")


class CaptionImageEmbeddings(nn.Module):
    """The caption and image-token embeddings of a model over [caption ; image tokens] (a base class)."""

    image_rows: Tensor
    image_cols: Tensor
    image_pos_table: Tensor | None

    def __init__(self, config: CaptionImageConfig, image_positional: ImagePositional = "learned") -> None:
        super().__init__()
        d, g, colours = config.d_model, config.grid_size, config.colour_codes
        self.text_embedding = nn.Embedding(config.text_vocab_size, d)
        self.text_positions = nn.Embedding(config.text_len, d)
        # Factorised tokens: these two see the shape code and the colour code; otherwise the first sees the token.
        self.image_embedding = nn.Embedding(config.image_vocab_size // max(1, colours), d)
        self.colour_embedding = nn.Embedding(colours, d) if colours else None
        self.colour_codes = colours
        # Raster order: token j sits at row j // g, column j % g.
        index = torch.arange(config.image_len)
        self.register_buffer("image_rows", index // g, persistent=False)
        self.register_buffer("image_cols", index % g, persistent=False)
        self.row_embedding: nn.Embedding | None = None
        self.col_embedding: nn.Embedding | None = None
        if image_positional == "learned":
            self.row_embedding, self.col_embedding = nn.Embedding(g, d), nn.Embedding(g, d)
            self.image_pos_table = None
        else:
            self.register_buffer("image_pos_table", sinusoidal_2d_table(g, g, d), persistent=False)  # (N, d)

    def embed_caption(self, text: Tensor) -> Tensor:
        """Caption ids (B, Lt) -> (B, Lt, d): token embeddings plus learned positions."""
        return self.text_embedding(text) + self.text_positions.weight[: text.shape[1]]

    def embed_image(self, image: Tensor, start: int | Tensor = 0) -> Tensor:
        """Image tokens (B, n) at grid positions start .. start + n - 1 -> (B, n, d). start: one position for
        every row, or a (B,) tensor, each row at its own (rows sampling at different steps)."""
        if self.colour_embedding is None:
            x = self.image_embedding(image)
        else:
            x = self.image_embedding(image // self.colour_codes) + self.colour_embedding(image % self.colour_codes)
        n = image.shape[1]
        if isinstance(start, Tensor):
            return x + self.image_positions_at(start[:, None] + torch.arange(n, device=start.device))
        return x + self.image_positions_at(torch.arange(start, start + n, device=image.device))

    def image_positions_at(self, index: Tensor) -> Tensor:
        """Position vectors (*index.shape, d) of the image tokens at grid positions `index` (raster order)."""
        if self.image_pos_table is not None:
            return self.image_pos_table[index]
        assert self.row_embedding is not None and self.col_embedding is not None
        return self.row_embedding(self.image_rows[index]) + self.col_embedding(self.image_cols[index])
