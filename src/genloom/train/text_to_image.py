"""Text-to-image training (DALL-E style): the caption -> image-token task for the shared Trainer, and the recipe.

The model learns from (caption ids, VQ codes) pairs (see `genloom.train.caption_image`, shared with the CLIP
reranker's training): the images are coded once, before training, and the run carries the VQ model.

Caption dropout: with probability p a training caption is replaced by the empty caption, the unconditional
input of classifier-free guidance (Ho & Salimans 2022). The decision is drawn from the trainer's generator
along with the batch indices, so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from genloom.data.captions import CaptionCodec
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError
from genloom.generate.imagine import encode_images
from genloom.models.caption_image import check_image_tokenizer
from genloom.models.dalle import Dalle, DalleConfig, dalle_loss
from genloom.models.vq_colour import breaks_blank_rule, usable_blank_token
from genloom.models.vqvae import VQVAE
from genloom.tokenizers import Tokenizer
from genloom.train.caption_image import caption_image_run, check_caption_image_pairs, check_pad_id
from genloom.train.config import TrainConfig
from genloom.train.distributed import init_distributed
from genloom.train.run import new_model, run_model_config
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

FAMILY = "dalle"


class TextToImageTask(Task):
    """Random batches of (caption ids, image codes); the loss weights image tokens w:1 over caption tokens.

    Every micro-batch is `batch_size` pairs drawn uniformly (with replacement) by the trainer's generator,
    followed by one uniform number per pair for caption dropout, all for the global batch: every process
    draws the same numbers and keeps its slice, and the data position is the generator state alone.
    """

    family = FAMILY
    metric_goals: ClassVar[dict[str, Goal]] = {"val_image_loss": "min", "val_image_accuracy": "max"}

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
        self.tokenizer = tokenizer
        self.codec = CaptionCodec(tokenizer, cfg.text_len)
        check_pad_id(tokenizer, cfg.pad_id)
        self.empty_caption = self.codec.empty()[0]  # (Lt,)
        self.batch_size = batch_size
        self.caption_dropout = caption_dropout
        self.train_text, self.train_codes = train_text.long(), train_codes.long()
        self.val_text, self.val_codes = val_text.long(), val_codes.long()

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


def train_text_to_image(
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    vq_checkpoint: Path | None,
    preset_name: str,
    train_config: TrainConfig,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = 512,
    caption_dropout: float = 0.15,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
) -> tuple[Dalle, Tokenizer, VQVAE, TrainResult]:
    """Encode the images with the VQ tokenizer at `vq_checkpoint`, train a caption BPE (unless given) and a
    Dalle from a preset with the shared Trainer. `train_config.batch_size` counts (caption, image) pairs.

    The caption context (`text_len`) fits the longest training or validation caption unless set in
    `model_overrides`. On resume the run's VQ copy, tokenizer and model config win (`vq_checkpoint` may then be
    None). `run_record`: the run's data record (see `genloom.run_record`).
    """
    ctx = init_distributed(train_config.device)
    overrides = dict(model_overrides or {})
    run = caption_image_run(FAMILY, train_config, resume, vq_checkpoint, train, val, vocab_size,
                            overrides.pop("text_len", None), tokenizer)
    vq = run.vq.to(ctx.device)
    train_codes, val_codes = encode_images(vq, train.images), encode_images(vq, val.images)
    blank = usable_blank_token(vq.blank_token(), vq.colour_codes, torch.cat([train_codes, val_codes]))
    if run.saved is None and blank < 0 <= vq.blank_token() and ctx.is_main:
        print("note: the image tokenizer pairs the blank patch's shape code with colours (or lit shapes with black);"
              " train it longer for tokens that keep brightness and colour apart", flush=True)
    model_config = run_model_config(FAMILY, preset_name, run.saved, overrides, **run.token_fields(), blank_token=blank)
    check_image_tokenizer(vq.config, model_config, "the VQ tokenizer", "the model")
    codec = CaptionCodec(run.tokenizer, model_config.text_len)
    task = TextToImageTask(
        model_config, run.tokenizer, codec.encode(train.captions), train_codes, codec.encode(val.captions),
        val_codes, train_config.batch_size, caption_dropout,
    )
    model = new_model(FAMILY, model_config, train_config.seed)
    assert isinstance(model, Dalle)
    result = Trainer(task, model, train_config, ctx, run.components(), run_record).fit(resume=resume)
    return model, run.tokenizer, vq, result
