import itertools
import random
import re
import time

import pytest
from num2words import num2words

from genloom.data.builtin import builtin_corpus
from genloom.data.icl import (
    HELD_OUT_NUMBERS,
    ICL_CHARS,
    ICL_FAMILIES,
    MAP_NAME_LENGTH,
    MAP_NAMES,
    TRAIN_NUMBERS,
    few_shot_prompt,
    few_shot_prompts,
    icl_corpus,
    icl_documents,
    is_held_out,
)
from genloom.errors import GenloomError

LINE = re.compile(r"^([^>\n]+)>([^>\n]+)$")
MAPPING_LINE = re.compile(r"^([a-z]+)([A-Z])$")  # a mapping's line has no separator: "kqzR"


def _parse(prompt: str) -> tuple[list[tuple[str, str]], str]:
    """The solved examples and the query input of a prompt, checking the line format on the way."""
    *lines, last = prompt.split("\n")
    examples = []
    for line in lines:
        match = LINE.match(line) or MAPPING_LINE.match(line)
        assert match, f"bad example line {line!r}"
        examples.append((match.group(1), match.group(2)))
    if last.isalpha() and last.islower():  # a mapping's query: a name with no ">"
        return examples, last
    assert last.endswith(">") and ">" not in last[:-1] and last[:-1]
    return examples, last[:-1]


def _mapping_table(examples: list[tuple[str, str]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for x, y in examples:
        assert MAP_NAME_LENGTH[0] <= len(x) <= MAP_NAME_LENGTH[1] and len(y) == 1 and y.isupper()
        assert table.setdefault(x, y) == y, "one prompt uses one mapping"
    assert len(set(table.values())) == len(table) <= MAP_NAMES, "the mapping is one-to-one"
    letters = "".join(table)
    assert len(set(letters)) == len(letters), "no letter in two names: a name's last letter identifies it"
    return table


def _linear_params(examples: list[tuple[str, str]]) -> set[tuple[int, int]]:
    """Every (a, b) in the family's range that explains all examples."""
    return {
        (a, b) for a in range(1, 6) for b in range(10) if all(int(y) == a * int(x) + b for x, y in examples)
    }


def _check(family: str, examples: list[tuple[str, str]], query: str, answer: str) -> None:
    """Recompute every output from the family's definition, independently of the generator's code."""
    pairs = [*examples, (query, answer)]
    if family == "mapping":
        _mapping_table(pairs)
    elif family in ("copy", "reverse", "sort"):
        rule = {"copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": lambda x: "".join(sorted(x))}[family]
        kinds = {x.isdigit() for x, _ in pairs}
        assert len(kinds) == 1, "one instance uses digits or letters, not both"
        for x, y in pairs:
            assert 2 <= len(x) <= 5 and (x.isdigit() or (x.isalpha() and x.islower())) and y == rule(x)
    elif family == "linear":
        assert all(x.isdigit() and len(x) == 1 for x, _ in pairs)
        assert _linear_params(pairs), "one a, b explains the examples and the answer"
    else:
        for x, y in pairs:
            assert 0 <= int(y) <= 99 and num2words(int(y)) == x


@pytest.mark.parametrize("family", ICL_FAMILIES)
@pytest.mark.parametrize("k", [0, 1, 8])
def test_prompt_format_and_answers(family, k):
    rng = random.Random(f"test:{family}:{k}")
    for _ in range(50):
        item = few_shot_prompt(family, k, rng)
        assert item.family == family and item.prompt.isascii() and set(item.prompt + item.answer) <= set(ICL_CHARS)
        examples, query = _parse(item.prompt)
        assert len(examples) == k and "\n" not in item.answer and item.answer
        _check(family, examples, query, item.answer)
        if k == 0:
            assert item.prompt == (query if family == "mapping" else f"{query}>")


def test_eight_shots_fit_a_small_context():
    longest = max(len(item.prompt) + len(item.answer) for f in ICL_FAMILIES for item in few_shot_prompts(f, 8, 200))
    assert longest <= 200


def test_instances_are_fresh():
    rng = random.Random(0)
    tables = [_mapping_table(_parse(few_shot_prompt("mapping", 12, rng).prompt)[0]) for _ in range(20)]
    # New names and new output letters in every prompt: two in a row with the same ones would be a tiny chance.
    assert all(t1.keys() != t2.keys() for t1, t2 in itertools.pairwise(tables))
    assert sum(set(t1.values()) != set(t2.values()) for t1, t2 in itertools.pairwise(tables)) >= 18
    params = [_linear_params(_parse(few_shot_prompt("linear", 8, rng).prompt)[0]) for _ in range(20)]
    assert len({frozenset(p) for p in params}) > 5


def test_query_is_not_an_example_except_for_a_mapping_which_it_must_show():
    rng = random.Random(1)
    for family in ICL_FAMILIES:
        for _ in range(30):
            examples, query = _parse(few_shot_prompt(family, 4, rng).prompt)
            assert (query in {x for x, _ in examples}) == (family == "mapping")


def test_reproducible_per_seed():
    assert few_shot_prompt("mapping", 5, random.Random(3)) == few_shot_prompt("mapping", 5, random.Random(3))
    assert few_shot_prompts("linear", 3, 10, seed=4) == few_shot_prompts("linear", 3, 10, seed=4)
    assert few_shot_prompts("linear", 3, 10, seed=4) != few_shot_prompts("linear", 3, 10, seed=5)
    assert icl_documents(50, seed=2) == icl_documents(50, seed=2) != icl_documents(50, seed=3)


def test_number_words_hold_out():
    assert set(HELD_OUT_NUMBERS) | set(TRAIN_NUMBERS) == set(range(100))
    assert not set(HELD_OUT_NUMBERS) & set(TRAIN_NUMBERS)
    assert 10 <= len(HELD_OUT_NUMBERS) <= 30 and all(is_held_out(n) for n in HELD_OUT_NUMBERS)
    for item in few_shot_prompts("number_words", 8, 100):
        examples, _ = _parse(item.prompt)
        assert int(item.answer) in HELD_OUT_NUMBERS
        assert all(int(y) in TRAIN_NUMBERS for _, y in examples)
    held_out_lines = {f"{num2words(n)}>{n}" for n in HELD_OUT_NUMBERS}
    docs = icl_documents(3000, seed=0)
    lines = {line for doc in docs for line in doc.split("\n")}
    assert not lines & held_out_lines
    assert len(lines & {f"{num2words(n)}>{n}" for n in TRAIN_NUMBERS}) == len(TRAIN_NUMBERS)


def test_documents_are_one_instance_each():
    for doc in icl_documents(300, seed=1):
        assert doc and "\n\n" not in doc and not doc.endswith("\n") and len(doc) <= 250
        examples = [LINE.match(line) or MAPPING_LINE.match(line) for line in doc.split("\n")]
        assert all(examples) and 8 <= len(examples) <= 20
        pairs = [(m.group(1), m.group(2)) for m in examples if m]
        # Which family: the first one whose rule explains every line (copy/sort of "11"-like lists may coincide).
        fits = []
        for family in ICL_FAMILIES:
            try:
                _check(family, pairs[:-1], *pairs[-1])
            except (AssertionError, ValueError):
                continue
            fits.append(family)
        assert fits, f"no family explains {doc!r}"


def test_registered_corpus_size_and_speed():
    start = time.perf_counter()
    docs = icl_corpus()
    elapsed = time.perf_counter() - start
    text = "\n\n".join(docs)
    assert 1_000_000 <= len(text) <= 2_000_000 and elapsed < 3.0
    assert set(text) == set(ICL_CHARS)
    assert builtin_corpus("icl")[:5] == docs[:5]


def test_errors():
    with pytest.raises(GenloomError, match="unknown in-context task family 'nope'"):
        few_shot_prompt("nope", 2, random.Random(0))
    with pytest.raises(GenloomError, match="shots"):
        few_shot_prompt("copy", -1, random.Random(0))
    with pytest.raises(GenloomError, match="documents"):
        icl_documents(0)


def test_mapping_lines_vary_in_width():
    """With every line the same width, a 1-layer model read answers off fixed distances from the query (64 % at
    k = 8 with no lookup); names of 1-3 letters make the distance to a name's earlier line vary."""
    rng = random.Random(5)
    for _ in range(20):
        examples, _ = _parse(few_shot_prompt("mapping", 12, rng).prompt)
        assert len({len(x) for x, _ in examples}) > 1
    documents = [d for d in icl_documents(300) if MAPPING_LINE.match(d.split("\n")[0])]
    assert documents and all(len({len(line) for line in d.split("\n")}) > 1 for d in documents)
