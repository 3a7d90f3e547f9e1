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

import numpy as np
import torch
from torch import Tensor

from genloom.checkpoint import Component
from genloom.data.captions import caption_length, train_caption_tokenizer
from genloom.data.images import ImageCaptionSet, check_resolution, images_to_tensor, to_unit_range
from genloom.errors import GenloomError
from genloom.models.vqvae import VQVAE
from genloom.registry import IMAGE_TOKENIZER, load_image_tokenizer
from genloom.tokenizers import SpecialIds, Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.run import SavedRun, saved_run


@torch.no_grad()
def encode_images(vq: VQVAE, images: np.ndarray, batch_size: int = 256, device: torch.device | None = None) -> Tensor:
    """Codes (N, grid**2) long, raster order, of uint8 images (N, H, W, 3), on the CPU; `vq` is left as it was."""
    check_resolution(images, vq.config.resolution, "the VQ image tokenizer")
    device = device or next(vq.parameters()).device
    was_training = vq.training
    vq.eval()  # encode never updates the codebook, but eval also fixes GroupNorm/any dropout behaviour
    try:
        pixels = images_to_tensor(images)  # (N, 3, H, W) uint8
        chunks = [
            vq.encode(to_unit_range(pixels[i : i + batch_size].to(device))).flatten(1).cpu()  # (b, h*w)
            for i in range(0, len(pixels), batch_size)
        ]
    finally:
        vq.train(was_training)
    return torch.cat(chunks)


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


@dataclass
class CaptionImageRun:
    """A caption/image run about to train: resumed (`saved`) or fresh, with its VQ model and caption tokenizer."""

    saved: SavedRun | None
    vq: VQVAE
    tokenizer: Tokenizer
    text_len: int  # caption positions

    def token_fields(self) -> dict[str, Any]:
        """The model config fields the tokenizers decide (for `run_model_config` of a fresh run)."""
        vq = self.vq.config
        return {"text_len": self.text_len, "text_vocab_size": self.tokenizer.vocab_size,
                "pad_id": SpecialIds.of(self.tokenizer).pad, "image_vocab_size": vq.vocab_size,
                "colour_codes": vq.colour_codes, "grid_size": vq.grid_size}

    def components(self) -> dict[str, Component]:
        return {IMAGE_TOKENIZER: Component(self.vq, "vqvae", self.vq.config)}


def caption_image_run(
    family: str,
    train_config: TrainConfig,
    resume: bool,
    vq_checkpoint: Path | None,
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    vocab_size: int,
    text_len: object = None,
    tokenizer: Tokenizer | None = None,
) -> CaptionImageRun:
    """On --resume the run's VQ copy, caption tokenizer and caption length; fresh, the VQ model at
    `vq_checkpoint`, a caption BPE trained on the training captions (unless given) and the caption length
    `text_len` (None: what the longest training or validation caption needs)."""
    if resume:
        saved = saved_run(family, train_config)
        vq = saved.components[IMAGE_TOKENIZER]
        assert isinstance(vq, VQVAE) and saved.tokenizer is not None
        return CaptionImageRun(saved, vq, saved.tokenizer, saved.config.text_len)
    if vq_checkpoint is None:
        raise GenloomError(f"{family} training needs a trained VQ image tokenizer checkpoint")
    vq = load_image_tokenizer(vq_checkpoint)
    tokenizer = tokenizer or train_caption_tokenizer(train.captions, vocab_size)
    if text_len is None:
        text_len = caption_length(tokenizer, [*train.captions, *val.captions])
    assert isinstance(text_len, int), text_len
    return CaptionImageRun(None, vq, tokenizer, text_len)
