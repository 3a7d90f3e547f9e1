"""Character and byte-level BPE tokenizers: round trips, errors, saving and GPT-2-format loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genloom.errors import GenloomError
from genloom.tokenizers import SPECIAL_TOKENS, BPETokenizer, CharTokenizer, SpecialIds, load_tokenizer
from genloom.tokenizers.bpe import EOS_TOKEN

CORPUS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "To be, or not to be, that is the question:\n",
    "Whether 'tis nobler in the mind to suffer\n",
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.\n",
] * 20

ODD_TEXTS = [
    "hello world",
    "Ünïcödé àccents — naïve café, façade, Å, ß",
    "emoji 🦊🐶🏳️‍🌈 and CJK 漢字かな 한국어",
    "lines\n\nwith\ttabs\r\nand   spaces  ",
    " leading space and trailing \n",
    "",
    "\x00\x01 control \u200b zero-width",
]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, vocab_size=300)


def test_char_round_trip() -> None:
    text = "hello, wörld!\nhi 🦊"
    tok = CharTokenizer.train(text)
    assert tok.vocab_size == len(set(text))
    assert tok.eos_id is None
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode("low")) == "low"


def test_char_unknown_raises() -> None:
    tok = CharTokenizer.train("abc")
    with pytest.raises(GenloomError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(GenloomError):
        CharTokenizer.train("")


def test_char_save_load(tmp_path: Path) -> None:
    tok = CharTokenizer.train("ça va? 🙂\n")
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, CharTokenizer)
    assert loaded.chars == tok.chars
    assert loaded.encode("va 🙂") == tok.encode("va 🙂")


def test_bpe_vocab_size_and_eos(bpe: BPETokenizer) -> None:
    assert 257 <= bpe.vocab_size <= 300
    assert bpe.eos_id is not None
    assert 0 <= bpe.eos_id < bpe.vocab_size
    assert bpe.encode(EOS_TOKEN) == [bpe.eos_id]
    assert bpe.decode([bpe.eos_id]) == EOS_TOKEN
    # Merges were learned: common words take fewer tokens than bytes.
    assert len(bpe.encode("the question")) < len(b"the question")


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_bpe_round_trips_any_unicode(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_encode_batch(bpe: BPETokenizer) -> None:
    assert bpe.encode_batch(ODD_TEXTS) == [bpe.encode(t) for t in ODD_TEXTS]


def test_bpe_vocab_too_small() -> None:
    with pytest.raises(GenloomError, match="256"):
        BPETokenizer.train(CORPUS, vocab_size=256)


def test_bpe_save_load(tmp_path: Path, bpe: BPETokenizer) -> None:
    bpe.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.vocab_size == bpe.vocab_size
    assert loaded.eos_id == bpe.eos_id
    for text in [*ODD_TEXTS, CORPUS[3]]:
        assert loaded.encode(text) == bpe.encode(text)
        assert loaded.decode(loaded.encode(text)) == text


def test_gpt2_format_vocab_and_merges(tmp_path: Path, bpe: BPETokenizer) -> None:
    bpe.tokenizer.model.save(str(tmp_path))
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    assert not (tmp_path / "tokenizer.json").exists()
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer)
    assert loaded.eos_id == bpe.eos_id
    assert loaded.vocab_size == len(json.loads((tmp_path / "vocab.json").read_text()))
    for text in [*ODD_TEXTS, *CORPUS[:4], f"end of one{EOS_TOKEN}start of another"]:
        assert loaded.encode(text) == bpe.encode(text), text
        assert loaded.decode(loaded.encode(text)) == text


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(GenloomError):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing
    with pytest.raises(GenloomError):
        load_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("not a merges file\n")
    (tmp_path / "vocab.json").write_text("[not json")
    with pytest.raises(GenloomError):
        load_tokenizer(tmp_path)


CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_tokens_can_be_added_to_any_tokenizer(kind: str, tmp_path: Path) -> None:
    tok = CharTokenizer.train("hello world|<>_imstarend") if kind == "char" else BPETokenizer.train(CORPUS, 300)
    before = tok.vocab_size
    plain = tok.encode("hello")
    ids = tok.add_special_tokens(CHAT_TOKENS)
    assert ids == [before, before + 1] and tok.vocab_size == before + 2
    assert tok.add_special_tokens(CHAT_TOKENS) == ids  # adding them again changes nothing
    assert set(CHAT_TOKENS) <= set(tok.special_tokens) and tok.token_id("<|im_end|>") == ids[1]
    text = "<|im_start|>hello<|im_end|>"
    assert tok.encode(text) == [ids[0], *plain, ids[1]]  # one id each, wherever they appear
    assert tok.decode(tok.encode(text)) == text and tok.encode("hello") == plain
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.encode(text) == tok.encode(text) and again.special_tokens == tok.special_tokens
    with pytest.raises(GenloomError, match="has no token '<pad>'"):
        tok.token_id("<pad>")


def test_special_ids_of_a_char_tokenizer() -> None:
    tok = CharTokenizer.train("abc")
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    assert SpecialIds.of(tok) == SpecialIds(pad=3, bos=4, eos=5)
    with pytest.raises(GenloomError, match="has no token '<pad>'"):
        SpecialIds.of(CharTokenizer.train("abc"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid character vocabulary"),
        ('{"chars": ["a", "bb"]}', "distinct single characters"),
        ('{"chars": ["a", "a"]}', "distinct single characters"),
        ('{"chars": ["a"], "special_tokens": [3]}', "special_tokens"),
        ("[1, 2]", "distinct single characters"),
    ],
)
def test_a_corrupt_char_vocabulary_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "char_tokenizer.json").write_text(content)
    with pytest.raises(GenloomError, match=message):
        load_tokenizer(tmp_path)
