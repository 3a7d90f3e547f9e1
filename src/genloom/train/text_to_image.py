"""Text-to-image training: the caption -> image-token task for the shared Trainer, and the recipe.

Images are turned into codes ONCE, before training, by a trained VQ image tokenizer (eval mode, batched, no
grad); the Transformer then learns from (caption ids, codes) pairs only. Captions use a small byte-level BPE
trained on the training captions with `<pad>`, `<s>` and `</s>` (saved in every checkpoint, as every family
does).

Where the VQ tokenizer lives: a text-to-image model is useless without the VQ model that decodes its codes,
and a path to it would break when runs move. So the recipe copies the VQ checkpoint once, at the start of a
run, into `<run_dir>/image_tokenizer/` (a plain genloom checkpoint written with `save_checkpoint`), and
`genloom.models.registry.load_text_to_image_model` finds it there: next to a run's checkpoints, i.e. in the
checkpoint directory itself or in its parent. To move or export one checkpoint, copy `image_tokenizer/` into it.

Caption dropout: with probability p a training caption is replaced by the empty caption, the unconditional
input of classifier-free guidance (Ho & Salimans 2022). The decision is drawn from the trainer's generator
along with the batch indices, so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from genloom.config import config_from_dict
from genloom.data.images import ImageCaptionSet, check_resolution
from genloom.data.translation import SPECIAL_TOKENS, SpecialIds
from genloom.errors import GenloomError
from genloom.models.dalle import (
    Dalle,
    DalleConfig,
    breaks_blank_rule,
    check_image_tokenizer,
    dalle_loss,
    encode_captions,
    preset,
)
from genloom.models.vqvae import VQVAE
from genloom.tokenizers import BPETokenizer, Tokenizer, load_tokenizer
from genloom.train.checkpoint import CheckpointManager, read_checkpoint_config, save_checkpoint
from genloom.train.config import TrainConfig
from genloom.train.distributed import DistributedContext, init_distributed
from genloom.train.image_tokenizer import images_to_tensor, to_unit_range
from genloom.train.trainer import Batch, Trainer, TrainResult

FAMILY = "dalle"
IMAGE_TOKENIZER_DIR = "image_tokenizer"  # inside the run directory: the VQ model that decodes this model's codes


@dataclass(frozen=True)
class CaptionCodec:
    """Captions <-> the model's fixed-length caption ids; `empty` is the unconditional caption."""

    tokenizer: Tokenizer
    text_len: int

    @property
    def ids(self) -> SpecialIds:
        return SpecialIds.of(self.tokenizer)

    def encode(self, captions: Sequence[str]) -> Tensor:
        """(B, text_len) long ids; a one-line GenloomError when a caption does not fit."""
        ids = self.ids
        return encode_captions(self.tokenizer, list(captions), self.text_len, ids.pad, ids.bos, ids.eos)

    def empty(self, n: int = 1) -> Tensor:
        """n copies of the empty caption <s></s><pad>..., (n, text_len)."""
        return self.encode([""] * n)


def train_caption_tokenizer(captions: Sequence[str], vocab_size: int = 512) -> BPETokenizer:
    """A byte-level BPE over `captions` with <pad>, <s>, </s>; it stops early when the captions run out of merges."""
    return BPETokenizer.train(list(captions), vocab_size, special_tokens=list(SPECIAL_TOKENS))


def caption_length(tokenizer: Tokenizer, captions: Sequence[str]) -> int:
    """Caption positions the longest caption needs: its tokens + <s> + </s>."""
    return max(len(tokenizer.encode(c)) for c in captions) + 2


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


class TextToImageTask:
    """Random batches of (caption ids, image codes); the loss weights image tokens w:1 over caption tokens.

    Every micro-batch is `batch_size` pairs drawn uniformly (with replacement) by the trainer's generator,
    followed by one uniform number per pair for caption dropout, all for the global batch: every process
    draws the same numbers and keeps its slice, and the data position is the generator state alone.
    """

    family = FAMILY

    def __init__(
        self,
        model_config: DalleConfig,
        tokenizer: Tokenizer,
        train_text: Tensor,
        train_codes: Tensor,
        val_text: Tensor,
        val_codes: Tensor,
        batch_size: int,
        caption_dropout: float = 0.15,
    ) -> None:
        if batch_size < 1:
            raise GenloomError(f"batch size ({batch_size}) must be at least 1")
        if not 0.0 <= caption_dropout < 1.0:
            raise GenloomError(f"caption dropout ({caption_dropout}) must be in [0, 1)")
        cfg = model_config
        for split, text, codes in (("training", train_text, train_codes), ("validation", val_text, val_codes)):
            if len(text) == 0:
                raise GenloomError(f"no {split} images")
            check_caption_image_pairs(split, text, codes, cfg)
            if cfg.blank_token >= 0:
                # Factorised tokens: the model gives a lit patch in black, or a blank one in colour, no probability.
                mixed = breaks_blank_rule(codes, cfg.blank_token, cfg.colour_codes)
                if bool(mixed.any()):
                    raise GenloomError(
                        f"{split}: {int(mixed.sum())} image tokens pair the blank shape code with a colour or a lit "
                        "shape with black; the image tokenizer does not separate brightness and colour cleanly"
                    )
        self.model_config = cfg
        self._tokenizer = tokenizer
        self.codec = CaptionCodec(tokenizer, cfg.text_len)
        check_pad_id(tokenizer, cfg.pad_id)
        self.empty_caption = self.codec.empty()[0]  # (Lt,)
        self.batch_size = batch_size
        self.caption_dropout = caption_dropout
        self.train_text, self.train_codes = train_text.long(), train_codes.long()
        self.val_text, self.val_codes = val_text.long(), val_codes.long()

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        b = self.batch_size
        total = b * n_micro * world_size
        drawn = torch.randint(len(self.train_text), (total,), generator=generator)
        dropped = torch.rand(total, generator=generator) < self.caption_dropout  # (total,)
        mine = slice(rank * b * n_micro, (rank + 1) * b * n_micro)
        indices, drop = drawn[mine], dropped[mine]
        text = torch.where(drop[:, None], self.empty_caption, self.train_text[indices])  # (b * n_micro, Lt)
        codes = self.train_codes[indices]
        return [(text[i * b : (i + 1) * b], codes[i * b : (i + 1) * b]) for i in range(n_micro)]

    def _val_chunks(self) -> list[tuple[Tensor, Tensor]]:
        b = self.batch_size
        return [(self.val_text[i : i + b], self.val_codes[i : i + b]) for i in range(0, len(self.val_text), b)]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # The first n fixed batches; batch i goes to process i % world_size (the trainer averages them all).
        chosen = self._val_chunks()[:n]
        return [chosen[i] for i in range(rank, len(chosen), world_size)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        text, codes = batch
        text_logits, image_logits = model(text, codes)
        cfg = self.model_config
        return dalle_loss(text_logits, image_logits, text, codes, cfg.pad_id, cfg.image_loss_weight).total

    def count_tokens(self, batch: Batch) -> int:
        """Caption tokens that are not padding, plus image tokens."""
        text, codes = batch
        return int((text != self.model_config.pad_id).sum()) + codes.numel()

    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Over the whole validation set: val_image_loss (mean cross-entropy per image token, nats) and
        val_image_accuracy (argmax = the VQ code), the numbers that say how well captions become images."""
        device = next(model.parameters()).device
        loss_sum, correct, count = 0.0, 0, 0
        for text, codes in self._val_chunks():
            text, codes = text.to(device), codes.to(device)
            _, image_logits = model(text, codes)  # (b, N, V)
            flat = image_logits.float().reshape(-1, image_logits.size(-1))
            loss_sum += float(nn.functional.cross_entropy(flat, codes.reshape(-1), reduction="sum"))
            correct += int((flat.argmax(-1) == codes.reshape(-1)).sum())
            count += codes.numel()
        return {"val_image_loss": loss_sum / count, "val_image_accuracy": correct / count}


def load_image_tokenizer(directory: Path) -> VQVAE:
    """The VQ model of a genloom checkpoint or run directory, in eval mode; a one-line error for anything else."""
    from genloom.models.registry import load_pretrained

    loaded = load_pretrained(directory)
    if not isinstance(loaded.model, VQVAE):
        raise GenloomError(f"{directory} is a {loaded.family} model, not a VQ image tokenizer (vqvae)")
    return loaded.model


def build_model_config(preset_name: str, **overrides: object) -> DalleConfig:
    """Preset + explicit settings (None means keep the preset's value)."""
    return preset(preset_name, **{k: v for k, v in overrides.items() if v is not None})


def usable_blank_token(vq: VQVAE, codes: Tensor) -> int:
    """`vq.blank_token()` if in `codes` the blank patch's shape code and the black colour code always come
    together (a cleanly trained factorised tokenizer), else -1: the model then predicts the two independently.
    """
    blank = vq.blank_token()
    if blank < 0:
        return -1
    if bool(breaks_blank_rule(codes, blank, vq.colour_codes).any()):
        print("note: the image tokenizer pairs the blank patch's shape code with colours (or lit shapes with black);"
              " train it longer for tokens that keep brightness and colour apart", flush=True)
        return -1
    return blank


def resume_caption_image_run(run_dir: Path, family: str, what: str) -> tuple[dict[str, Any], Tokenizer, VQVAE]:
    """The saved model config (a dict), caption tokenizer and VQ copy of the run in `run_dir`, to resume it."""
    latest = CheckpointManager(run_dir).latest()
    raw = read_checkpoint_config(latest)
    if raw["family"] != family:
        raise GenloomError(f"--resume: {latest} holds a {raw['family']} model, not {what} ({family})")
    return raw["model"], load_tokenizer(latest), load_image_tokenizer(run_dir / IMAGE_TOKENIZER_DIR)


def fresh_image_tokenizer(vq_checkpoint: Path | None, what: str) -> VQVAE:
    if vq_checkpoint is None:
        raise GenloomError(f"{what} training needs a trained VQ image tokenizer checkpoint")
    return load_image_tokenizer(vq_checkpoint)


def fresh_caption_tokenizer(
    train: ImageCaptionSet, val: ImageCaptionSet, tokenizer: Tokenizer | None, vocab_size: int, text_len: object
) -> tuple[Tokenizer, int]:
    """The caption tokenizer (trained on the training captions unless given) and the caption context: `text_len`
    if set, else what the longest training or validation caption needs."""
    if tokenizer is None:
        tokenizer = train_caption_tokenizer(train.captions, vocab_size)
    if text_len is None:
        return tokenizer, caption_length(tokenizer, [*train.captions, *val.captions])
    assert isinstance(text_len, int), text_len
    return tokenizer, text_len


def start_caption_image_run(run_dir: Path, vq: VQVAE, train_config: TrainConfig, ctx: DistributedContext) -> None:
    """Refuse (or clear, with overwrite) an earlier run in `run_dir`, then copy the VQ model into it."""
    if ctx.is_main:
        CheckpointManager(run_dir, train_config.keep_last).clear(train_config.overwrite)
        save_checkpoint(run_dir / IMAGE_TOKENIZER_DIR, vq, "vqvae", vq.config, None)
    if ctx.enabled:
        dist.barrier()


def train_text_to_image(
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    vq_checkpoint: Path | None,
    preset_name: str,
    train_config: TrainConfig,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = 512,
    caption_dropout: float = 0.15,
    model_overrides: dict[str, object] | None = None,
    resume: bool = False,
) -> tuple[Dalle, Tokenizer, VQVAE, TrainResult]:
    """Encode the images with the VQ tokenizer at `vq_checkpoint`, train a caption BPE (unless given) and a
    Dalle from a preset with the shared Trainer. `train_config.batch_size` counts (caption, image) pairs.

    The caption context (`text_len`) fits the longest training or validation caption unless set in
    `model_overrides`. A fresh run copies the VQ model to `<out_dir>/image_tokenizer/`; on resume that copy,
    the run's tokenizer and its model config win (`vq_checkpoint` may then be None).
    """
    run_dir = Path(train_config.out_dir)
    ctx = init_distributed(train_config.device)
    overrides = dict(model_overrides or {})
    if resume:
        saved, saved_tokenizer, vq = resume_caption_image_run(run_dir, FAMILY, "text-to-image")
    else:
        vq = fresh_image_tokenizer(vq_checkpoint, "text-to-image")
    vq = vq.to(ctx.device)
    train_codes, val_codes = encode_images(vq, train.images), encode_images(vq, val.images)
    if resume:
        tokenizer, model_config = saved_tokenizer, config_from_dict(DalleConfig, saved)
    else:
        tokenizer, text_len = fresh_caption_tokenizer(train, val, tokenizer, vocab_size, overrides.get("text_len"))
        overrides["text_len"] = text_len
        model_config = build_model_config(
            preset_name, **overrides, text_vocab_size=tokenizer.vocab_size, pad_id=SpecialIds.of(tokenizer).pad,
            image_vocab_size=vq.config.vocab_size, colour_codes=vq.config.colour_codes,
            blank_token=usable_blank_token(vq, torch.cat([train_codes, val_codes])), grid_size=vq.config.grid_size,
        )
        start_caption_image_run(run_dir, vq, train_config, ctx)
    check_image_tokenizer(vq.config, model_config, "the VQ tokenizer", "the model")
    codec = CaptionCodec(tokenizer, model_config.text_len)
    task = TextToImageTask(
        model_config, tokenizer, codec.encode(train.captions), train_codes, codec.encode(val.captions), val_codes,
        train_config.batch_size, caption_dropout,
    )
    torch.manual_seed(train_config.seed)  # the same initial weights on every process and every rerun
    model = Dalle(model_config)
    result = Trainer(task, model, train_config, ctx).fit(resume=resume)
    return model, tokenizer, vq, result
