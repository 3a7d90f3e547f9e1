"""The package's imports point one way: each layer imports only the layers below it (see README, "Layout").

Walks the import statements of every module (at any depth: a function-local import counts the same) and fails
on the first edge that points upwards, naming the importing module, the imported one and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import genloom

PACKAGE = Path(genloom.__file__).parent

# Which top-level parts of genloom each part may import (besides itself). Read bottom-up: errors and config
# at the bottom, the CLI (and the coming HTTP server) at the top.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "outputs": {"errors"},
    "nn": set(),  # torch only
    "diffusion": set(),  # torch only
    "tokenizers": {"errors", "config"},
    "data": {"tokenizers", "errors", "config"},
    "models": {"nn", "diffusion", "config", "errors"},  # a denoiser's config records its diffusion process
    "checkpoint": {"tokenizers", "config", "errors", "outputs"},
    "interop": {"models", "nn", "diffusion", "tokenizers", "checkpoint", "config", "errors", "outputs"},
    "registry": {"interop", "models", "nn", "diffusion", "tokenizers", "checkpoint", "config", "errors", "outputs"},
    "run_record": {"data", "tokenizers", "errors", "config", "outputs"},
    "info": {"models", "nn", "diffusion", "config", "errors"},
}
_BELOW_GENERATE = {"registry", "run_record", "interop", "checkpoint", "models", "nn", "data", "tokenizers",
                   "config", "errors", "outputs", "diffusion"}
ALLOWED["generate"] = set(_BELOW_GENERATE)
ALLOWED["eval"] = _BELOW_GENERATE | {"generate"}
ALLOWED["train"] = _BELOW_GENERATE | {"generate", "eval"}
ALLOWED["quickstart"] = _BELOW_GENERATE | {"generate", "eval", "train"}
_LIBRARY = set(ALLOWED) | {"quickstart"}
ALLOWED["serve"] = _LIBRARY
ALLOWED["cli"] = _LIBRARY | {"serve"}  # `genloom serve` starts the server; the server never calls the CLI


def _part(module: str) -> str:
    """The top-level part of genloom a dotted module name belongs to ("genloom.train.lm" -> "train")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported genloom module, line) for every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level] if path.name != "__init__.py" else module.split(".")
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # `from genloom import registry` imports the module genloom.registry.
            targets = [f"{name}.{alias.name}" if name == "genloom" else name for alias in node.names]
            found += [(target, node.lineno) for target in targets]
    return [(name, line) for name, line in found if name.split(".")[0] == "genloom"]


def _modules() -> list[tuple[Path, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((path, ".".join(parts)))
    return out


def test_every_part_is_in_the_layering() -> None:
    parts = {_part(module) for _, module in _modules()} - {""}
    unknown = sorted(parts - set(ALLOWED))
    assert not unknown, f"add these parts of genloom to ALLOWED (and to README's layout): {unknown}"


@pytest.mark.parametrize(("path", "module"), _modules(), ids=[m for _, m in _modules()])
def test_imports_point_down(path: Path, module: str) -> None:
    here = _part(module)
    for imported, line in _imports(path, module):
        there = _part(imported)
        if not there or there == here:
            continue
        assert there in ALLOWED.get(here, set()), (
            f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}, an upward edge: "
            f"{here} may import only {sorted(ALLOWED.get(here, set())) or 'nothing of genloom'}"
        )


def test_the_walk_finds_upward_edges(tmp_path: Path) -> None:
    """The checker itself: a model importing the trainer is caught, a local import included."""
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from genloom.train.trainer import Trainer\n")
    (imported, line), = _imports(source, "genloom.models.bad")
    assert (_part(imported), line) == ("train", 2) and "train" not in ALLOWED["models"]
