"""What the recipes over (caption ids, VQ image tokens) share: text-to-image (Dalle) and the CLIP reranker.

Images are turned into codes ONCE, before training, by a trained VQ image tokenizer (eval mode, batched, no
grad); the model then learns from (caption ids, codes) pairs only.

Where the VQ tokenizer lives: such a model is useless without the VQ model that makes its codes, and a path to
it would break when runs move. So a fresh run carries a copy of the VQ checkpoint as its component
`image_tokenizer/` in the run directory (the trainer saves it; `genloom.registry` finds it next to a run's
checkpoints). To move or export one checkpoint, copy `image_tokenizer/` into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor, nn

from genloom.checkpoint import Component
from genloom.data.captions import caption_length, train_caption_tokenizer
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError
from genloom.models.vqvae import VQVAE
from genloom.registry import AUTOENCODER, IMAGE_TOKENIZER, load_family
from genloom.tokenizers import SpecialIds, Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.run import SavedRun, saved_run


class PairedModelConfig(Protocol):
    """What a (caption ids, image codes) task checks its data against: DalleConfig, ClipConfig."""

    text_len: int
    image_vocab_size: int
    pad_id: int

    @property
    def image_len(self) -> int: ...


def check_caption_image_pairs(split: str, text: Tensor, codes: Tensor, config: PairedModelConfig) -> None:
    """One-line GenloomErrors unless `text` (N, Lt) and `codes` (N, image_len) pair up and fit the model."""
    if len(text) != len(codes):
        raise GenloomError(f"{split}: {len(text)} captions but {len(codes)} images")
    if text.shape[1] != config.text_len or codes.shape[1] != config.image_len:
        raise GenloomError(
            f"{split}: captions of {text.shape[1]} and images of {codes.shape[1]} tokens; the model expects "
            f"{config.text_len} and {config.image_len}"
        )
    if len(codes) and int(codes.max()) >= config.image_vocab_size:
        raise GenloomError(f"{split}: image code {int(codes.max())} >= image_vocab_size {config.image_vocab_size}")


def check_pad_id(tokenizer: Tokenizer, pad_id: int) -> None:
    """A one-line GenloomError unless the model config's pad_id is the caption tokenizer's <pad>."""
    pad = SpecialIds.of(tokenizer).pad
    if pad != pad_id:
        raise GenloomError(f"the model's pad_id ({pad_id}) is not the tokenizer's <pad> ({pad})")


# The image model a caption/image run is built on: component name -> (family, what it is, the command that trains it).
IMAGE_MODELS = {
    IMAGE_TOKENIZER: ("vqvae", "a VQ image tokenizer", "genloom train image-tokenizer"),
    AUTOENCODER: ("vae", "an image autoencoder", "genloom train image-autoencoder"),
}


@dataclass
class CaptionImageRun:
    """A caption/image run about to train: resumed (`saved`) or fresh, with the image model it is built on (the
    VQ tokenizer whose codes it reads or the VAE whose latents it denoises) and its caption tokenizer."""

    saved: SavedRun | None
    image_model: nn.Module
    tokenizer: Tokenizer
    text_len: int  # caption positions
    component: str = IMAGE_TOKENIZER  # the image model's name in the run (a key of IMAGE_MODELS)

    @property
    def vq(self) -> VQVAE:
        assert isinstance(self.image_model, VQVAE), self.component
        return self.image_model

    def token_fields(self) -> dict[str, Any]:
        """The model config fields the tokenizers decide (for `run_model_config` of a fresh run)."""
        vq = self.vq.config
        return {**self.caption_fields(), "image_vocab_size": vq.vocab_size, "colour_codes": vq.colour_codes,
                "grid_size": vq.grid_size}

    def caption_fields(self) -> dict[str, Any]:
        """The model config fields the caption tokenizer decides."""
        return {"text_len": self.text_len, "text_vocab_size": self.tokenizer.vocab_size,
                "pad_id": SpecialIds.of(self.tokenizer).pad}

    def components(self) -> dict[str, Component]:
        family = IMAGE_MODELS[self.component][0]
        return {self.component: Component(self.image_model, family, self.image_model.config)}


def caption_image_run(
    family: str,
    train_config: TrainConfig,
    resume: bool,
    image_checkpoint: Path | None,
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    vocab_size: int,
    text_len: object = None,
    tokenizer: Tokenizer | None = None,
    component: str = IMAGE_TOKENIZER,
) -> CaptionImageRun:
    """On --resume the run's image model (its `component`), caption tokenizer and caption length; fresh, the
    image model at `image_checkpoint`, a caption BPE trained on the training captions (unless given) and the
    caption length `text_len` (None: what the longest training or validation caption needs)."""
    if resume:
        saved = saved_run(family, train_config)
        assert saved.tokenizer is not None
        return CaptionImageRun(saved, saved.components[component], saved.tokenizer, saved.config.text_len,
                               component)
    image_family, what, command = IMAGE_MODELS[component]
    if image_checkpoint is None:
        raise GenloomError(f"{family} training needs {what} checkpoint, trained by `{command}`")
    image_model = load_family(image_checkpoint, (image_family,), f"{what} ({image_family})").model
    tokenizer = tokenizer or train_caption_tokenizer(train.captions, vocab_size)
    if text_len is None:
        text_len = caption_length(tokenizer, [*train.captions, *val.captions])
    assert isinstance(text_len, int), text_len
    return CaptionImageRun(None, image_model, tokenizer, text_len, component)
