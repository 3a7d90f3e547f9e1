"""Text corpora: reading files, folders and JSONL; cached tokenization; window sampling; built-in corpora."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.data.builtin import builtin_corpus
from genloom.data.text import read_documents, sample_windows, tokenize_corpus
from genloom.errors import GenloomError
from genloom.tokenizers import BPETokenizer, CharTokenizer, Tokenizer

DOCS = [
    "The quick brown fox jumps over the lazy dog.\n" * 5,
    "To be, or not to be, that is the question.\n" * 5,
    "Whether 'tis nobler in the mind to suffer the slings and arrows.\n" * 5,
]


class CountingMaker:
    """A make_tokenizer callable that counts how often it is called."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, docs: list[str]) -> Tokenizer:
        self.calls += 1
        return CharTokenizer.train("\n\n".join(docs))


# ---- read_documents ------------------------------------------------------------------------------------


def test_read_text_file(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("hello\nworld\n", encoding="utf-8")
    assert read_documents(path) == ["hello\nworld\n"]


def test_read_folder_nested_sorted_hidden_skipped(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "b_dir" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    (root / "b.txt").write_text("second")
    (root / "a.md").write_text("first")
    (root / "b_dir" / "c.rst").write_text("third")
    (root / "b_dir" / "deeper" / "d").write_text("fourth")  # no suffix: still text
    (root / "z.jsonl").write_text(json.dumps({"text": "fifth"}) + "\n")
    (root / ".secret.txt").write_text("hidden file")
    (root / ".hidden_dir" / "e.txt").write_text("in a hidden folder")
    (root / "image.png").write_bytes(b"\x89PNG not text")
    assert read_documents(root) == ["first", "second", "third", "fourth", "fifth"]


def test_read_folder_inside_hidden_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only names below the given folder count as hidden; the folder may itself live in e.g. ~/.local,
    # or be given relative to the working directory as ../corpus.
    root = tmp_path / ".config" / "corpus"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("some text")
    assert read_documents(root) == ["some text"]
    (tmp_path / ".config" / "work").mkdir()
    monkeypatch.chdir(tmp_path / ".config" / "work")
    assert read_documents(Path("../corpus")) == ["some text"]


def test_read_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"text": "one", "id": 1}), "", json.dumps({"text": "two"}), "   "]
    path.write_text("\n".join(lines) + "\n")
    assert read_documents(path) == ["one", "two"]


def _error(path: Path) -> str:
    with pytest.raises(GenloomError) as info:
        read_documents(path)
    return str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    message = _error(tmp_path / "nope.txt")
    assert "nope.txt" in message and "does not exist" in message


@pytest.mark.parametrize("content", ["", "  \n\t\n  "], ids=["empty", "whitespace"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content)
    message = _error(path)
    assert "empty.txt" in message and "empty" in message


def test_folder_without_text_files(tmp_path: Path) -> None:
    root = tmp_path / "binaries"
    root.mkdir()
    (root / "weights.bin").write_bytes(b"\x00\x01")
    (root / ".hidden.txt").write_text("hidden")
    message = _error(root)
    assert "binaries" in message and "no text files" in message


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    message = _error(path)
    assert f"{path}:2" in message and "invalid JSON" in message


@pytest.mark.parametrize("record", [{"content": "x"}, {"text": 3}, ["text"]], ids=["no-text", "not-str", "list"])
def test_jsonl_record_without_text(tmp_path: Path, record: object) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n")
    message = _error(path)
    assert f"{path}:2" in message and "text" in message


@pytest.mark.parametrize("name", ["latin1.txt", "latin1.jsonl"])
def test_non_utf8_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes("caf\u00e9 na\u00efve".encode("latin-1"))
    message = _error(path)
    assert name in message and "UTF-8" in message


def test_non_utf8_file_in_folder(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    message = _error(tmp_path)
    assert "bad.txt" in message and "UTF-8" in message


# ---- tokenize_corpus -----------------------------------------------------------------------------------


def test_small_vocabulary_uses_uint16(tmp_path: Path) -> None:
    arrays = tokenize_corpus(DOCS, "char", CountingMaker(), cache_dir=tmp_path)
    assert arrays.train.dtype == np.uint16 and arrays.val.dtype == np.uint16
    assert arrays.tokenizer.vocab_size == len(set("\n\n".join(DOCS)))


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_split_sizes_and_val_is_tail(tmp_path: Path, val_fraction: float) -> None:
    arrays = tokenize_corpus(DOCS, "char", CountingMaker(), val_fraction=val_fraction, cache_dir=tmp_path)
    full = CharTokenizer.train("\n\n".join(DOCS)).encode("\n\n".join(DOCS))
    n_val = int(len(full) * val_fraction)
    assert len(arrays.val) == n_val
    assert len(arrays.train) == len(full) - n_val
    assert arrays.train.tolist() == full[:-n_val]
    assert arrays.val.tolist() == full[-n_val:]


@pytest.mark.parametrize("val_fraction", [0.0, 1.0, -0.1])
def test_bad_val_fraction(tmp_path: Path, val_fraction: float) -> None:
    with pytest.raises(GenloomError, match="val_fraction"):
        tokenize_corpus(DOCS, "char", CountingMaker(), val_fraction=val_fraction, cache_dir=tmp_path)


def test_second_call_hits_cache(tmp_path: Path) -> None:
    maker = CountingMaker()
    first = tokenize_corpus(DOCS, "char", maker, cache_dir=tmp_path)
    assert maker.calls == 1
    second = tokenize_corpus(DOCS, "char", maker, cache_dir=tmp_path)
    assert maker.calls == 1
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)
    assert second.tokenizer.encode("The fox") == first.tokenizer.encode("The fox")


def test_different_spec_or_text_misses_cache(tmp_path: Path) -> None:
    maker = CountingMaker()
    tokenize_corpus(DOCS, "char", maker, cache_dir=tmp_path)
    tokenize_corpus(DOCS, "char-v2", maker, cache_dir=tmp_path)
    assert maker.calls == 2
    tokenize_corpus([*DOCS[:-1], DOCS[-1] + "!"], "char", maker, cache_dir=tmp_path)
    assert maker.calls == 3
    tokenize_corpus(DOCS, "char", maker, val_fraction=0.2, cache_dir=tmp_path)
    assert maker.calls == 4
    tokenize_corpus(DOCS, "char", maker, cache_dir=tmp_path)  # the first entry is still there
    assert maker.calls == 4


def test_too_few_tokens_for_two_splits(tmp_path: Path) -> None:
    with pytest.raises(GenloomError):
        tokenize_corpus(["a"], "char", CountingMaker(), cache_dir=tmp_path)


def test_bpe_documents_separated_by_eos(tmp_path: Path) -> None:
    tokenizer = BPETokenizer.train(DOCS, vocab_size=300)
    eos = tokenizer.eos_id
    assert eos is not None
    arrays = tokenize_corpus(DOCS, "bpe:300", lambda _: tokenizer, val_fraction=0.1, cache_dir=tmp_path)
    tokens = np.concatenate([arrays.train, arrays.val]).tolist()
    expected: list[int] = []
    for doc in DOCS:
        expected += [*tokenizer.encode(doc), eos]
    assert tokens == expected
    assert tokens.count(eos) == len(DOCS)


# ---- sample_windows ------------------------------------------------------------------------------------


def test_sample_windows_shifted_and_from_array() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    x, y = sample_windows(tokens, 8, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 10)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # arange: every window is consecutive integers starting at its first token.
    assert torch.equal(y, x + 1)
    assert torch.equal(x, x[:, :1] + torch.arange(10))
    assert int(x.min()) >= 0 and int(y.max()) <= 99


def test_sample_windows_deterministic_with_seed() -> None:
    tokens = np.random.default_rng(0).integers(0, 50, 500).astype(np.uint16)
    a = sample_windows(tokens, 4, 16, torch.Generator().manual_seed(3))
    b = sample_windows(tokens, 4, 16, torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    windows = {tuple(tokens[s : s + 17].tolist()) for s in range(len(tokens) - 16)}
    x, y = a
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        assert (*row_x, row_y[-1]) in windows


def test_sample_windows_minimal_split() -> None:
    x, y = sample_windows(np.arange(11, dtype=np.uint16), 3, 10, torch.Generator().manual_seed(0))
    assert x.tolist() == [list(range(10))] * 3
    assert y.tolist() == [list(range(1, 11))] * 3


@pytest.mark.parametrize("length", [0, 5, 10])
def test_sample_windows_split_too_short(length: int) -> None:
    with pytest.raises(GenloomError, match="block size 10"):
        sample_windows(np.arange(length, dtype=np.uint16), 2, 10, torch.Generator().manual_seed(0))


# ---- built-in corpora ----------------------------------------------------------------------------------


def test_builtin_pydoc() -> None:
    docs = builtin_corpus("pydoc")
    assert sum(len(d) for d in docs) > 400_000
    assert all(isinstance(d, str) for d in docs)


def test_builtin_unknown() -> None:
    with pytest.raises(GenloomError, match="pydoc"):
        builtin_corpus("shakespeare")
