"""Checkpoint directories: `model.safetensors` + `config.json` + the tokenizer (+ training state).

Models that read no text (the VQ image tokenizer) have no tokenizer to save.

Every write goes to a temporary sibling directory that is renamed into place only when complete, so a
crash mid-save never leaves a half-written checkpoint where a good one was. Training state (optimizer,
scheduler, step, RNG states, data position) is a separate file, read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

import genloom
from genloom.config import config_to_dict, read_json
from genloom.errors import GenloomError
from genloom.tokenizers import Tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
BEST_DIR = "best"


def atomic_directory(final: Path, write: Any) -> None:
    """Call write(tmp_dir), then move tmp_dir to `final`, replacing any old directory there."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            # A directory cannot be replaced in one rename; move the old one aside first, then drop it.
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(old)  # onto the empty placeholder: allowed for directories on POSIX
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    family: str,
    model_config: Any,
    tokenizer: Tokenizer | None,
    training_state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write a complete checkpoint directory atomically; `tokenizer` None: a model that reads no text."""

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / MODEL_FILE))  # deduplicates tied weights
        config = {
            "genloom_version": genloom.__version__,
            "family": family,
            "model": config_to_dict(model_config),
            **(metadata or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        if training_state is not None:
            torch.save(training_state, tmp / STATE_FILE)

    atomic_directory(directory, write)


def is_genloom_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / MODEL_FILE).is_file()


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    config = read_json(directory / CONFIG_FILE)
    if "family" not in config or "model" not in config:
        raise GenloomError(f"{directory / CONFIG_FILE} is not a genloom checkpoint config")
    return config


def load_weights(model: nn.Module, directory: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(directory / MODEL_FILE), strict=False)
    except Exception as e:  # safetensors raises bare errors for truncated or foreign files
        raise GenloomError(f"cannot read {directory / MODEL_FILE}: {e}") from None
    if missing or unexpected:
        raise GenloomError(
            f"{directory / MODEL_FILE} does not match its config (missing: {sorted(missing)[:3]}, "
            f"unexpected: {sorted(unexpected)[:3]})"
        )


def load_training_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    if not path.is_file():
        raise GenloomError(f"{directory} has no {STATE_FILE}; it cannot be resumed")
    # weights_only: tensors and plain containers only, never arbitrary pickled code.
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Step checkpoints in `run_dir`, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint directory itself, or a run directory: its best checkpoint, else its latest."""
    if not path.exists():
        raise GenloomError(f"{path} does not exist")
    if not path.is_dir():
        raise GenloomError(f"{path} is not a directory; expected a checkpoint or run directory")
    if (path / CONFIG_FILE).is_file():
        return path
    if is_genloom_checkpoint(path / BEST_DIR):
        return path / BEST_DIR
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return checkpoints[-1]
    raise GenloomError(f"{path} is not a checkpoint: it has no {CONFIG_FILE} and no checkpoint-* directories")


class CheckpointManager:
    """Keeps the last `keep_last` step checkpoints of a run, plus `best/` (which one is best, the trainer
    decides: by validation loss, or by a metric such as BLEU)."""

    def __init__(self, run_dir: Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise GenloomError(f"keep_last ({keep_last}) must be at least 1")
        self.run_dir = run_dir
        self.keep_last = keep_last

    def best_metadata(self) -> dict[str, Any]:
        """The step and validation metrics stored with `best/` ({} before the first one)."""
        best_config = self.run_dir / BEST_DIR / CONFIG_FILE
        return dict(read_json(best_config)) if best_config.is_file() else {}

    def clear(self, overwrite: bool) -> None:
        """Make way for a fresh run: delete an earlier run's checkpoints if `overwrite`, else refuse.

        Mixing runs would be silently wrong: keep_last would delete the new run's lower-numbered
        checkpoints, and --resume would pick up the old ones.
        """
        earlier = [*list_checkpoints(self.run_dir), *[p for p in [self.run_dir / BEST_DIR] if p.exists()]]
        if not earlier:
            return
        if not overwrite:
            raise GenloomError(
                f"{self.run_dir} holds checkpoints of an earlier run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --out"
            )
        for path in earlier:
            shutil.rmtree(path)

    def latest(self) -> Path:
        """The newest resumable checkpoint (one with training state), for --resume."""
        checkpoints = [p for p in list_checkpoints(self.run_dir) if (p / STATE_FILE).is_file()]
        if not checkpoints:
            raise GenloomError(f"--resume: {self.run_dir} has no checkpoint to resume from")
        return checkpoints[-1]

    def save(
        self,
        step: int,
        model: nn.Module,
        family: str,
        model_config: Any,
        tokenizer: Tokenizer | None,
        training_state: dict[str, Any],
        metrics: dict[str, float],
        is_best: bool,
    ) -> Path:
        """Write `checkpoint-<step>/` with the validation `metrics` in its config; also `best/` if `is_best`."""
        metadata = {"step": step, **metrics}
        path = self.run_dir / f"checkpoint-{step:07d}"
        save_checkpoint(path, model, family, model_config, tokenizer, training_state, metadata)
        if is_best:
            # best/ carries no training state: it is for inference and export, not for resuming.
            save_checkpoint(self.run_dir / BEST_DIR, model, family, model_config, tokenizer, None, metadata)
        for old in list_checkpoints(self.run_dir)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return path
