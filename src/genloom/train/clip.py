"""Training the CLIP-style reranker: the contrastive task for the shared Trainer, and the recipe.

Loss (CLIP's): in a batch of B (caption, image) pairs, image i must pick its caption among all captions of the
batch and caption i its image among all images, by cross-entropy over scaled cosines, averaged both ways.

In-batch captions rarely differ from the right one by a single word, and a reranker has to tell "a yellow
circle above a red square" from "a yellow square above a red circle". So every caption also brings two hard
negatives for its image to reject (the image side of the loss sees them; the caption side does not):
- two of its words swapped ("a red circle above a blue square" -> "a blue circle above a red square"),
- one word replaced by the word another caption of the batch has at the same position, which in a set of
  templated captions is mostly a word of the same kind ("red" -> "green", "circle" -> "square").
Words are the caption tokens other than <s>, </s> and <pad>. A negative that came out equal to the caption,
and any other caption of the batch equal to it, is masked out of the softmax rather than counted as wrong.
Negatives are drawn with the trainer's generator along with the batch, so a resumed run sees the same ones.

The images are coded ONCE by the VQ image tokenizer the text-to-image model uses (its copy is saved in the
run, as for text-to-image): the reranker scores candidates by their codes, without decoding them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.captions import CaptionCodec
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError
from genloom.generate.imagine import encode_images
from genloom.models.caption_image import check_image_tokenizer
from genloom.models.clip import Clip, ClipConfig
from genloom.tokenizers import SpecialIds, Tokenizer
from genloom.train.caption_image import caption_image_run, check_caption_image_pairs, check_pad_id
from genloom.train.config import TrainConfig
from genloom.train.distributed import init_distributed
from genloom.train.run import new_model, run_model_config
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

FAMILY = "clip"


def word_mask(text: Tensor, ids: SpecialIds) -> Tensor:
    """(B, Lt) bool: the caption's word tokens (not <s>, </s> or <pad>)."""
    return (text != ids.pad) & (text != ids.bos) & (text != ids.eos)


def _random_positions(words: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """(B, k) distinct word positions per row; rows with fewer than k words get arbitrary positions."""
    weights = torch.where(words.sum(1, keepdim=True) >= k, words.float(), torch.ones_like(words, dtype=torch.float))
    return torch.multinomial(weights, k, replacement=False, generator=generator)


def swap_two_words(text: Tensor, words: Tensor, generator: torch.Generator) -> Tensor:
    """Each caption with two of its words swapped; captions of fewer than two words are returned unchanged."""
    pos = _random_positions(words, 2, generator)  # (B, 2)
    rows = torch.arange(len(text))
    out = text.clone()
    out[rows, pos[:, 0]], out[rows, pos[:, 1]] = text[rows, pos[:, 1]], text[rows, pos[:, 0]]
    return torch.where(words.sum(1, keepdim=True) >= 2, out, text)


def replace_one_word(text: Tensor, words: Tensor, generator: torch.Generator) -> Tensor:
    """Each caption with one word replaced by the word a random caption of the batch has at that position
    (unchanged where that caption has no word there, or the same one)."""
    pos = _random_positions(words, 1, generator)[:, 0]  # (B,)
    donors = torch.randint(len(text), (len(text),), generator=generator)  # (B,)
    rows = torch.arange(len(text))
    usable = words[donors, pos] & words[rows, pos]
    out = text.clone()
    out[rows, pos] = torch.where(usable, text[donors, pos], text[rows, pos])
    return out


def contrastive_loss(logits: Tensor, text: Tensor, candidates: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy with hard negatives.

    logits (B, K): image i against candidate caption j, where candidates (K, Lt) starts with the batch's
    captions text (B, Lt) (so image i's caption is column i) and goes on with the hard negatives. Columns that
    equal image i's caption, other than column i, are masked: they are right, not wrong.
    """
    b = len(text)
    same = (candidates[None, :, :] == text[:, None, :]).all(-1)  # (B, K)
    same[torch.arange(b), torch.arange(b)] = False
    logits = logits.float().masked_fill(same, float("-inf"))
    target = torch.arange(b, device=logits.device)
    image_to_text = F.cross_entropy(logits, target)
    text_to_image = F.cross_entropy(logits[:, :b].T, target)  # captions choose among the batch's images only
    return (image_to_text + text_to_image) / 2


class ClipTask(Task):
    """Random batches of (captions, image codes, swapped-word captions, replaced-word captions)."""

    family = FAMILY
    metric_goals: ClassVar[dict[str, Goal]] = {"val_accuracy": "max"}

    def __init__(
        self,
        model_config: ClipConfig,
        tokenizer: Tokenizer,
        train_text: Tensor,
        train_codes: Tensor,
        val_text: Tensor,
        val_codes: Tensor,
        batch_size: int,
    ) -> None:
        if batch_size < 2:
            raise GenloomError(f"batch size ({batch_size}) must be at least 2: a contrastive batch needs negatives")
        cfg = model_config
        for split, text, codes in (("training", train_text, train_codes), ("validation", val_text, val_codes)):
            if len(text) < 2:
                raise GenloomError(f"{len(text)} {split} images; a contrastive model needs at least 2")
            check_caption_image_pairs(split, text, codes, cfg)
        check_pad_id(tokenizer, cfg.pad_id)
        self.model_config = cfg
        self.tokenizer = tokenizer
        self.ids = SpecialIds.of(tokenizer)
        self.batch_size = batch_size
        self.train_text, self.train_codes = train_text.long(), train_codes.long()
        # Validation: fixed chunks, each with its negatives drawn once from a fixed seed.
        generator = torch.Generator().manual_seed(0)
        self._val = [
            self._with_negatives(val_text[i : i + batch_size].long(), val_codes[i : i + batch_size].long(), generator)
            for i in range(0, len(val_text), batch_size)
            if len(val_text[i : i + batch_size]) >= 2
        ]

    def _with_negatives(self, text: Tensor, codes: Tensor, generator: torch.Generator) -> Batch:
        words = word_mask(text, self.ids)
        return text, codes, swap_two_words(text, words, generator), replace_one_word(text, words, generator)

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        # Each process's micro-batch is a contrastive batch of its own: negatives come from within it.
        b = self.batch_size
        drawn = torch.randint(len(self.train_text), (b * n_micro * world_size,), generator=generator)
        batches = [self._with_negatives(self.train_text[i], self.train_codes[i], generator)
                   for i in drawn.view(n_micro * world_size, b)]
        return batches[rank * n_micro : (rank + 1) * n_micro]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        chosen = self._val[:n]
        return [chosen[i] for i in range(rank, len(chosen), world_size)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        text, codes, swapped, replaced = batch
        candidates = torch.cat([text, swapped, replaced])  # (3B, Lt)
        return contrastive_loss(model(candidates, codes), text, candidates)

    def count_tokens(self, batch: Batch) -> int:
        text, codes = batch[0], batch[1]
        return int((text != self.ids.pad).sum()) + codes.numel()

    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """val_accuracy: share of validation images whose caption scores above every other caption of its chunk
        and every hard negative (captions equal to its own left out), the reranker's job in miniature."""
        device = next(model.parameters()).device
        correct, count = 0, 0
        for text, codes, swapped, replaced in self._val:
            text = text.to(device)
            candidates = torch.cat([text, swapped.to(device), replaced.to(device)])
            logits = model(candidates, codes.to(device)).float()  # (b, 3b)
            same = (candidates[None] == text[:, None]).all(-1)
            same[torch.arange(len(text)), torch.arange(len(text))] = False
            correct += int((logits.masked_fill(same, float("-inf")).argmax(1) == torch.arange(len(text),
                                                                                          device=device)).sum())
            count += len(text)
        return {"val_accuracy": correct / max(1, count)}


def train_clip(
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    vq_checkpoint: Path | None,
    preset_name: str,
    train_config: TrainConfig,
    vocab_size: int = 512,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
) -> tuple[Clip, Tokenizer, TrainResult]:
    """Code the images with the VQ tokenizer at `vq_checkpoint` (the text-to-image model's), train a caption BPE
    and a Clip from a preset with the shared Trainer. `train_config.batch_size` counts (caption, image) pairs.

    As for text-to-image: the run carries the VQ model; on resume that copy, the run's tokenizer and its model
    config win (`vq_checkpoint` may then be None).
    """
    ctx = init_distributed(train_config.device)
    overrides = dict(model_overrides or {})
    run = caption_image_run(FAMILY, train_config, resume, vq_checkpoint, train, val, vocab_size,
                            overrides.pop("text_len", None))
    model_config = run_model_config(FAMILY, preset_name, run.saved, overrides, **run.token_fields())
    check_image_tokenizer(run.vq.config, model_config, "the VQ tokenizer", "the model")
    vq = run.vq.to(ctx.device)
    codec = CaptionCodec(run.tokenizer, model_config.text_len)
    task = ClipTask(
        model_config, run.tokenizer, codec.encode(train.captions), encode_images(vq, train.images),
        codec.encode(val.captions), encode_images(vq, val.images), train_config.batch_size,
    )
    model = new_model(FAMILY, model_config, train_config.seed)
    assert isinstance(model, Clip)
    result = Trainer(task, model, train_config, ctx, run.components(), run_record).fit(resume=resume)
    return model, run.tokenizer, result
