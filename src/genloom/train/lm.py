"""Language-model training: the next-token task for the shared Trainer, and the `train lm` recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.builtin import builtin_corpus
from genloom.data.text import TokenArrays, read_documents, sample_windows, tokenize_corpus
from genloom.errors import GenloomError
from genloom.eval.icl import icl_probe_metrics
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import BPETokenizer, CharTokenizer, Tokenizer
from genloom.train.config import TrainConfig
from genloom.train.run import new_model, run_model_config, saved_run
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

VAL_SEED = 2024  # validation windows are drawn with a fixed seed so every evaluation sees the same text


class LanguageModelTask(Task):
    """Random windows of `block_size` tokens; loss is next-token cross-entropy.

    Every validation also logs the in-context-learning probes (`genloom.eval.icl`): the induction gain (loss on
    the first minus the second copy of a repeated random sequence), the same gain on fresh symbol mappings (where
    the tokenizer spells them a character a token) and Olsson et al.'s ICL score (late-token minus early-token
    loss), so the phase change in which induction heads form shows in metrics.jsonl.
    """

    family = "gpt"
    metric_goals: ClassVar[dict[str, Goal]] = {
        "induction_first_loss": "min", "induction_second_loss": "min", "induction_gain": "max", "icl_score": "min",
        "mapping_first_loss": "min", "mapping_repeat_loss": "min", "mapping_gain": "max",
    }

    def __init__(self, model_config: GPTConfig, tokenizer: Tokenizer, data: TokenArrays, batch_size: int):
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.data = data
        self.batch_size = batch_size
        self.block_size = model_config.context_length

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        # Draw the whole global batch on every process, then keep this process's slice.
        b = self.batch_size
        x, y = sample_windows(self.data.train, b * n_micro * world_size, self.block_size, generator)
        mine = slice(rank * b * n_micro, (rank + 1) * b * n_micro)
        x, y = x[mine], y[mine]
        return [(x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]) for i in range(n_micro)]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # n global batches drawn with a fixed seed, each split evenly across processes.
        generator = torch.Generator().manual_seed(VAL_SEED)
        b = self.batch_size
        batches: list[Batch] = []
        for _ in range(n):
            x, y = sample_windows(self.data.val, b * world_size, self.block_size, generator)
            batches.append((x[rank * b : (rank + 1) * b], y[rank * b : (rank + 1) * b]))
        return batches

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        logits = model(x)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    def count_tokens(self, batch: Batch) -> int:
        return batch[0].numel()

    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        assert isinstance(model, GPT)
        return icl_probe_metrics(model, self.data.val, self.model_config.vocab_size, self.tokenizer)


@dataclass
class DataSpec:
    """Where the text comes from and how to tokenize it."""

    data: str = "builtin:pydoc"  # a file, a folder, a .jsonl, or builtin:NAME
    tokenizer: str = "char"  # char | bpe (trained on the data) | a directory with a GPT-2/HF tokenizer
    vocab_size: int = 4096  # for tokenizer=bpe
    val_fraction: float = 0.1
    cache_dir: str | None = None


def load_corpus(spec: DataSpec) -> TokenArrays:
    docs = builtin_corpus(spec.data.split(":", 1)[1]) if spec.data.startswith("builtin:") else read_documents(
        Path(spec.data)
    )
    if spec.tokenizer == "char":
        return tokenize_corpus(
            docs, "char", lambda d: CharTokenizer.train("\n\n".join(d)), spec.val_fraction, _cache(spec)
        )
    if spec.tokenizer == "bpe":
        return tokenize_corpus(
            docs, f"bpe:{spec.vocab_size}", lambda d: BPETokenizer.train(d, spec.vocab_size), spec.val_fraction,
            _cache(spec),
        )
    tokenizer_dir = Path(spec.tokenizer)
    if not tokenizer_dir.is_dir():
        raise GenloomError(f"--tokenizer must be 'char', 'bpe' or a directory with a tokenizer, not {spec.tokenizer!r}")
    loaded = BPETokenizer.load(tokenizer_dir)
    return tokenize_corpus(
        docs, f"file:{loaded.tokenizer.to_str()}", lambda d: loaded, spec.val_fraction, _cache(spec)
    )


def _cache(spec: DataSpec) -> Path | None:
    return Path(spec.cache_dir) if spec.cache_dir else None


def train_lm(
    data: DataSpec, preset_name: str, train: TrainConfig, overrides: Mapping[str, object] | None = None,
    resume: bool = False,
) -> tuple[GPT, TrainResult]:
    """Tokenize (cached), build the model from a preset and the size `overrides` (None keeps the preset's value),
    train. On --resume the run's saved model config wins."""
    corpus = load_corpus(data)
    saved = saved_run("gpt", train) if resume else None
    model_config = run_model_config("gpt", preset_name, saved, overrides, vocab_size=corpus.tokenizer.vocab_size)
    if saved is not None and model_config.vocab_size != corpus.tokenizer.vocab_size:
        raise GenloomError(
            f"--resume: the data's tokenizer has {corpus.tokenizer.vocab_size} tokens but {saved.checkpoint} was "
            f"trained with {model_config.vocab_size}; resume with the same --data and --tokenizer"
        )
    for split, tokens in (("train", corpus.train), ("validation", corpus.val)):
        if len(tokens) <= model_config.context_length:
            raise GenloomError(
                f"the {split} split has {len(tokens)} tokens, not more than the context length "
                f"{model_config.context_length}; use more text or a smaller --context-length"
            )
    model = new_model("gpt", model_config, train.seed)
    assert isinstance(model, GPT)
    task = LanguageModelTask(model_config, corpus.tokenizer, corpus, train.batch_size)
    result = Trainer(task, model, train).fit(resume=resume)
    return model, result
