"""Text corpora: read the user's files, tokenize once into memory-mapped token arrays, cache and reuse.

Sources: a text file, a folder of text files, or JSONL with a `text` field per line. The token stream is
split into train (first part) and validation (last `val_fraction`), as nanoGPT does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.tokenizers import Tokenizer, load_tokenizer

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text", ".jsonl", ""}


def read_json_lines(path: Path) -> list[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a JSONL file; a GenloomError naming `file:line` for
    invalid JSON, or the file for text that is not UTF-8."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise GenloomError(f"{path} is not UTF-8 text") from None
    parsed = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise GenloomError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return parsed


def read_jsonl_records(path: Path, fields: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line of a JSONL file whose records must be objects with the
    string `fields`; anything else is a GenloomError naming `file:line`."""
    names = " and ".join(repr(name) for name in fields)
    expected = f"a string {names} field" if len(fields) == 1 else f"string {names} fields"
    records = []
    for n, record in read_json_lines(path):
        if not isinstance(record, dict) or not all(isinstance(record.get(name), str) for name in fields):
            raise GenloomError(f"{path}:{n}: expected an object with {expected}")
        records.append((n, record))
    return records


def _read_jsonl(path: Path) -> list[str]:
    return [record["text"] for _, record in read_jsonl_records(path, ("text",))]


def _read_file(path: Path) -> list[str]:
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise GenloomError(f"{path} is not UTF-8 text") from None


def read_documents(source: Path) -> list[str]:
    """Documents from a file, a JSONL file, or every text file under a folder (sorted, hidden skipped)."""
    if not source.exists():
        raise GenloomError(f"data path {source} does not exist")
    if source.is_dir():
        files = sorted(
            p for p in source.rglob("*")
            if p.is_file() and p.suffix in TEXT_SUFFIXES
            # Hidden means below `source`: the folder itself may sit in ~/.local or be given as ../data.
            and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )
        if not files:
            raise GenloomError(f"folder {source} holds no text files ({', '.join(sorted(TEXT_SUFFIXES - {''}))})")
        docs = [doc for f in files for doc in _read_file(f)]
    else:
        docs = _read_file(source)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise GenloomError(f"data {source} is empty")
    return docs


@dataclass
class TokenArrays:
    """Token ids as memory-mapped arrays (uint16 when the vocabulary fits) and the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def _fingerprint(docs: list[str], tokenizer_spec: str, val_fraction: float) -> str:
    h = hashlib.sha256(f"{tokenizer_spec}|{val_fraction}|{len(docs)}".encode())
    for d in docs:
        h.update(hashlib.sha256(d.encode()).digest())
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("GENLOOM_CACHE", Path.home() / ".cache" / "genloom")) / "tokens"


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    # A per-process temporary name: torchrun's processes may all fill the same cache entry at once. They
    # write identical bytes, and a rename never disturbs a reader that already mapped the old file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def tokenize_corpus(
    docs: list[str],
    tokenizer_spec: str,
    make_tokenizer: Callable[[list[str]], Tokenizer],
    val_fraction: float = 0.1,
    cache_dir: Path | None = None,
) -> TokenArrays:
    """Tokenize `docs` once with the tokenizer `make_tokenizer(docs)` builds; later calls reuse the cache.

    `tokenizer_spec` names the tokenizer recipe (e.g. "char", "bpe:4096") so the cache key changes with it.
    Documents are joined by the end-of-text token where the tokenizer has one, else by a blank line.
    """
    if not 0.0 < val_fraction < 1.0:
        raise GenloomError(f"val_fraction ({val_fraction}) must be between 0 and 1")
    cache = (cache_dir or default_cache_dir()) / _fingerprint(docs, tokenizer_spec, val_fraction)
    meta_path = cache / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        return TokenArrays(
            np.memmap(cache / "train.bin", dtype=dtype, mode="r"),
            np.memmap(cache / "val.bin", dtype=dtype, mode="r"),
            load_tokenizer(cache),
        )
    tokenizer = make_tokenizer(docs)
    if tokenizer.eos_id is not None:
        ids: list[int] = []
        for doc in docs:
            ids.extend(tokenizer.encode(doc))
            ids.append(tokenizer.eos_id)
    else:
        ids = tokenizer.encode("\n\n".join(docs))
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32)
    tokens = np.asarray(ids, dtype=dtype)
    n_val = max(1, int(len(tokens) * val_fraction))
    if n_val >= len(tokens):  # checked before caching: an empty train.bin cannot be memory-mapped
        raise GenloomError(f"the data has only {len(tokens)} tokens; too few to split into train and validation")
    cache.mkdir(parents=True, exist_ok=True)
    _write_atomically(cache / "train.bin", tokens[:-n_val].tofile)
    _write_atomically(cache / "val.bin", tokens[-n_val:].tofile)
    tokenizer_tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=cache))
    tokenizer.save(tokenizer_tmp)
    for f in tokenizer_tmp.iterdir():
        f.replace(cache / f.name)
    tokenizer_tmp.rmdir()
    # meta.json is written last: its presence marks a complete cache entry.
    meta = json.dumps({"dtype": dtype.name, "tokens": len(tokens), "spec": tokenizer_spec})

    def write_meta(tmp: Path) -> None:
        tmp.write_text(meta)

    _write_atomically(meta_path, write_meta)
    return tokenize_corpus(docs, tokenizer_spec, make_tokenizer, val_fraction, cache_dir)


def sample_windows(tokens: np.ndarray, n: int, block_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n random windows: inputs x (n, block_size) and next-token targets y (n, block_size)."""
    if len(tokens) <= block_size:
        raise GenloomError(
            f"only {len(tokens)} tokens in this split; need more than the block size {block_size}"
        )
    starts = torch.randint(len(tokens) - block_size, (n,), generator=generator).tolist()
    windows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64)  # (n, block + 1)
    data = torch.from_numpy(windows)
    return data[:, :-1], data[:, 1:]
