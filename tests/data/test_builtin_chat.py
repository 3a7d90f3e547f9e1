"""Built-in chat sets: exact answers, hash-chosen splits that never leak, short ASCII conversations."""

from __future__ import annotations

import re
from collections import Counter
from pydoc_data.topics import topics

import pytest
from num2words import num2words

from genloom.data import builtin_chat as chat_module
from genloom.data.builtin_chat import (
    BUILTIN_CHAT_SETS,
    CHAT_FAMILIES,
    SPLITS,
    WORDS,
    ChatExample,
    arithmetic_digits,
    builtin_chat,
    split_of,
)
from genloom.errors import GenloomError
from genloom.tokenizers.chat_tools import CALC_END, CALC_START, evaluate, visible_text

# Recomputed here, independently of the module, from the question text alone.
_UNIT_FACTORS = {
    ("kilometer", "meter"): 1000,
    ("meter", "centimeter"): 100,
    ("kilogram", "gram"): 1000,
    ("hour", "minute"): 60,
    ("minute", "second"): 60,
    ("day", "hour"): 24,
    ("liter", "milliliter"): 1000,
}


def _user(example: ChatExample, turn: int = 0) -> str:
    return example.messages[2 * turn]["content"]


def _expected_arithmetic(question: str) -> int:
    match = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", question)
    assert match, question
    return int(eval(f"{match[1]} {match[2]} {match[3]}"))


def _expected_units(question: str) -> str:
    match = re.fullmatch(r"How many (\w+)s are in (\d+) (\w+?)s?\?", question)
    assert match, question
    target, value, source = match[1], int(match[2]), match[3]
    if (source, target) in _UNIT_FACTORS:
        return str(value * _UNIT_FACTORS[source, target])
    factor = _UNIT_FACTORS[target, source]
    assert value % factor == 0 and 1 <= value // factor <= 99, question
    return str(value // factor)


def _expected_instruction(question: str) -> str:
    if question.startswith("Reverse these words: "):
        words = question.removeprefix("Reverse these words: ").split()
        assert 2 <= len(words) <= 4 and set(words) <= set(WORDS)
        return " ".join(words[::-1])
    if question.startswith("Sort these numbers: "):
        numbers = [int(x) for x in question.removeprefix("Sort these numbers: ").split()]
        assert 3 <= len(numbers) <= 5 and all(0 <= x <= 99 for x in numbers)
        return " ".join(map(str, sorted(numbers)))
    if match := re.fullmatch(r"Spell (\w+) backwards\.", question):
        assert match[1] in WORDS
        return match[1][::-1]
    match = re.fullmatch(r"Write (\d+) in words\.", question)
    assert match and 0 <= int(match[1]) <= 999, question
    return str(num2words(int(match[1])))


def _pydoc_opening(key: str) -> str:
    # The topic's first unindented body paragraph, cleaned like the module says (ASCII folding, no "*" or
    # "(see ...)"), so the answer must be a prefix of it.
    body = topics[key].split("\n", 2)[2]
    paragraph = next(p for p in re.split(r"\n\s*\n", body.strip("\n")) if not p[0].isspace())
    text = " ".join(paragraph.replace("\u2019", "'").replace("\u2014", "-").replace("*", "").split())
    return re.sub(r"\s*\(see [^)]*\)", "", text)


def _check_answer(example: ChatExample) -> None:
    question = _user(example)
    if example.family == "arithmetic":
        assert example.answer == str(_expected_arithmetic(question))
    elif example.family == "units":
        assert example.answer == _expected_units(question)
    elif example.family == "instructions":
        assert example.answer == _expected_instruction(question)
    elif example.family == "pydoc":
        keys = [k for k, q in chat_module.PYDOC_QUESTIONS.items() if q == question]
        assert len(keys) == 1
        assert example.answer.endswith(".") and len(example.answer) <= 140
        assert _pydoc_opening(keys[0]).startswith(example.answer[:-1])
    else:
        assert example.family == "follow_up"
        first = _expected_arithmetic(question)
        assert example.messages[1]["content"] == str(first)
        follow = r"Now (add|subtract|multiply) (?:that by )?(\d)(?: to that| from that)?\."
        match = re.fullmatch(follow, _user(example, 1))
        assert match, _user(example, 1)
        n = int(match[2])
        assert example.answer == str({"add": first + n, "subtract": first - n, "multiply": first * n}[match[1]])


@pytest.mark.parametrize("name", BUILTIN_CHAT_SETS)
def test_answers_correct_and_conversations_well_formed(name: str) -> None:
    for split in SPLITS:
        examples = builtin_chat(name, split, 300, seed=3)
        assert len(examples) == 300
        for ex in examples:
            assert ex.family in CHAT_FAMILIES and (name == "chat" or ex.family == name)
            roles = [m["role"] for m in ex.messages]
            assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
            assert ex.messages[-1]["content"] == ex.answer and ex.answer
            assert len(ex.messages) == (4 if ex.family == "follow_up" else 2)
            content = "".join(m["content"] for m in ex.messages)
            assert content.isascii() and len(content) < 200, content
            _check_answer(ex)


def test_splits_never_share_a_question() -> None:
    seen: dict[str, dict[str, set[str]]] = {}
    for split in SPLITS:
        keys = {k for seed in (0, 1) for k in chat_module._keys("chat", split, 3000, seed)}
        assert all(split_of(k) == split for k in keys)
        examples = [chat_module._render(k) for k in keys]
        seen[split] = {"keys": keys, "first": {_user(ex) for ex in examples}}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not seen[a]["keys"] & seen[b]["keys"]
        # Also across families: a held-out follow-up never opens with a training arithmetic question.
        assert not seen[a]["first"] & seen[b]["first"]
    for family in CHAT_FAMILIES:
        train = {_user(ex) for ex in builtin_chat(family, "train", 3000, seed=5)}
        test = {_user(ex) for ex in builtin_chat(family, "test", 3000, seed=6)}
        assert not train & test


def test_split_shares_and_stability() -> None:
    counts = Counter(split_of(f"arithmetic:add:{a}:{b}") for a in range(100) for b in range(100))
    assert 0.08 < counts["test"] / 10_000 < 0.12 and 0.035 < counts["val"] / 10_000 < 0.065
    assert split_of("follow_up:add:12:37:then-mul:3") == split_of("arithmetic:add:12:37")
    # The same key renders the same text however it was drawn.
    assert chat_module._render("arithmetic:sub:12:37").messages[0]["content"] == "What is 12 - 37?"
    assert chat_module._render("arithmetic:sub:12:37").answer == "-25"
    assert chat_module._render("units:km-m:7").messages[0]["content"] == "How many meters are in 7 kilometers?"
    assert chat_module._render("units:min-h:180").answer == "3"
    assert chat_module._render("instructions:number_words:42").answer == "forty-two"
    assert chat_module._render("follow_up:add:12:37:then-add:5").answer == "54"


def test_pydoc_topics_in_every_split() -> None:
    answers = chat_module._pydoc_answers()
    assert len(answers) >= 30 and len(set(answers.values())) == len(answers)
    by_split = Counter(split_of(f"pydoc:{k}") for k in answers)
    assert all(by_split[s] >= 1 for s in SPLITS)
    # A small split repeats its few topics rather than looping or borrowing from another split.
    val = builtin_chat("pydoc", "val", 50)
    assert len(val) == 50 and len({_user(ex) for ex in val}) == by_split["val"]
    if "with" in answers:
        assert answers["with"].startswith('The "with" statement is used to wrap the execution of a block')


def test_reproducible_and_seeded() -> None:
    assert builtin_chat("chat", "train", 50, seed=1) == builtin_chat("chat", "train", 50, seed=1)
    assert builtin_chat("chat", "train", 50, seed=1) != builtin_chat("chat", "train", 50, seed=2)
    assert builtin_chat("arithmetic", "test", 20) != builtin_chat("arithmetic", "val", 20)


def test_chat_interleaves_all_families() -> None:
    examples = builtin_chat("chat", "test", 5)
    assert [ex.family for ex in examples] == list(CHAT_FAMILIES)
    counts = Counter(ex.family for ex in builtin_chat("chat", "train", 103))
    assert set(counts) == set(CHAT_FAMILIES) and max(counts.values()) - min(counts.values()) <= 1


def test_arithmetic_digits() -> None:
    assert arithmetic_digits(chat_module._render("arithmetic:mul:7:123")) == 3
    assert arithmetic_digits(chat_module._render("arithmetic:add:12:5")) == 2
    digits = Counter(arithmetic_digits(ex) for ex in builtin_chat("arithmetic", "train", 900))
    assert set(digits) == {1, 2, 3} and digits[1] > 50  # max of two uniform digit counts: 1 in 9 is one-digit
    with pytest.raises(GenloomError, match="arithmetic"):
        arithmetic_digits(chat_module._render("units:km-m:7"))


def test_errors() -> None:
    with pytest.raises(GenloomError, match="choose from: chat, arithmetic"):
        builtin_chat("poems", "train", 5)
    with pytest.raises(GenloomError, match="choose from: train, val, test"):
        builtin_chat("chat", "dev", 5)
    with pytest.raises(GenloomError, match="positive"):
        builtin_chat("chat", "train", 0)


def test_mixtures_interleave_their_shares() -> None:
    examples = builtin_chat("arithmetic+arithmetic+instructions", "train", 30, seed=2)
    assert [ex.family for ex in examples[:3]] == ["arithmetic", "arithmetic", "instructions"]
    assert Counter(ex.family for ex in examples) == {"arithmetic": 20, "instructions": 10}
    # "chat" is the mixture of all five families, in the same order.
    everything = builtin_chat("+".join(CHAT_FAMILIES), "test", 20, seed=4)
    assert [ex.family for ex in everything] == [ex.family for ex in builtin_chat("chat", "test", 20, seed=4)]
    with pytest.raises(GenloomError, match="unknown built-in chat set 'bogus'"):
        builtin_chat("arithmetic+bogus", "train", 3)


def test_calculator_answers_call_it_on_the_same_questions() -> None:
    plain = builtin_chat("chat", "train", 300, seed=3)
    with_calls = builtin_chat("chat", "train", 300, seed=3, calculator=True)
    calls = 0
    for a, b in zip(plain, with_calls, strict=True):
        assert [m for m in a.messages if m["role"] == "user"] == [m for m in b.messages if m["role"] == "user"]
        assert visible_text(b.answer) == a.answer and b.answer == b.messages[-1]["content"]
        for message in b.messages:
            if CALC_START in message["content"]:
                calls += 1
                expression = message["content"].split(CALC_START)[1].split(CALC_END)[0]
                assert evaluate(expression) == visible_text(message["content"])  # the call computes the answer
        assert (CALC_START in b.answer) == (b.family in ("arithmetic", "units", "follow_up"))
    assert calls > 150
