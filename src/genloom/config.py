"""Typed dataclass configs: strict loading from dicts and JSON files.

Loading checks every field against its annotation, so a hand-edited or corrupt `config.json` is one line naming
the field (`n_layers must be an integer, got "one"`), never a model silently built wrong: `true` is not 1
layer, `32.0` is not 32 dimensions.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from genloom.errors import GenloomError

C = TypeVar("C")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON-loaded `value` fits the field type `annotation` (lists stand for tuples)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value) if args else True
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict | annotation)  # a nested config: its own fields are checked when built
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1])
                                               for k, v in value.items()) if args else isinstance(value, dict)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))


def config_from_dict(cls: type[C], data: dict[str, Any], where: str | None = None) -> C:
    """Build dataclass `cls` from `data`, rejecting keys it does not define and values of the wrong type.

    `where` (a file name) leads each error message.
    """
    assert dataclasses.is_dataclass(cls)
    prefix = f"{where}: " if where else ""
    if not isinstance(data, dict):
        raise GenloomError(f"{prefix}{cls.__name__} must be a JSON object, got {json.dumps(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GenloomError(f"{prefix}unknown {cls.__name__} keys: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values = dict(data)
    for name, value in data.items():
        if not _matches(value, hints[name]):
            raise GenloomError(f"{prefix}{name} must be {_describe(hints[name])}, got {json.dumps(value)}")
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
            values[name] = config_from_dict(hints[name], value, where=f"{where or cls.__name__}: {name}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise GenloomError(f"{prefix}invalid {cls.__name__}: {e}") from None


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
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenloomError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenloomError(f"{path} is not valid JSON: {e}") from None
    except IsADirectoryError:
        raise GenloomError(f"{path} is a directory, not a JSON file") from None
    if not isinstance(data, dict):
        raise GenloomError(f"{path} must hold a JSON object")
    return data
