"""Typed dataclass configs: strict loading from dicts and JSON files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from genloom.errors import GenloomError

C = TypeVar("C")


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Build dataclass `cls` from `data`, rejecting keys the dataclass does not define."""
    assert dataclasses.is_dataclass(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GenloomError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise GenloomError(f"invalid {cls.__name__}: {e}") from None


def from_presets(presets: dict[str, C], name: str, **overrides: object) -> C:
    """A copy of preset `name` with `overrides` applied (e.g. vocab_size from the tokenizer)."""
    if name not in presets:
        raise GenloomError(f"unknown preset {name!r}; choose from: {', '.join(sorted(presets))}")
    try:
        return dataclasses.replace(presets[name], **overrides)  # type: ignore[type-var]
    except (TypeError, ValueError) as e:
        raise GenloomError(f"invalid settings for preset {name!r}: {e}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GenloomError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise GenloomError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise GenloomError(f"{path} must hold a JSON object")
    return data
