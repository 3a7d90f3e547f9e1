"""A run's data record: `data.json` in the run directory, what its model learnt from.

`{"data": "builtin:emoji", "resolution": 32, "images": 1357, "limit": null, "val_fraction": 0.05,
"split_seed": 0, "attribution": "OpenMoji ..."}`, written by the trainer when a run starts (next to its
checkpoints; the checkpoint configs are the trainer's). A checkpoint finds it in its own directory or its parent
(the run directory), where the registry finds a run's components. `eval text-to-image` reads it to rebuild the
run's train/validation split, and `imagine` to credit the images a licence asks to be credited (OpenMoji's CC
BY-SA for builtin:emoji): the attribution travels from the data set into the record, and from there into every
generated image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genloom.data.builtin_images import builtin_attribution
from genloom.data.image_sets import SPLIT_SEED
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError
from genloom.outputs import write_text_atomically

DATA_RECORD = "data.json"


def image_data_record(data: ImageCaptionSet, limit: int | None, val_fraction: float, **extra: Any) -> dict[str, Any]:
    """The record of a run that learns from the image set `data` (as `load_images` made it with `limit`)."""
    return {"data": data.name, "resolution": data.resolution[0], "images": len(data), "limit": limit,
            "val_fraction": val_fraction, "split_seed": SPLIT_SEED, "attribution": data.attribution, **extra}


def write_data_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomically(run_dir / DATA_RECORD, json.dumps(record, indent=2) + "\n")


def read_data_record(checkpoint: Path) -> dict[str, Any]:
    """The `data.json` beside a checkpoint (in it, or in its run directory); {} when there is none."""
    for folder in (checkpoint, checkpoint.parent):
        path = folder / DATA_RECORD
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise GenloomError(f"{path} is not valid JSON") from None
            return record if isinstance(record, dict) else {}
    return {}


def attribution(record: dict[str, Any]) -> str | None:
    """The credit images made from this run's data must carry, if any. Records written before attributions were
    recorded name their data sets instead."""
    if isinstance(record.get("attribution"), str):
        return str(record["attribution"])
    for key in ("data", "image_tokenizer_data"):
        if isinstance(record.get(key), str) and (credit := builtin_attribution(record[key])) is not None:
            return credit
    return None
