"""The checkpoint format: `model.safetensors` + `config.json` + the tokenizer (+ training state, + EMA weights).

A checkpoint directory holds
- `model.safetensors`: the weights (during training: the trained weights, not their average);
- `config.json`: `{"genloom_version", "family", "model": {...the model config...}, ...metadata}`; a run's
  checkpoints also list the run's `components` (sub-models such as the VQ image tokenizer, each a checkpoint
  directory of its own beside the checkpoints, see `genloom.registry`);
- the tokenizer's files, for a model that reads text;
- `ema.safetensors`, when training kept an exponential moving average of the weights: the weights validation
  measured and inference uses (`inference_weights`);
- `training_state.pt` in step checkpoints only: optimizer, scheduler, step, RNG states and the data position,
  read back with `weights_only=True` (never arbitrary pickled code).

Every write goes to a temporary sibling directory that is renamed into place only when complete, so a crash
mid-save never leaves a half-written checkpoint where a good one was; a crash can leave the temporary
sibling behind, and the next run in that directory removes it (`remove_stale_temporaries`). This module is
below `models` and `train`: it saves any `nn.Module` with any config dataclass and knows no family.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import Tensor, nn

import genloom
from genloom.config import config_to_dict, read_json
from genloom.errors import GenloomError, first_line
from genloom.outputs import IsOwn, apply_umask, check_output_dir, interruptions_deferred
from genloom.tokenizers import Tokenizer

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.pt"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
BEST_DIR = "best"
# What `atomic_directory` leaves behind when killed mid-write: `.NAME.tmp-XXXX` (the half-written new copy) and
# `.NAME.old-XXXX` (the previous copy, moved aside for the instant between two renames).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]+$")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from or while handling, and so on."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _failure_reason(error: BaseException) -> str:
    """The most telling line of a write failure: the OSError behind it (disk full, file too large), if any."""
    return next((e.strerror for e in _causes(error) if isinstance(e, OSError) and e.strerror), first_line(error))


def _interruption_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (`KeyboardInterrupt`) a write failure stands for, if any.

    `torch.save` into a Python file calls back into Python for every write, and a signal handler can raise
    there; torch's C++ swallows the interrupt and fails later as a RuntimeError ("unexpected pos ..."), with the
    interrupt as its context. That is the user stopping the run, not a write error: it must exit as one.
    """
    return next((e for e in _causes(error) if isinstance(e, KeyboardInterrupt)), None)


def atomic_directory(
    final: Path, write: Callable[[Path], None], is_own: IsOwn, what: str, label: str = "directory"
) -> None:
    """Call write(tmp_dir), then move tmp_dir to `final`.

    `final` may be new, empty, or `is_own(final)` (an earlier output of the same writer, `what`, which is
    replaced); anything else is refused before writing (see `genloom.outputs.check_output_dir`). A failure to
    write (disk full, a file-size limit) is one GenloomError `cannot write LABEL FINAL: REASON`, and leaves what
    was there untouched; so does Ctrl-C or SIGTERM mid-write, which stays the KeyboardInterrupt it is. One that
    comes once the write is done waits for the new copy to take the earlier one's place.
    """
    check_output_dir(final, is_own, what)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        try:
            write(tmp)
            apply_umask(tmp)
        except GenloomError:
            raise
        except Exception as e:  # OSError, or a library's wrapper around one (safetensors, torch.save)
            interruption = _interruption_behind(e)
            if interruption is not None:
                raise interruption from None
            raise GenloomError(f"cannot write {label} {final}: {_failure_reason(e)}") from None
        with interruptions_deferred():  # stopped between the renames, the run would have neither copy in place
            old: Path | None = None
            if final.exists():
                # A directory cannot be replaced in one rename; move the old one aside first, then drop it.
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
                final.rename(old)  # onto the empty placeholder: allowed for directories on POSIX
            try:
                tmp.rename(final)
            except OSError:
                if old is not None:
                    old.rename(final)  # the new copy could not take its place: the earlier one goes back
                raise
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Clean up after a writer killed mid-save in `directory`: delete its `.NAME.tmp-*` leftovers, and put a
    `.NAME.old-*` back as NAME when NAME itself is missing (killed between the two renames), else delete it.
    Returns the names of what was removed or restored."""
    if not directory.is_dir():
        return []
    done = []
    for path in sorted(directory.iterdir()):
        match = _TEMPORARY.match(path.name)
        if match is None:
            continue
        target = directory / match["name"]
        if match["kind"] == "old" and not target.exists() and path.is_dir() and any(path.iterdir()):
            path.rename(target)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        done.append(path.name)
    return done


def is_genloom_checkpoint(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / MODEL_FILE).is_file()


@dataclass
class Component:
    """A trained sub-model a run carries (the VQ image tokenizer of a text-to-image run), saved as a checkpoint
    directory of its own in the run directory."""

    model: nn.Module
    family: str
    config: Any


def save_checkpoint(
    directory: Path,
    model: nn.Module,
    family: str,
    model_config: Any,
    tokenizer: Tokenizer | None,
    training_state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    ema_weights: dict[str, Tensor] | None = None,
) -> None:
    """Write a complete checkpoint directory atomically; `tokenizer` None: a model that reads no text.

    `directory` may be new, empty or an earlier checkpoint (replaced); a failed write is one GenloomError
    `cannot write PATH: REASON` with the earlier checkpoint intact.
    """

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / MODEL_FILE))  # deduplicates tied weights
        if ema_weights is not None:
            save_file({k: v.detach().contiguous() for k, v in ema_weights.items()}, str(tmp / EMA_FILE))
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
            with (tmp / STATE_FILE).open("wb") as f:  # a Python file: a failed write raises a real OSError
                torch.save(training_state, f)

    atomic_directory(directory, write, is_genloom_checkpoint, "a genloom checkpoint", "checkpoint")


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    config = read_json(path)
    if not isinstance(config.get("family"), str) or not isinstance(config.get("model"), dict):
        raise GenloomError(f"{path} is not a genloom checkpoint config (it needs a \"family\" name and a "
                           "\"model\" object)")
    return config


def inference_weights(directory: Path) -> Path:
    """The weights to run: the EMA weights when training kept them (validation measured those), else the model's."""
    return directory / EMA_FILE if (directory / EMA_FILE).is_file() else directory / MODEL_FILE


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU; a one-line error for a missing, truncated or foreign file."""
    if not path.is_file():
        raise GenloomError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises bare errors for truncated or foreign files
        raise GenloomError(f"cannot read {path}: {_failure_reason(e)}") from None


def load_weights(model: nn.Module, directory: Path, file: str | None = None) -> None:
    """Load `directory`'s inference weights (or `file` in it) into `model`: every tensor, with matching shapes.

    Names may be missing from the file only where safetensors dropped the second name of a tied weight.
    """
    path = inference_weights(directory) if file is None else directory / file
    load_state(model, read_weights(path), str(path))


def load_state(model: nn.Module, weights: dict[str, Tensor], where: str) -> None:
    """Copy `weights` into `model`, or one line naming the first tensor that does not fit and both shapes."""
    expected = model.state_dict()
    for name, tensor in weights.items():
        if name not in expected:
            raise GenloomError(f"{where} does not match its config: unexpected tensor {name!r}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise GenloomError(f"{where} does not match its config: {name} has shape {tuple(tensor.shape)}, the "
                               f"config makes it {tuple(expected[name].shape)}")
    # Tied weights are one tensor under several names, and the file holds one of them.
    loaded = {expected[name].data_ptr() for name in weights}
    missing = [name for name, tensor in expected.items() if name not in weights and tensor.data_ptr() not in loaded]
    if missing:
        raise GenloomError(f"{where} does not match its config: tensor {missing[0]!r} is missing")
    model.load_state_dict(weights, strict=False)


def load_training_state(directory: Path) -> dict[str, Any]:
    """The training state of a step checkpoint; one line naming the file when it is missing, truncated, corrupt
    or holds anything but tensors and plain values."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise GenloomError(f"{directory} has no {STATE_FILE}; it cannot be resumed")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error says enough
            warnings.simplefilter("ignore")
            # weights_only: tensors and plain containers only, never arbitrary pickled code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a pickle of arbitrary objects: refused, never run
            raise GenloomError(f"cannot read {path}: it holds more than tensors and plain values (not a genloom "
                               "training state), and is not loaded") from None
        raise GenloomError(f"cannot read {path}: not a training state file (truncated or damaged)") from None
    except Exception as e:  # a truncated zip, a foreign file: torch raises assorted errors
        raise GenloomError(f"cannot read {path}: {_failure_reason(e)} (truncated or not a training state)") from None
    required = ("step", "optimizer", "data_generator", "torch_rng", "python_rng")
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise GenloomError(f"{path} is not a genloom training state (it lacks {', '.join(required)})")
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


# Besides checkpoints, what only a genloom run directory holds: the trainer's metrics log and the data record.
_RUN_FILES = frozenset({BEST_DIR, "metrics.jsonl", "data.json"})


def is_run_directory(directory: Path) -> bool:
    """Whether `directory` is a run directory genloom made: it holds checkpoints, the metrics log or a data
    record (or what a killed save left). Anything else is not for a training run to write into."""
    names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    return bool(list_checkpoints(directory)) or bool(names & _RUN_FILES) or any(_TEMPORARY.match(n) for n in names)


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

    def earlier_run(self) -> list[Path]:
        """The checkpoints an earlier run left in the run directory."""
        return [*list_checkpoints(self.run_dir), *[p for p in [self.run_dir / BEST_DIR] if p.exists()]]

    def clear(self, overwrite: bool) -> None:
        """Make way for a fresh run: delete an earlier run's checkpoints if `overwrite`, else refuse.

        Mixing runs would be silently wrong: keep_last would delete the new run's lower-numbered
        checkpoints, and --resume would pick up the old ones. Only checkpoints are deleted: other files
        in the run directory stay.
        """
        earlier = self.earlier_run()
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
        metadata: dict[str, Any],
        ema_weights: dict[str, Tensor] | None = None,
    ) -> Path:
        """Write `checkpoint-<step>/` with `metadata` (the validation metrics, ...) in its config, then drop the
        step checkpoints beyond the last `keep_last`."""
        path = self.run_dir / f"checkpoint-{step:07d}"
        save_checkpoint(path, model, family, model_config, tokenizer, training_state, {"step": step, **metadata},
                        ema_weights)
        with interruptions_deferred():  # a checkpoint is deleted whole, never left half-deleted
            for old in list_checkpoints(self.run_dir)[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def save_best(self, step: int, model: nn.Module, family: str, model_config: Any, tokenizer: Tokenizer | None,
                  metadata: dict[str, Any]) -> None:
        """Write `best/`: the model as validated (its EMA weights, when kept), without training state, since it
        is for inference and export, not for resuming."""
        save_checkpoint(self.run_dir / BEST_DIR, model, family, model_config, tokenizer, None,
                        {"step": step, **metadata})
