"""Synthetic few-shot tasks for measuring in-context learning (Brown et al. 2020), with no download.

Every example is one line, `input>output` (a mapping's `inputoutput`), in a compact character format so 8
solved examples and a query fit in ~200 characters (the context of a tiny character-level GPT). The families:

- `mapping`: six made-up names of 1-3 lowercase letters (no letter shared between names) mapped through a random
  injection into `A`-`Z`, both new in every prompt and document, written without a separator ("kqzR"). The map
  can only be read off the examples, so the query is a name an example showed (with no examples it is at chance,
  1 in 26): this is the task induction heads solve (at the `z` that ends a name, find the earlier `z` and copy
  what followed it), the phase change Olsson et al. (2022) describe. The names' varying lengths make the lines'
  widths vary: with one-letter inputs every line was 3 characters, and a 1-layer model, which cannot do the
  lookup, read the answer off fixed distances from the query instead (96 % right when the query's line was the
  last one, 66 % two lines back, <= 3 % four or more back). A third of the training documents are mappings, the
  induction signal the other families dilute.
- `copy`, `reverse`, `sort`: a list of 2-5 digits, or of lowercase letters (chosen per instance), written back
  unchanged, reversed, or sorted ("3817>1378").
- `linear`: y = a*x + b with x 0-9 and a (1-5), b (0-9) fresh per instance ("3>11" for a=3, b=2).
- `number_words`: English number words to digits ("forty-two>42", num2words, 0-99).

A prompt (`few_shot_prompt`) holds k solved examples of ONE fresh instance (the same mapping, the same a and b),
then the query input and ">"; the answer is the query's output, to be compared with the model's output up to
the end of the line. There is no task tag: the model must infer the family from the examples, so with k = 0
most families are ambiguous, which is what makes accuracy rise with k.

Held out: a number whose hash (sha256 of "genloom-icl:<n>") falls in a 20% test bucket never appears in the
training documents (`icl_documents`), and the query of every `number_words` prompt is such a number (its
examples come from the training bucket). For the other families each instance is drawn fresh at random (a new
mapping, a new a and b, new lists), so the query is "held out" by construction: scores measure reading the task
off the prompt, not recall of a memorised instance.
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from genloom.errors import GenloomError

ICL_FAMILIES = ("mapping", "copy", "reverse", "sort", "linear", "number_words")
# Every character an example, a prompt or a document can hold; a char tokenizer trained on the corpus has them all.
ICL_CHARS = "".join(sorted(set(string.digits + string.ascii_letters + ">-\n")))

SEPARATOR = ">"  # between an example's input and its output
MAP_NAMES = 6  # inputs per mapping: few, so a document of 8-20 examples shows most names more than once
MAP_NAME_LENGTH = (1, 3)  # letters per name, drawn uniformly
MAP_OUTPUTS = string.ascii_uppercase
LIST_ITEMS = (string.digits, string.ascii_lowercase)
NUMBER_RANGE = range(100)
HELD_OUT_FRACTION = 0.2

# Documents: 8-20 examples of one instance, at most ~250 characters, so a context of 256 sees a whole one.
DOC_EXAMPLES = (8, 20)
MAX_DOC_CHARS = 250
# The registered corpus `builtin:icl`: ~1.5M characters, built in well under a second.
ICL_CORPUS_DOCS = 12_000


@dataclass(frozen=True)
class FewShotPrompt:
    family: str
    prompt: str  # k solved examples of ONE fresh task instance, then the query; ends where the answer starts
    answer: str  # the exact expected answer (the model's output up to the end of the line is compared)


def is_held_out(n: int) -> bool:
    """Whether number `n` is in the 20% test bucket: a hash, so stable across runs, machines and Python versions."""
    u = int.from_bytes(hashlib.sha256(f"genloom-icl:{n}".encode()).digest()[:8], "big") / 2**64
    return u < HELD_OUT_FRACTION


HELD_OUT_NUMBERS = tuple(n for n in NUMBER_RANGE if is_held_out(n))
TRAIN_NUMBERS = tuple(n for n in NUMBER_RANGE if not is_held_out(n))


@functools.cache
def _number_words() -> dict[int, str]:
    from num2words import num2words

    return {n: str(num2words(n)) for n in NUMBER_RANGE}


@functools.cache
def _word_values() -> dict[str, int]:
    return {words: n for n, words in _number_words().items()}


@dataclass(frozen=True)
class _Instance:
    """One task instance: how to draw an example input (and a query input), and the rule that solves it."""

    draw: Callable[[random.Random], str]
    solve: Callable[[str], str]
    draw_query: Callable[[random.Random], str]
    query_shown: bool = False  # the query must be an input an example showed (a mapping cannot be guessed)
    separator: str = SEPARATOR  # between input and output


def _new_instance(family: str, rng: random.Random) -> _Instance:
    """A fresh instance of `family`, its parameters drawn from `rng`."""
    if family == "mapping":
        names = _fresh_names(rng)
        table = dict(zip(names, rng.sample(MAP_OUTPUTS, len(names)), strict=True))

        def draw_name(r: random.Random) -> str:
            return r.choice(names)

        # No separator: "kqzR" makes the lookup plain induction (at a `z`, copy what followed the last `z`), the
        # circuit a 2-layer model forms; behind a ">" the match is on the token before last, a slower circuit.
        return _Instance(draw_name, lambda x: table[x], draw_name, query_shown=True, separator="")
    if family in ("copy", "reverse", "sort"):
        items = rng.choice(LIST_ITEMS)

        def draw_list(r: random.Random) -> str:
            return "".join(r.choice(items) for _ in range(r.randint(2, 5)))

        rules: dict[str, Callable[[str], str]] = {
            "copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": lambda x: "".join(sorted(x)),
        }
        return _Instance(draw_list, rules[family], draw_list)
    if family == "linear":
        a, b = rng.randint(1, 5), rng.randint(0, 9)

        def draw_x(r: random.Random) -> str:
            return str(r.randint(0, 9))

        return _Instance(draw_x, lambda x: str(a * int(x) + b), draw_x)
    if family == "number_words":
        words = _number_words()
        values = _word_values()
        return _Instance(
            lambda r: words[r.choice(TRAIN_NUMBERS)], lambda x: str(values[x]),
            lambda r: words[r.choice(HELD_OUT_NUMBERS)],
        )
    raise GenloomError(f"unknown in-context task family {family!r}; choose from: {', '.join(ICL_FAMILIES)}")


def _fresh_names(rng: random.Random) -> list[str]:
    """MAP_NAMES made-up names of MAP_NAME_LENGTH lowercase letters, no letter in two names: a name's last letter
    then occurs only at the end of that name, so copying what followed its earlier occurrence is always right."""
    lengths = [rng.randint(*MAP_NAME_LENGTH) for _ in range(MAP_NAMES)]
    letters = rng.sample(string.ascii_lowercase, sum(lengths))
    starts = [sum(lengths[:i]) for i in range(MAP_NAMES)]
    return ["".join(letters[start : start + n]) for start, n in zip(starts, lengths, strict=True)]


def _line(task: _Instance, x: str) -> str:
    return f"{x}{task.separator}{task.solve(x)}"


def few_shot_prompt(family: str, k: int, rng: random.Random) -> FewShotPrompt:
    """k solved examples of one fresh instance of `family`, one a line, then the query input and ">"."""
    if k < 0:
        raise GenloomError(f"the number of shots ({k}) must be >= 0")
    task = _new_instance(family, rng)
    inputs = [task.draw(rng) for _ in range(k)]
    if task.query_shown and inputs:
        query = rng.choice(inputs)
    else:
        # A query that repeats an example could be answered by copying from the prompt, without inferring the task;
        # redrawn while it does (a few tries: for `linear` with k >= 10 every x may already be taken).
        query = task.draw_query(rng)
        for _ in range(20):
            if query not in inputs:
                break
            query = task.draw_query(rng)
    lines = "".join(_line(task, x) + "\n" for x in inputs)
    return FewShotPrompt(family, f"{lines}{query}{task.separator}", task.solve(query))


def few_shot_prompts(family: str, k: int, n: int, seed: int = 0) -> list[FewShotPrompt]:
    """`n` prompts of `family` with k shots: the same for every call with the same seed (an evaluation set)."""
    if n < 1:
        raise GenloomError(f"the number of prompts ({n}) must be positive")
    # A string seed is hashed with SHA-512 by `random`, so the prompts do not depend on PYTHONHASHSEED.
    rng = random.Random(f"genloom-icl:{seed}:{family}:{k}")
    return [few_shot_prompt(family, k, rng) for _ in range(n)]


def icl_document(family: str, rng: random.Random) -> str:
    """8-20 examples (at most MAX_DOC_CHARS characters) of one fresh instance of `family`, one a line."""
    task = _new_instance(family, rng)
    lines: list[str] = []
    size = -1  # the newline before the first line does not exist
    for _ in range(rng.randint(*DOC_EXAMPLES)):
        x = task.draw(rng)
        line = _line(task, x)
        if size + 1 + len(line) > MAX_DOC_CHARS:
            break
        lines.append(line)
        size += 1 + len(line)
    return "\n".join(lines)


def icl_documents(n_docs: int, seed: int = 0) -> list[str]:
    """The training corpus of `builtin:icl`: `n_docs` documents, each of one instance of a random family.

    Documents hold no trailing newline: joined with a blank line ("\\n\\n", as genloom joins a char tokenizer's
    documents) the boundary between two instances is visible. Number words come only from the training bucket.
    """
    if n_docs < 1:
        raise GenloomError(f"the number of documents ({n_docs}) must be positive")
    rng = random.Random(f"genloom-icl-docs:{seed}")
    # Mappings twice as often as each other family: they alone need induction, the circuit the probes watch form.
    weights = [2 if family == "mapping" else 1 for family in ICL_FAMILIES]
    return [icl_document(rng.choices(ICL_FAMILIES, weights)[0], rng) for _ in range(n_docs)]


def icl_corpus() -> list[str]:
    """`builtin:icl`: ICL_CORPUS_DOCS documents of the six task families (~1.5M characters), seed 0."""
    return icl_documents(ICL_CORPUS_DOCS, seed=0)
