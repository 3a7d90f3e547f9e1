"""Parallel corpora for translation: (source, target) pairs from the user's files, splits, task prefixes.

Two layouts are read, plain or gzip-compressed (`.gz`):

- one TSV file, `source<TAB>target` per line;
- two line-aligned files, line n of the source file translating line n of the target file (the layout of
  most public corpora, e.g. `train.de` / `train.en`).

Every malformed line is reported as `file:line`, because a corpus with one bad line in a million is
common and the user needs to find it, not a traceback.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from genloom.errors import GenloomError


class ParallelExample(NamedTuple):
    """One translation pair. A NamedTuple, so it is also a plain `(src, tgt)` tuple."""

    src: str
    tgt: str


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) for a plain or gzip-compressed UTF-8 file."""
    if not path.is_file():
        raise GenloomError(f"parallel data file {path} does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            for n, line in enumerate(f, 1):
                # newline="" keeps a lone "\r" inside a line (some corpora contain it) instead of splitting there.
                yield n, line.rstrip("\r\n")
    except UnicodeDecodeError:
        raise GenloomError(f"{path} is not UTF-8 text") from None
    except (gzip.BadGzipFile, EOFError):
        raise GenloomError(f"{path} is not a valid gzip file") from None


def read_tsv(path: Path) -> list[ParallelExample]:
    """Pairs from a `source<TAB>target` file; blank lines are skipped, any other malformed line is an error."""
    pairs = []
    for n, line in _lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise GenloomError(f"{path}:{n}: expected 'source<TAB>target' (exactly one tab), found {len(fields) - 1}")
        src, tgt = fields[0].strip(), fields[1].strip()
        if not src or not tgt:
            raise GenloomError(f"{path}:{n}: empty {'source' if not src else 'target'} side")
        pairs.append(ParallelExample(src, tgt))
    if not pairs:
        raise GenloomError(f"parallel data {path} is empty")
    return pairs


def read_aligned(src_path: Path, tgt_path: Path) -> list[ParallelExample]:
    """Pairs from two line-aligned files. Blank lines are errors: skipping one would shift every later pair."""
    src_lines = list(_lines(src_path))
    tgt_lines = list(_lines(tgt_path))
    if len(src_lines) != len(tgt_lines):
        raise GenloomError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; they must be line-aligned"
        )
    if not src_lines:
        raise GenloomError(f"parallel data {src_path} is empty")
    pairs = []
    for (n, src), (_, tgt) in zip(src_lines, tgt_lines, strict=True):
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            raise GenloomError(f"{src_path if not src else tgt_path}:{n}: empty line in a line-aligned file")
        pairs.append(ParallelExample(src, tgt))
    return pairs


def load_parallel(source: Path, target: Path | None = None) -> list[ParallelExample]:
    """A TSV file (`target` None) or two line-aligned files."""
    return read_tsv(source) if target is None else read_aligned(source, target)


@dataclass
class ParallelSplits:
    """Disjoint train / validation / test lists of pairs."""

    train: list[ParallelExample]
    val: list[ParallelExample]
    test: list[ParallelExample]


def split_pairs(
    pairs: Sequence[tuple[str, str]], val_fraction: float = 0.05, test_fraction: float = 0.05, seed: int = 0
) -> ParallelSplits:
    """Shuffle with `seed`, then cut off validation and test sets.

    Each held-out set with a non-zero fraction gets at least one pair, so a tiny corpus still yields a
    usable validation loss; train must keep at least one pair.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise GenloomError(f"{name} ({frac}) must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise GenloomError(f"val_fraction + test_fraction ({val_fraction + test_fraction}) must be below 1")
    examples = [ParallelExample(*p) for p in pairs]
    random.Random(seed).shuffle(examples)
    n_val = max(1, round(len(examples) * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(len(examples) * test_fraction)) if test_fraction > 0 else 0
    if n_val + n_test >= len(examples):
        raise GenloomError(
            f"only {len(examples)} pairs; too few to hold out {n_val} for validation and {n_test} for test"
        )
    return ParallelSplits(
        train=examples[n_val + n_test :], val=examples[:n_val], test=examples[n_val : n_val + n_test]
    )


def task_tag(src_lang: str, tgt_lang: str) -> str:
    """The tag a multi-task model reads to know the direction, e.g. `<de-en> ` (trailing space included)."""
    return f"<{src_lang}-{tgt_lang}> "


def add_task_prefix(pairs: Sequence[tuple[str, str]], prefix: str) -> list[ParallelExample]:
    """Prepend `prefix` to every source, as T5 and multilingual NMT (Johnson et al., 2017) mark the task.

    Only the source gets it: the model should condition on the tag, never learn to generate it.
    """
    if not prefix:
        raise GenloomError("the task prefix is empty")
    return [ParallelExample(prefix + src, tgt) for src, tgt in pairs]


BUILTIN_PREFIX = "builtin:"
LANG_PLACEHOLDER = "{lang}"


def expand_language_pattern(data: str, src_lang: str, tgt_lang: str) -> str:
    """`train.{lang}.gz` -> `train.de.gz,train.en.gz`: one pattern names a corpus's line-aligned files for
    every language, so each direction of a multi-task model reads its own pair of files."""
    if LANG_PLACEHOLDER not in data:
        return data
    if "," in data:
        raise GenloomError(f"use either SRC_FILE,TGT_FILE or one pattern with {LANG_PLACEHOLDER}, not both: {data!r}")
    return f"{data.replace(LANG_PLACEHOLDER, src_lang)},{data.replace(LANG_PLACEHOLDER, tgt_lang)}"


def parse_directions(text: str) -> list[tuple[str, str]]:
    """`de-en,en-de,fr-en` -> [("de", "en"), ("en", "de"), ("fr", "en")]."""
    directions = []
    for item in text.split(","):
        src, sep, tgt = item.strip().partition("-")
        if not sep or not src or not tgt or "-" in tgt or src == tgt:
            raise GenloomError(f"bad direction {item.strip()!r} in {text!r}; expected SRC-TGT pairs like de-en,fr-en")
        directions.append((src, tgt))
    if len(set(directions)) != len(directions):
        raise GenloomError(f"a direction is listed twice in {text!r}")
    return directions


def load_parallel_splits(
    data: str,
    src_lang: str,
    tgt_lang: str,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> ParallelSplits:
    """Train / validation / test pairs from a data spec, as the `train translate` and `eval translate`
    commands take it: `builtin:NAME` (a built-in corpus in `src_lang` -> `tgt_lang`, with its own fixed
    splits; the fractions are ignored), `SRC_FILE,TGT_FILE` (two line-aligned files) or a TSV file. Files
    are cut by `split_pairs` with `seed`, so the same arguments always give the same test set.
    """
    data = expand_language_pattern(data, src_lang, tgt_lang)
    if data.startswith(BUILTIN_PREFIX):
        from genloom.data.builtin_parallel import builtin_pairs

        name = data[len(BUILTIN_PREFIX) :]
        parts = {
            split: [ParallelExample(*p) for p in builtin_pairs(name, src_lang, tgt_lang, split)]
            for split in ("train", "val", "test")
        }
        return ParallelSplits(train=parts["train"], val=parts["val"], test=parts["test"])
    if "," in data:
        src_file, _, tgt_file = data.partition(",")
        if not src_file or not tgt_file or "," in tgt_file:
            raise GenloomError(f"expected SRC_FILE,TGT_FILE (two paths, one comma), got {data!r}")
        pairs = load_parallel(Path(src_file), Path(tgt_file))
    else:
        pairs = load_parallel(Path(data))
    return split_pairs(pairs, val_fraction, test_fraction, seed)


def load_directions(
    data: str,
    directions: Sequence[tuple[str, str]],
    val_fraction: float = 0.05,
    val_data: str | None = None,
    seed: int = 0,
) -> ParallelSplits:
    """Training data for one direction (plain pairs) or several (a multi-task model: every source is led by
    its direction's task tag, and all directions are mixed into each split).

    With `val_data` (a second data spec, e.g. a corpus's official dev set) every pair of `data` trains and
    `val_data` validates; otherwise `data` is split by `load_parallel_splits`. File patterns with `{lang}`
    give each direction its own files; a line-aligned corpus in several languages is cut the same way for
    every direction, so no sentence is held out in one direction and trained on in another.
    """
    if not directions:
        raise GenloomError("no translation direction given")
    parts = []
    for src, tgt in directions:
        if val_data is None:
            parts.append(load_parallel_splits(data, src, tgt, val_fraction, seed=seed))
        else:
            train, val = (load_parallel_splits(d, src, tgt, 0.0, 0.0, seed).train for d in (data, val_data))
            parts.append(ParallelSplits(train=train, val=val, test=[]))
    if len(directions) == 1:
        return parts[0]
    tagged = [
        {name: add_task_prefix(getattr(part, name), task_tag(src, tgt)) if getattr(part, name) else []
         for name in ("train", "val", "test")}
        for part, (src, tgt) in zip(parts, directions, strict=True)
    ]
    merged = ParallelSplits(**{name: [p for t in tagged for p in t[name]] for name in ("train", "val", "test")})
    # Shuffled, so that the first validation pairs (those scored by BLEU during training) cover every direction.
    random.Random(seed).shuffle(merged.val)
    return merged
