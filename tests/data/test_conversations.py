"""Conversation files and batches: one-line errors with line numbers, fitting the context at turn boundaries, and
packed rows whose document masking makes each conversation compute exactly what it computes alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genloom.data.conversations import (
    IGNORE,
    Conversation,
    check_learnable,
    encode_conversations,
    load_conversations,
    pack,
    padded_batch,
    read_conversations,
)
from genloom.errors import GenloomError
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import CharTokenizer
from genloom.tokenizers.chat_template import CHATML, add_chat_tokens

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,?:+-*\n"


def _tokenizer() -> CharTokenizer:
    tokenizer = CharTokenizer(sorted(set(ALPHABET)))
    add_chat_tokens(tokenizer)
    return tokenizer


def _chat(*turns: str) -> Conversation:
    roles = ["user", "assistant"] * len(turns)
    return Conversation(tuple({"role": r, "content": t} for r, t in zip(roles, turns, strict=False)))


def _write(path: Path, *records: object) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(("bad", "message"), [
    ("{not json", "invalid JSON"),
    ({"text": "hi"}, "expected an object with a \"messages\" list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "message 1 has role 'bot'"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "content that is not a string"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
    ({"messages": "hi"}, "non-empty list"),
])
def test_a_malformed_line_is_named(tmp_path: Path, bad: object, message: str) -> None:
    path = _write(tmp_path / "chats.jsonl", GOOD, "", bad)
    with pytest.raises(GenloomError, match=f"chats.jsonl:3: .*{message}"):
        read_conversations(path)


def test_a_file_splits_into_train_and_val(tmp_path: Path) -> None:
    path = _write(tmp_path / "chats.jsonl", *[{**GOOD, "family": f"f{i}"} for i in range(10)])
    train = load_conversations(str(path), "train", 100, val_fraction=0.2)
    val = load_conversations(str(path), "val", 100, val_fraction=0.2)
    assert [c.family for c in train] == [f"f{i}" for i in range(8)] and [c.family for c in val] == ["f8", "f9"]
    assert len(load_conversations(str(path), "test", 3)) == 3


def test_long_conversations_are_cut_at_a_turn_boundary_or_dropped() -> None:
    tokenizer = _tokenizer()
    short = _chat("What is 2 + 3?", "5")
    two_turns = _chat("What is 2 + 3?", "5", "Now add 5 to that, and then tell me more.", "10 " * 20)
    too_long = _chat("x" * 100, "y")
    unknown = _chat("What is 2 % 3?", "2")  # '%' is not in the vocabulary
    context = len(encode_conversations([short], tokenizer, CHATML, 1000)[0][0].ids) + 5
    encoded, report = encode_conversations([short, two_turns, too_long, unknown], tokenizer, CHATML, context)
    assert (report.kept, report.truncated, report.too_long, report.unencodable) == (2, 1, 1, 1)
    assert encoded[1].ids == encoded[0].ids  # the follow-up did not fit: the first exchange is kept
    assert "1 cut at a turn boundary" in report.summary() and "'%'" in report.summary()
    with pytest.raises(GenloomError, match="no assistant tokens to learn from"):
        check_learnable([], report, "data")


def test_padded_targets_are_the_assistant_tokens_only() -> None:
    tokenizer = _tokenizer()
    encoded, _ = encode_conversations([_chat("What is 2 + 3?", "5"), _chat("hi", "hello there")], tokenizer,
                                      CHATML, 100)
    inputs, targets = padded_batch(encoded)
    assert inputs.shape == targets.shape == (2, max(len(e.ids) for e in encoded) - 1)
    learnt = [tokenizer.decode([t for t in row.tolist() if t != IGNORE]) for row in targets]
    assert learnt == ["5<|im_end|>", "hello there<|im_end|>"]


def test_a_packed_row_computes_what_each_conversation_computes_alone() -> None:
    tokenizer = _tokenizer()
    conversations = [_chat("What is 2 + 3?", "5"), _chat("hi", "hello there"), _chat("Sort: 3 1 2", "1 2 3")]
    encoded, _ = encode_conversations(conversations, tokenizer, CHATML, 128)
    torch.manual_seed(0)
    for positional in ("learned", "rotary"):
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=128, n_layers=2, d_model=32,
                              n_heads=4, positional=positional)).eval()
        rows = pack(encoded, 128, seed=0)
        assert len(rows.inputs) == 1  # all three share one row
        packed = model(rows.inputs, positions=rows.positions, document_ids=rows.document_ids)[0]  # (T, V)
        for doc in range(3):
            where = rows.document_ids[0] == doc
            alone = model(rows.inputs[0, where][None])[0]
            torch.testing.assert_close(packed[where], alone, atol=1e-5, rtol=1e-5)
            assert rows.positions[0, where].tolist() == list(range(int(where.sum())))


def test_packing_starts_a_new_row_when_the_next_conversation_does_not_fit() -> None:
    tokenizer = _tokenizer()
    encoded, _ = encode_conversations([_chat("What is 2 + 3?", "5")] * 5, tokenizer, CHATML, 100)
    length = len(encoded[0].ids) - 1
    rows = pack(encoded, 2 * length + 1, seed=0)
    assert len(rows.inputs) == 3 and (rows.document_ids >= 0).sum() == 5 * length
    assert bool((rows.targets[rows.document_ids < 0] == IGNORE).all())
