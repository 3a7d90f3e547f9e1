"""Parallel corpora: TSV and line-aligned files (plain and .gz), their errors, splits and task prefixes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from genloom.data.parallel import (
    ParallelExample,
    add_task_prefix,
    load_parallel,
    read_aligned,
    read_tsv,
    split_pairs,
    task_tag,
)
from genloom.errors import GenloomError

PAIRS = [("Guten Morgen", "Good morning"), ("Danke", "Thank you"), ("Wie geht's?", "How are you?")]


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---- TSV -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pairs.tsv", "pairs.tsv.gz"])
def test_read_tsv_plain_and_gzip(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, "".join(f"{s}\t{t}\r\n" for s, t in PAIRS) + "\n")  # CRLF, trailing blank line
    pairs = read_tsv(path)
    assert pairs == [ParallelExample(s, t) for s, t in PAIRS]
    assert pairs[0].src == "Guten Morgen" and pairs[0].tgt == "Good morning"
    assert load_parallel(path) == pairs


def test_tsv_line_without_one_tab_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.tsv", "a\tb\nno tab here\nc\td\n")
    with pytest.raises(GenloomError, match=r"bad\.tsv:2: .*exactly one tab.*found 0"):
        read_tsv(path)
    path = _write(tmp_path / "two.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(GenloomError, match=r"two\.tsv:2: .*found 2"):
        read_tsv(path)


def test_tsv_empty_side_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.tsv", "a\tb\nc\td\n \tfoo\n")
    with pytest.raises(GenloomError, match=r"empty\.tsv:3: empty source side"):
        read_tsv(path)
    path = _write(tmp_path / "empty2.tsv", "a\t\n")
    with pytest.raises(GenloomError, match=r"empty2\.tsv:1: empty target side"):
        read_tsv(path)


def test_tsv_missing_empty_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(GenloomError, match="does not exist"):
        read_tsv(tmp_path / "nope.tsv")
    with pytest.raises(GenloomError, match="is empty"):
        read_tsv(_write(tmp_path / "blank.tsv", "\n\n"))
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("Grüße\tgreetings\n".encode("latin-1"))
    with pytest.raises(GenloomError, match="not UTF-8"):
        read_tsv(latin1)
    fake_gz = tmp_path / "fake.tsv.gz"
    fake_gz.write_text("a\tb\n")
    with pytest.raises(GenloomError, match="not a valid gzip"):
        read_tsv(fake_gz)


# ---- two line-aligned files ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_aligned_plain_and_gzip(tmp_path: Path, suffix: str) -> None:
    src = _write(tmp_path / f"train.de{suffix}", "".join(f"{s}\n" for s, _ in PAIRS))
    tgt = _write(tmp_path / f"train.en{suffix}", "".join(f"{t}\n" for _, t in PAIRS))
    assert read_aligned(src, tgt) == [ParallelExample(s, t) for s, t in PAIRS]
    assert load_parallel(src, tgt) == read_aligned(src, tgt)


def test_aligned_plain_with_gzip(tmp_path: Path) -> None:
    src = _write(tmp_path / "a.de", "eins\nzwei\n")
    tgt = _write(tmp_path / "a.en.gz", "one\ntwo\n")
    assert read_aligned(src, tgt) == [("eins", "one"), ("zwei", "two")]


def test_misaligned_files_name_both_counts(tmp_path: Path) -> None:
    src = _write(tmp_path / "x.de", "eins\nzwei\ndrei\n")
    tgt = _write(tmp_path / "x.en", "one\ntwo\n")
    with pytest.raises(GenloomError, match=r"x\.de has 3 lines but .*x\.en has 2"):
        read_aligned(src, tgt)


def test_aligned_empty_line_names_file_and_line(tmp_path: Path) -> None:
    src = _write(tmp_path / "y.de", "eins\nzwei\n")
    tgt = _write(tmp_path / "y.en", "one\n\n")
    with pytest.raises(GenloomError, match=r"y\.en:2: empty line"):
        read_aligned(src, tgt)


# ---- splits and prefixes -------------------------------------------------------------------------------


def test_split_pairs_disjoint_complete_and_seeded() -> None:
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    splits = split_pairs(pairs, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (70, 10, 20)
    together = splits.train + splits.val + splits.test
    assert sorted(together) == sorted(ParallelExample(*p) for p in pairs)
    again = split_pairs(pairs, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert again == splits
    other = split_pairs(pairs, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert other.test != splits.test


def test_split_pairs_tiny_and_bad_fractions() -> None:
    splits = split_pairs(PAIRS, val_fraction=0.01, test_fraction=0.0, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (2, 1, 0)
    with pytest.raises(GenloomError, match="too few"):
        split_pairs(PAIRS[:2], val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(GenloomError, match="val_fraction"):
        split_pairs(PAIRS, val_fraction=1.5)
    with pytest.raises(GenloomError, match="must be below 1"):
        split_pairs(PAIRS, val_fraction=0.5, test_fraction=0.5)


def test_task_prefix_only_on_source() -> None:
    tag = task_tag("de", "en")
    assert tag == "<de-en> "
    tagged = add_task_prefix(PAIRS, tag)
    assert tagged[0] == ParallelExample("<de-en> Guten Morgen", "Good morning")
    assert [p.tgt for p in tagged] == [t for _, t in PAIRS]
    with pytest.raises(GenloomError, match="empty"):
        add_task_prefix(PAIRS, "")


def test_parse_directions_and_language_patterns():
    from genloom.data.parallel import expand_language_pattern, parse_directions

    assert parse_directions("de-en, en-de,fr-en") == [("de", "en"), ("en", "de"), ("fr", "en")]
    for bad in ("de", "de-", "de-en-fr", "en-en"):
        with pytest.raises(GenloomError, match="bad direction"):
            parse_directions(bad)
    with pytest.raises(GenloomError, match="twice"):
        parse_directions("de-en,de-en")
    assert expand_language_pattern("d/train.{lang}.gz", "de", "en") == "d/train.de.gz,d/train.en.gz"
    assert expand_language_pattern("a.tsv", "de", "en") == "a.tsv"
    with pytest.raises(GenloomError, match="not both"):
        expand_language_pattern("a.{lang},b", "de", "en")


def test_load_directions_tags_each_direction_and_cuts_all_alike(tmp_path):
    from genloom.data.parallel import load_directions

    n = 60
    for lang in ("de", "en", "fr"):
        _write(tmp_path / f"c.{lang}.gz", "".join(f"{lang} sentence {i}\n" for i in range(n)))
    pattern = str(tmp_path / "c.{lang}.gz")
    one = load_directions(pattern, [("de", "en")], val_fraction=0.1)
    assert len(one.train) + len(one.val) + len(one.test) == n and not one.train[0].src.startswith("<")

    multi = load_directions(pattern, [("de", "en"), ("en", "de"), ("fr", "en")], val_fraction=0.1)
    assert len(multi.train) == 3 * len(one.train)
    assert {p.src.split()[0] for p in multi.val} == {"<de-en>", "<en-de>", "<fr-en>"}
    # Sentence i is held out in every direction or in none: no direction trains on another's test sentence.
    held = {p.src.split()[-1] for p in multi.val + multi.test}
    assert held.isdisjoint({p.src.split()[-1] for p in multi.train})

    _write(tmp_path / "dev.de", "de dev\n")
    _write(tmp_path / "dev.en", "en dev\n")
    with_dev = load_directions(pattern, [("de", "en")], val_data=str(tmp_path / "dev.{lang}"))
    assert len(with_dev.train) == n and with_dev.val == [("de dev", "en dev")] and with_dev.test == []
