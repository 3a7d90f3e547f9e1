"""DALL-E style text-to-image: a decoder-only Transformer over [caption tokens ; image tokens] (Ramesh et al. 2021).

The sequence is the caption, right-padded to a fixed `text_len`, followed by the `grid_size**2` codes of a
VQ image tokenizer in raster order. Text and image tokens have separate embeddings and separate output heads
(the two vocabularies never share ids), learned 1D positions for the caption and row + column embeddings for
the image grid (DALL-E §2.2), and one causal stack over both.

Caption layout: `<s>` caption `</s>` then `<pad>` up to `text_len`. Padding is an ordinary token, not masked:
its position embedding makes each pad distinct (DALL-E learns a padding token per position for the same
reason), and decoding needs no mask, so a cached step attends to every earlier position. The unconditional
caption of classifier-free guidance is the EMPTY caption, `<s></s><pad>...`, which training shows the model by
caption dropout (see `genloom.train.text_to_image`); `genloom.data.captions` encodes captions so.

With a factorised image tokenizer (`VQConfig.colour_codes` = C > 0) image token i is the pair (i // C, i % C),
a shape code and a colour code: its embedding is the sum of one embedding per part, and two heads give
log p(shape) + log p(colour) for all `image_vocab_size` pairs, so the parts are predicted independently given
the context and a pair never seen in training costs no more than its parts. One dependence is structural and
kept: a black patch has no colour, and a lit one is never black (see `_image_logits`).

Targets: text position t predicts text token t + 1 (pads ignored); the last text position predicts image
token 0, and image position j predicts image token j + 1. So `forward` reads text (B, Lt) and image (B, N),
feeds image[:, :-1], and returns logits for text[:, 1:] and image[:, :].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from genloom.config import from_presets
from genloom.errors import GenloomError
from genloom.models.caption_image import CaptionImageEmbeddings, ImagePositional, check_caption_image_config
from genloom.models.vq_colour import blank_rule_masks, factorised_log_probs
from genloom.nn import BlockConfig, KVCache, TransformerStack, gpt2_init_
from genloom.nn.layers import Activation, Linear, NormKind, dropout_layer

CaptionAttention = Literal["causal", "self"]


@dataclass
class DalleConfig:
    text_vocab_size: int = 512  # caption tokenizer's vocabulary (set from the tokenizer)
    text_len: int = 32  # caption positions: <s> + caption + </s>, right-padded with <pad>
    image_vocab_size: int = 512  # = the VQ tokenizer's vocabulary (its codebook size, or shapes x colours)
    colour_codes: int = 0  # the VQ tokenizer's colour codes: > 0 for factorised (shape, colour) image tokens
    # Factorised tokens: the token of an all-black patch (`VQVAE.blank_token`), -1 if none. Its shape code is
    # the only one drawn with its colour code (black): see `Dalle._image_logits`.
    blank_token: int = -1
    grid_size: int = 8  # an image is grid_size x grid_size codes, fed in raster order
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 1024  # hidden width of each MLP
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    image_loss_weight: float = 7.0  # text:image loss weighting 1:w (DALL-E uses 1:7, §2.2)
    pad_id: int = 1  # the caption tokenizer's <pad>; its targets are ignored by the text loss
    image_positional: ImagePositional = "learned"  # row + column embeddings, or fixed 2D sinusoids
    # causal: a caption token attends to the earlier caption tokens (DALL-E). self: only to itself, so each word
    # reaches the image tokens uncontextualised ("circle" after "yellow" is the same vector as after "red") and
    # all composition happens at the image positions (and the last caption position, which predicts the first
    # image token); the caption loss is then a bigram loss.
    caption_attention: CaptionAttention = "causal"
    activation: Activation = "gelu"
    norm: NormKind = "layernorm"
    bias: bool = True  # biases in Linear layers and LayerNorms

    def __post_init__(self) -> None:
        check_caption_image_config(self, ("n_layers", "d_ff"))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout ({self.dropout}) must be in [0, 1)")
        if self.image_loss_weight < 0:
            raise ValueError(f"image_loss_weight ({self.image_loss_weight}) must be >= 0")
        if self.caption_attention not in ("causal", "self"):
            raise ValueError(f"unknown caption_attention {self.caption_attention!r}; expected causal or self")
        if self.image_positional not in ("learned", "sinusoidal"):
            raise ValueError(f"unknown image_positional {self.image_positional!r}; expected learned or sinusoidal")
        if (self.blank_token >= 0 and not self.colour_codes) or not -1 <= self.blank_token < self.image_vocab_size:
            raise ValueError(
                f"blank_token ({self.blank_token}) must be -1, or a token below image_vocab_size "
                f"({self.image_vocab_size}) with colour_codes > 0"
            )
        if self.image_positional == "sinusoidal" and self.d_model % 4:
            raise ValueError(f"sinusoidal image positions need d_model ({self.d_model}) divisible by 4")

    @property
    def image_len(self) -> int:
        """Image tokens per image: grid_size ** 2."""
        return self.grid_size**2

    @property
    def seq_len(self) -> int:
        """Longest sequence ever fed: the caption and all image tokens but the last (which is only predicted)."""
        return self.text_len + self.image_len - 1

    def block_config(self) -> BlockConfig:
        return BlockConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff, activation=self.activation, norm=self.norm,
            norm_first=True, bias=self.bias, dropout=self.dropout,
        )


PRESETS: dict[str, DalleConfig] = {
    # Tests and the quickstart: 0.1M parameters in the trunk; vocabularies come from the tokenizers.
    "dalle-tiny": DalleConfig(text_len=16, image_vocab_size=128, d_model=64, n_layers=2, n_heads=4, d_ff=256),
    # 32x32 shapes / emoji through vq-small (8x8 grid of 512 codes): 4.7M trunk parameters, ~80 positions,
    # sized for about 30 minutes of training on 2 CPU cores.
    "dalle-small": DalleConfig(text_len=24, image_vocab_size=512, d_model=256, n_layers=6, n_heads=8, d_ff=1024),
    # 1.8M trunk parameters: on 2 CPU cores it takes 2.2x the steps of dalle-small in the same time, and in
    # 10 minutes on builtin:shapes it reached a lower validation loss (0.50 vs 0.58 nats per image token).
    # The quickstart's model and the text-to-image benchmark's.
    "dalle-compact": DalleConfig(text_len=24, image_vocab_size=512, d_model=192, n_layers=4, n_heads=6, d_ff=768),
}


def preset(name: str, **overrides: object) -> DalleConfig:
    """A copy of preset `name` with `overrides` applied (vocabularies, grid and text_len from the data)."""
    return from_presets(PRESETS, name, **overrides)


@dataclass
class DalleLoss:
    total: Tensor  # (text + w * image) / (1 + w): what is optimised
    text: Tensor  # mean cross-entropy over non-pad caption targets
    image: Tensor  # mean cross-entropy over image tokens


def dalle_loss(
    text_logits: Tensor, image_logits: Tensor, text: Tensor, image: Tensor, pad_id: int, image_loss_weight: float
) -> DalleLoss:
    """Weighted text + image cross-entropy of `forward`'s logits against text (B, Lt) and image (B, N).

    Normalised by 1 + w so the total stays on the scale of a per-token loss whatever the weighting.
    """
    text_loss = F.cross_entropy(
        text_logits.float().reshape(-1, text_logits.size(-1)), text[:, 1:].reshape(-1), ignore_index=pad_id
    )
    image_loss = F.cross_entropy(image_logits.float().reshape(-1, image_logits.size(-1)), image.reshape(-1))
    total = (text_loss + image_loss_weight * image_loss) / (1.0 + image_loss_weight)
    return DalleLoss(total, text_loss, image_loss)


class Dalle(CaptionImageEmbeddings):
    """Caption (B, Lt) + image codes (B, N) -> text logits (B, Lt - 1, V_text), image logits (B, N, V_image)."""

    blank_colour: Tensor | None
    blank_shape: Tensor | None
    impossible_pairs: Tensor | None

    def __init__(self, config: DalleConfig) -> None:
        super().__init__(config, config.image_positional)
        self.config = config
        d, colours = config.d_model, config.colour_codes
        self.embed_dropout = dropout_layer(config.dropout)
        self.transformer = TransformerStack(config.block_config(), config.n_layers)
        # Separate heads: a text position never spends probability on image codes, nor the reverse.
        self.text_head = Linear(d, config.text_vocab_size, bias=False)
        self.image_head = Linear(d, config.image_vocab_size // max(1, colours), bias=False)
        self.colour_head = Linear(d, colours, bias=False) if colours else None
        # With a blank token: the masks of the blank-patch rule (`genloom.models.vq_colour`); otherwise None.
        masks: tuple[Tensor | None, ...] = (None, None, None)
        if config.blank_token >= 0:
            masks = blank_rule_masks(config.blank_token, config.image_vocab_size, colours)
        for name, mask in zip(("blank_colour", "blank_shape", "impossible_pairs"), masks, strict=True):
            self.register_buffer(name, mask, persistent=False)
        gpt2_init_(self, config.n_layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def make_kv_caches(self, batch_size: int) -> list[KVCache]:
        p = self.text_embedding.weight
        return self.transformer.make_kv_caches(batch_size, self.config.seq_len, p.device, p.dtype)

    def hidden_states(
        self, text: Tensor | None, image: Tensor | None, kv_caches: list[KVCache] | None = None
    ) -> Tensor:
        """Final hidden states (B, T, d_model) of a chunk of the joint sequence.

        text: the whole caption (B, Lt), or None when the caption is already in `kv_caches`.
        image: image tokens (B, n) that follow what came before (the caption, and any cached image tokens).
        """
        cfg = self.config
        past = kv_caches[0].length if kv_caches is not None else 0
        parts = []
        if text is not None:
            if past != 0:
                raise GenloomError("the caption must come first: the KV cache already holds tokens")
            if text.shape[1] != cfg.text_len:
                raise GenloomError(f"captions must be {cfg.text_len} tokens (padded), got {text.shape[1]}")
            parts.append(self.embed_caption(text))  # (B, Lt, d)
            past = cfg.text_len
        elif past < cfg.text_len:
            raise GenloomError("no caption: pass `text`, or a KV cache that holds the caption")
        if image is not None and image.shape[1] > 0:
            start, n = past - cfg.text_len, image.shape[1]
            if start + n > cfg.image_len - 1:
                raise GenloomError(f"at most {cfg.image_len - 1} image tokens are fed, got {start + n}")
            parts.append(self.embed_image(image, start))  # (B, n, d)
        if not parts:
            raise GenloomError("nothing to run: pass a caption or image tokens")
        x = self.embed_dropout(torch.cat(parts, dim=1))  # (B, T, d)
        mask = self._caption_self_mask(x.shape[1]) if text is not None else None
        return self.transformer(x, mask=mask, is_causal=mask is None, kv_caches=kv_caches)

    def _caption_self_mask(self, t: int) -> Tensor | None:
        """With caption_attention "self": the (1, 1, t, t) attention mask of a chunk that starts with the caption,
        causal except that caption positions see only themselves -- all but the last, which predicts the first
        image token and so reads the whole caption as image positions do; None (plain causal) otherwise."""
        if self.config.caption_attention == "causal":
            return None
        lt = self.config.text_len
        pos = torch.arange(t, device=self.text_positions.weight.device)
        q, k = pos[:, None], pos[None, :]
        among_caption = (q < lt - 1) & (k < lt) & (q != k)
        return ((k <= q) & ~among_caption)[None, None]

    def forward(self, text: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits: text (B, Lt - 1, V_text) for text[:, 1:]; image (B, n, V_image) for image (B, n).

        image may be a prefix (n <= grid_size**2) of the raster sequence.
        """
        lt = self.config.text_len
        h = self.hidden_states(text, image[:, :-1])  # (B, Lt + n - 1, d)
        return self.text_head(h[:, : lt - 1]), self._image_logits(h[:, lt - 1 :])

    def next_image_logits(
        self, text: Tensor | None, image: Tensor | None, kv_caches: list[KVCache] | None = None
    ) -> Tensor:
        """Logits (B, V_image) of the next image token after the chunk given (see `hidden_states`).

        Prefill: next_image_logits(text, None, caches); then one step per token: (None, token (B, 1), caches).
        Without caches: (text, image tokens so far), recomputing the whole prefix.
        """
        h = self.hidden_states(text, image, kv_caches)
        return self._image_logits(h[:, -1])

    def step_image_logits(self, image: Tensor, index: Tensor, key_valid: Tensor | None, kv_caches: Sequence[Any]
                          ) -> Tensor:
        """Logits (R, V_image) of the next image token of R rows that may be at different steps.

        image (R, 1): the token each row feeds; index (R,): its grid position; key_valid (R, width): the cache
        columns each row reads (its caption and image tokens so far, this one's included), or None when every row
        reads all `width` columns. kv_caches: slot caches (`genloom.generate.batch.SlotKVCache`) the caller has
        set up for this step (`prepare_step`).
        """
        x = self.embed_image(image, index)  # (R, 1, d)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        h = self.transformer(x, mask=mask, kv_caches=list(kv_caches))
        return self._image_logits(h[:, -1])

    def _image_logits(self, h: Tensor) -> Tensor:
        """Hidden states (..., d) -> image logits (..., image_vocab_size).

        Factorised tokens: log p(shape) + log p(colour), with the blank-patch rule when the model has a blank
        token (see `genloom.models.vq_colour.factorised_log_probs`).
        """
        if self.colour_head is None:
            return self.image_head(h)
        rule = None
        if self.blank_colour is not None:
            assert self.blank_shape is not None and self.impossible_pairs is not None
            rule = (self.blank_colour, self.blank_shape, self.impossible_pairs)
        return factorised_log_probs(self.image_head(h), self.colour_head(h), rule)
