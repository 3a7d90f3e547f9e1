"""Translation training: the sequence-to-sequence task for the shared Trainer, and the `train translate` recipe.

Serves both the Transformer (`seq2seq`) and the LSTM baseline (`lstm`): both take `model(src, tgt_in)` and
return teacher-forced logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.batching import token_batches
from genloom.data.translation import collate, encode_source, encode_target, train_translation_tokenizer
from genloom.errors import GenloomError
from genloom.eval.translation import evaluate_translation
from genloom.registry import TRANSLATION_FAMILIES
from genloom.tokenizers import SpecialIds, Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.run import new_model, run_model_config, saved_run
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

VAL_SEED = 2024  # validation batches are cut with a fixed seed so every evaluation sees the same ones
EPOCH_SEED = 0  # the fixed cut of the training set into token batches

TokenPair = tuple[list[int], list[int]]  # (source ids incl. EOS, target ids without BOS/EOS)


def label_smoothed_cross_entropy(logits: Tensor, targets: Tensor, epsilon: float, ignore_index: int) -> Tensor:
    """Mean over non-ignored positions of (1 - eps) * NLL + eps * (mean over the vocabulary of -log p).

    Label smoothing (Szegedy et al. 2016; Vaswani et al. 2017 §5.4, eps = 0.1) spreads eps uniformly over
    all V classes, the true one included, which is what `F.cross_entropy(label_smoothing=eps)` computes.
    logits (N, V), targets (N,).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    keep = targets != ignore_index  # (N,)
    safe_targets = targets.masked_fill(~keep, 0)
    nll = -log_probs.gather(-1, safe_targets[:, None]).squeeze(-1)  # (N,)
    smooth = -log_probs.mean(dim=-1)  # (N,)
    per_token = (1.0 - epsilon) * nll + epsilon * smooth
    return (per_token * keep).sum() / keep.sum().clamp(min=1)


def example_cost(pair: TokenPair) -> int:
    """Padded tokens a row of this example costs: the longer of the source and BOS + target."""
    return max(len(pair[0]), len(pair[1]) + 1)


def model_max_len(model_config: Any) -> int | None:
    """Longest source or target sequence the model accepts (None: no limit, as for the LSTM)."""
    return getattr(model_config, "max_len", None)


class TranslationTask(Task):
    """Token-budget batches of (source, target) pairs; loss is label-smoothed cross-entropy over the target.

    The training set is cut once into batches of at most `max_tokens` padded tokens (length-bucketed, see
    `token_batches`); every micro-batch is one of them, drawn uniformly from the trainer's generator. So the
    data position is the generator state alone, and resuming from a checkpoint continues exactly.
    """

    metric_goals: ClassVar[dict[str, Goal]] = {"bleu": "max", "chrf": "max"}
    tokenizer: Tokenizer

    def __init__(
        self,
        family: str,
        model_config: Any,
        tokenizer: Tokenizer,
        train: Sequence[TokenPair],
        val: Sequence[TokenPair],
        max_tokens: int,
        label_smoothing: float = 0.1,
        val_texts: Sequence[tuple[str, str]] = (),
        bleu_sentences: int = 0,
    ) -> None:
        if family not in TRANSLATION_FAMILIES:
            raise GenloomError(f"unknown translation family {family!r}; choose from: {', '.join(TRANSLATION_FAMILIES)}")
        if not 0.0 <= label_smoothing < 1.0:
            raise GenloomError(f"label smoothing ({label_smoothing}) must be in [0, 1)")
        self.family = family
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.ids = SpecialIds.of(tokenizer)
        if model_config.pad_id != self.ids.pad:
            raise GenloomError(
                f"the model's pad_id ({model_config.pad_id}) is not the tokenizer's <pad> ({self.ids.pad})"
            )
        self.max_tokens = max_tokens
        self.label_smoothing = label_smoothing
        limit = model_max_len(model_config)
        # Pairs longer than the model's positions are dropped, as fairseq's --skip-invalid-size-inputs does.
        self.train = [p for p in train if limit is None or example_cost(p) <= limit]
        fits = [limit is None or example_cost(p) <= limit for p in val]
        self.val = [p for p, ok in zip(val, fits, strict=True) if ok]
        if bleu_sentences and len(val_texts) != len(val):
            raise GenloomError(f"BLEU during training needs the {len(val)} validation texts, got {len(val_texts)}")
        # The first `bleu_sentences` validation pairs (as text) that fit, translated greedily at each validation.
        self.bleu_pairs = [pair for pair, ok in zip(val_texts, fits, strict=False) if ok][:bleu_sentences]
        self.skipped = len(train) + len(val) - len(self.train) - len(self.val)
        for split, pairs in (("training", self.train), ("validation", self.val)):
            if not pairs:
                raise GenloomError(f"no {split} pairs fit the model's max length {limit}")
        self.train_batches = token_batches(
            [example_cost(p) for p in self.train], max_tokens, torch.Generator().manual_seed(EPOCH_SEED)
        )
        self._val_batches = token_batches(
            [example_cost(p) for p in self.val], max_tokens, torch.Generator().manual_seed(VAL_SEED)
        )

    def _collate(self, pairs: Sequence[TokenPair], indices: list[int]) -> Batch:
        return collate([pairs[i] for i in indices], self.ids)

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        # Every process draws the same n_micro * world_size batch indices and keeps its own n_micro.
        drawn = torch.randint(len(self.train_batches), (n_micro * world_size,), generator=generator).tolist()
        mine = drawn[rank * n_micro : (rank + 1) * n_micro]
        return [self._collate(self.train, self.train_batches[i]) for i in mine]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # The first n fixed batches (all, if fewer); batch i goes to process i % world_size. The trainer
        # averages over all batches of all processes, so the value does not depend on world_size.
        chosen = self._val_batches[:n]
        return [self._collate(self.val, chosen[i]) for i in range(rank, len(chosen), world_size)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        src, tgt_in, tgt_out = batch
        logits = model(src, tgt_in)  # (B, T, V)
        return label_smoothed_cross_entropy(
            logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1), self.label_smoothing, self.ids.pad
        )

    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """sacreBLEU BLEU and chrF of greedy translations of `bleu_pairs` ({} when there are none)."""
        if not self.bleu_pairs:
            return {}
        _, scores = evaluate_translation(model, self.tokenizer, self.bleu_pairs, beam_size=1, batch_size=64)
        return {"bleu": scores.bleu, "chrf": scores.chrf}

    def count_tokens(self, batch: Batch) -> int:
        """Real (non-padding) source and target tokens."""
        src, _, tgt_out = batch
        return int((src != self.ids.pad).sum() + (tgt_out != self.ids.pad).sum())


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[TokenPair]:
    ids = SpecialIds.of(tokenizer)
    return [(encode_source(tokenizer, ids, src), encode_target(tokenizer, tgt)) for src, tgt in pairs]


def train_translation(
    pairs_train: Sequence[tuple[str, str]],
    pairs_val: Sequence[tuple[str, str]],
    family: str,
    preset_name: str,
    train_config: TrainConfig,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = 8000,
    max_tokens: int = 4096,
    label_smoothing: float = 0.1,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    bleu_sentences: int = 0,
) -> tuple[nn.Module, Tokenizer, TrainResult]:
    """Train (or take) the shared BPE, build the model from a preset, train it with the shared Trainer.

    `bleu_sentences` > 0 also scores greedy translations of that many validation pairs at every validation
    (metrics `bleu` and `chrf`, usable as `train_config.best_metric`).

    On resume the run's saved tokenizer and model config win, so the data and model match the checkpoint.
    """
    if family not in TRANSLATION_FAMILIES:
        raise GenloomError(f"unknown translation family {family!r}; choose from: {', '.join(TRANSLATION_FAMILIES)}")
    if not pairs_train or not pairs_val:
        raise GenloomError("translation training needs at least one training and one validation pair")
    saved = saved_run(family, train_config) if resume else None
    if saved is not None:
        assert saved.tokenizer is not None, "the registry loads a translation model with its tokenizer"
        tokenizer = saved.tokenizer
    elif tokenizer is None:
        tokenizer = train_translation_tokenizer(list(pairs_train), vocab_size)
    model_config = run_model_config(family, preset_name, saved, model_overrides, vocab_size=tokenizer.vocab_size,
                                    pad_id=SpecialIds.of(tokenizer).pad)
    model = new_model(family, model_config, train_config.seed)
    task = TranslationTask(
        family, model_config, tokenizer, encode_pairs(tokenizer, pairs_train), encode_pairs(tokenizer, pairs_val),
        max_tokens, label_smoothing, val_texts=pairs_val, bleu_sentences=bleu_sentences,
    )
    result = Trainer(task, model, train_config).fit(resume=resume)
    return model, tokenizer, result
