"""Checkpoint averaging ("Attention Is All You Need" §6.1: the last 5 checkpoints of the base model).

Works on the files alone, for any model family: weights (the ones inference uses: the EMA's when the run kept
one) are averaged name by name in fp32 and the newest checkpoint's config and tokenizer are kept. The output
directory may be new, empty or an earlier average; anything else (a run, a checkpoint, other files) is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from genloom.checkpoint import (
    CONFIG_FILE,
    EMA_FILE,
    MODEL_FILE,
    STATE_FILE,
    atomic_directory,
    inference_weights,
    is_genloom_checkpoint,
    list_checkpoints,
    read_checkpoint_config,
    read_weights,
)
from genloom.errors import GenloomError

AVERAGED_FROM = "averaged_from"  # the config key that marks an averaged checkpoint


def is_averaged_checkpoint(directory: Path) -> bool:
    """Whether `directory` is an earlier output of `average_checkpoints` (which it may replace)."""
    return is_genloom_checkpoint(directory) and AVERAGED_FROM in read_checkpoint_config(directory)


def average_checkpoints(run_dir: Path, last: int, out_dir: Path) -> list[Path]:
    """Average the weights of the `last` newest step checkpoints of `run_dir` into `out_dir`; return them."""
    if last < 1:
        raise GenloomError(f"--last ({last}) must be at least 1")
    checkpoints = list_checkpoints(run_dir)[-last:]
    if len(checkpoints) < last:
        raise GenloomError(
            f"{run_dir} has {len(checkpoints)} step checkpoints, fewer than the {last} to average "
            f"(raise --keep-last when training)"
        )
    newest = checkpoints[-1]
    if out_dir.resolve() == run_dir.resolve() or out_dir.resolve() in [p.resolve() for p in checkpoints]:
        raise GenloomError(f"--out {out_dir} is the run or one of the checkpoints being averaged; choose a new "
                           "directory")
    config = read_checkpoint_config(newest)
    total: dict[str, torch.Tensor] = {}
    for path in checkpoints:
        if read_checkpoint_config(path)["model"] != config["model"]:
            raise GenloomError(f"{path} has another model config than {newest}; cannot average them")
        for name, tensor in read_weights(inference_weights(path)).items():
            total[name] = total.get(name, torch.zeros_like(tensor, dtype=torch.float32)) + tensor.float()
    with safe_open(str(inference_weights(newest)), framework="pt") as f:
        metadata = f.metadata()
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}  # noqa: SIM118 - not a dict
    averaged = {name: (t / len(checkpoints)).to(_DTYPES.get(dtypes[name], torch.float32)) for name, t in total.items()}
    config[AVERAGED_FROM] = [p.name for p in checkpoints]

    def write(tmp: Path) -> None:
        save_file(averaged, str(tmp / MODEL_FILE), metadata=metadata)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        for item in newest.iterdir():  # the tokenizer files; not the weights, config or training state
            if item.name not in (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE) and item.is_file():
                shutil.copy2(item, tmp / item.name)

    atomic_directory(out_dir, write, is_averaged_checkpoint, "an earlier average of checkpoints", "checkpoint")
    return checkpoints


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
