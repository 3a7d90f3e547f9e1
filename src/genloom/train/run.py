"""One way to set up a training run, for every family: resume the latest checkpoint, or build fresh.

    saved = saved_run("dalle", train_config) if resume else None     # what --resume continues, or None
    tokenizer = saved.tokenizer if saved else make_a_tokenizer(...)  # the family's own data work
    config = run_model_config("dalle", preset, saved, overrides, text_vocab_size=..., ...)
    model = new_model("dalle", config, train_config.seed)

On --resume the run's saved model config, tokenizer and components win over flags and data, so model and data
match the checkpoint; fresh, the model is the preset with the flags the user gave (a flag left out, None,
keeps the preset's value) and the values the data decides (vocabulary sizes, caption length, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genloom import registry
from genloom.checkpoint import CheckpointManager, read_checkpoint_config
from genloom.errors import GenloomError
from genloom.tokenizers import Tokenizer
from genloom.train.config import TrainConfig


@dataclass
class SavedRun:
    """What --resume continues: the latest resumable checkpoint's model config, tokenizer and components."""

    checkpoint: Path
    config: Any
    tokenizer: Tokenizer | None
    components: dict[str, nn.Module] = field(default_factory=dict)


def saved_run(family: str, train: TrainConfig) -> SavedRun:
    """The run in `train.out_dir` to resume; a one-line error when it has no checkpoint or another family's."""
    latest = CheckpointManager(Path(train.out_dir)).latest()
    saved_family = read_checkpoint_config(latest)["family"]
    if saved_family != family:
        raise GenloomError(f"--resume: {latest} holds a {saved_family} model, not a {family} model")
    loaded = registry.load_pretrained(latest, weights=False)  # the trainer loads them, with the training state
    components = {name: c.model for name, c in loaded.components.items()}
    return SavedRun(latest, loaded.config, loaded.tokenizer, components)


def run_model_config(
    family: str, preset_name: str, saved: SavedRun | None, overrides: Mapping[str, object] | None = None,
    **from_data: object,
) -> Any:
    """The saved config on --resume; else preset `preset_name` with the flag `overrides` (None keeps the preset's
    value) and the values `from_data` decides."""
    if saved is not None:
        return saved.config
    return registry.preset_config(family, preset_name, **{**(overrides or {}), **from_data})


def new_model(family: str, config: Any, seed: int) -> nn.Module:
    """A freshly initialised model, the same on every process and every rerun with this seed."""
    torch.manual_seed(seed)
    return registry.build_model(family, config)
