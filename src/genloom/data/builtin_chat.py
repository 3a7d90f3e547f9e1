"""Built-in chat conversations generated on the fly (no download), each with one exact expected answer.

They are sized for supervised fine-tuning and evaluation of tiny character-level chat models: every conversation
is short (well under 200 characters of content), plain ASCII, and ends with the assistant's answer.

- `arithmetic`: "What is 12 + 37?" -> "49"; add, subtract (may go negative) or multiply two operands of 1 to 3
  digits, the number of digits of each drawn uniformly so small operands are common. `arithmetic_digits` gives
  an example's longest operand, for scores such as "accuracy up to 2 digits".
- `units`: "How many meters are in 7 kilometers?" -> "7000", both ways for km/m, m/cm, kg/g, hours/minutes,
  minutes/seconds, days/hours and liters/milliliters; the larger-unit amount is 1 to 99, so answers are integers.
- `instructions`: plain-word tasks: reverse 2-4 words, sort 3-5 numbers (0-99), spell a word backwards (from
  a built-in list of common short words), write a number (0-999) in words with num2words.
- `pydoc`: "What does the "with" statement do?" -> the first sentence of that topic in the stdlib's
  `pydoc_data.topics` (the rule that picks and cleans the sentence is at `_first_sentence`).
- `follow_up`: two turns that refer back: "What is 12 + 37?" / "49" / "Now add 5 to that." / "54"; operands of
  1-2 digits, then add, subtract or multiply by 1 to 9.
- `chat`: all of the above, interleaved round-robin so even five examples hold one of each family.
- With `calculator=True`, the answers of arithmetic, units and follow-up questions call the chat calculator
  (`tokenizers.chat_tools`) before they state the result: "What is 12 + 37?" ->
  "<|calc_start|>12+37<|calc_end|><|output_start|>49<|output_end|>49". The questions and splits are the same.
- A mixture of your own: families joined by "+", interleaved the same way, a family named twice drawn twice as
  often: `arithmetic+arithmetic+instructions` is two arithmetic questions to every instruction (nanochat's
  task mixtures; `chat` is `arithmetic+units+instructions+pydoc+follow_up`).

Every question has a canonical key ("arithmetic:add:12:37", "units:km-m:7", "pydoc:with", ...) and its split is
chosen by a hash of that key, never by position: a question in `test` or `val` is in no `train` list for any set
name or seed, so scores measure unseen questions rather than recall. A key always renders to the same text (one
phrasing per task), so a held-out question's exact text can't reach training under another key. A follow-up
conversation takes the split of its opening arithmetic question, so a held-out conversation never opens with a
training question (nor a training one with a held-out question).

`pydoc` is small and finite (a few dozen topics, most in `train`); a held-out pydoc question tests recall of a
topic never seen in fine-tuning, though the base model may have read that documentation in pretraining. Its
sentences come from the running Python's `pydoc_data`, so they can differ slightly between Python versions.

Examples are drawn independently (rejection sampling from the family's distribution, keeping keys of the
requested split), so small parts of a family (one-digit sums, pydoc topics) repeat once `n` outgrows them; the
advertised mix (small operands common) holds at any `n`.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from genloom.errors import GenloomError
from genloom.tokenizers.chat_tools import calculator_answer

CHAT_FAMILIES = ("arithmetic", "units", "instructions", "pydoc", "follow_up")
BUILTIN_CHAT_SETS = ("chat", *CHAT_FAMILIES)
SPLITS = ("train", "val", "test")
# Shares of the keys the held-out splits get; fixed so the held-out questions never change between calls.
TEST_FRACTION = 0.10
VAL_FRACTION = 0.05
# Draws allowed per requested example before giving up; every split of every family accepts far more than 1 in
# 1000 draws, so this only trips if a split were (nearly) empty.
MAX_DRAWS_PER_EXAMPLE = 1000


@dataclass(frozen=True)
class ChatExample:
    """One conversation; `messages` ends with the assistant's turn, whose content is `answer`."""

    family: str  # one of CHAT_FAMILIES
    messages: tuple[dict[str, str], ...]  # {"role": "user" | "assistant" | "system", "content": str}
    answer: str  # the exact expected answer, == messages[-1]["content"]


def split_of(key: str) -> str:
    """The split of a question's key, from a sha256 hash: stable across runs, machines and Python versions."""
    if key.startswith("follow_up:"):
        # "follow_up:add:12:37:then-add:5" goes with "arithmetic:add:12:37" (see the module docstring).
        key = "arithmetic:" + ":".join(key.split(":")[1:4])
    u = int.from_bytes(hashlib.sha256(f"genloom-chat:{key}".encode()).digest()[:8], "big") / 2**64
    if u < TEST_FRACTION:
        return "test"
    if u < TEST_FRACTION + VAL_FRACTION:
        return "val"
    return "train"


def _conversation(family: str, *turns: str) -> ChatExample:
    # Turns alternate user / assistant, starting with the user and ending with the answer.
    assert len(turns) % 2 == 0
    roles = ("user", "assistant")
    messages = tuple({"role": roles[i % 2], "content": text} for i, text in enumerate(turns))
    return ChatExample(family=family, messages=messages, answer=turns[-1])


# ---- arithmetic and follow-ups -------------------------------------------------------------------------

_OPERATORS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "add": ("+", lambda a, b: a + b),
    "sub": ("-", lambda a, b: a - b),
    "mul": ("*", lambda a, b: a * b),
}
_QUESTION = re.compile(r"What is (\d+) [-+*] (\d+)\?")


def _operand(rng: random.Random, max_digits: int) -> int:
    # The digit count first, uniformly, so one-digit operands are as likely as three-digit ones.
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _draw_arithmetic(rng: random.Random) -> str:
    return f"arithmetic:{rng.choice(tuple(_OPERATORS))}:{_operand(rng, 3)}:{_operand(rng, 3)}"


def _render_arithmetic(key: str) -> ChatExample:
    _, op, a, b = key.split(":")
    symbol, apply = _OPERATORS[op]
    return _conversation("arithmetic", f"What is {a} {symbol} {b}?", str(apply(int(a), int(b))))


def arithmetic_digits(example: ChatExample) -> int:
    """The number of digits of the longer operand of an `arithmetic` example ("What is 7 + 123?" -> 3)."""
    match = _QUESTION.fullmatch(example.messages[0]["content"]) if example.messages else None
    if example.family != "arithmetic" or match is None:
        raise GenloomError(f"arithmetic_digits needs an arithmetic example, not one of family {example.family!r}")
    return max(len(match[1]), len(match[2]))


# What the follow-up turn does with the previous answer; "{n}" is the follow-up operand.
_FOLLOW_UPS: dict[str, tuple[str, Callable[[int, int], int]]] = {
    "add": ("Now add {n} to that.", lambda x, n: x + n),
    "sub": ("Now subtract {n} from that.", lambda x, n: x - n),
    "mul": ("Now multiply that by {n}.", lambda x, n: x * n),
}


def _draw_follow_up(rng: random.Random) -> str:
    # Operands of at most 2 digits keep the whole conversation short.
    op, a, b = rng.choice(tuple(_OPERATORS)), _operand(rng, 2), _operand(rng, 2)
    return f"follow_up:{op}:{a}:{b}:then-{rng.choice(tuple(_FOLLOW_UPS))}:{rng.randint(1, 9)}"


def _render_follow_up(key: str) -> ChatExample:
    _, op, a, b, then, n = key.split(":")
    symbol, apply = _OPERATORS[op]
    first = apply(int(a), int(b))
    template, follow = _FOLLOW_UPS[then.removeprefix("then-")]
    second = follow(first, int(n))
    return _conversation("follow_up", f"What is {a} {symbol} {b}?", str(first), template.format(n=n), str(second))


# ---- units ---------------------------------------------------------------------------------------------

# id -> (larger unit, smaller unit, how many smaller units make one larger); each id is drawn both ways.
_UNITS: dict[str, tuple[str, str, int]] = {
    "km-m": ("kilometer", "meter", 1000),
    "m-cm": ("meter", "centimeter", 100),
    "kg-g": ("kilogram", "gram", 1000),
    "h-min": ("hour", "minute", 60),
    "min-s": ("minute", "second", 60),
    "d-h": ("day", "hour", 24),
    "l-ml": ("liter", "milliliter", 1000),
}


def _draw_units(rng: random.Random) -> str:
    pair = rng.choice(tuple(_UNITS))
    amount = rng.randint(1, 99)  # of the larger unit; asked the other way round, its multiple is the input
    if rng.random() < 0.5:
        return f"units:{pair}:{amount}"
    big, small = pair.split("-")
    return f"units:{small}-{big}:{amount * _UNITS[pair][2]}"


def _render_units(key: str) -> ChatExample:
    _, pair, value = key.split(":")
    x = int(value)
    if pair in _UNITS:
        big, small, factor = _UNITS[pair]
        source, target, answer = big, small, x * factor
    else:
        big_id, small_id = pair.split("-")[::-1]
        big, small, factor = _UNITS[f"{big_id}-{small_id}"]
        source, target, answer = small, big, x // factor
    plural = "" if x == 1 else "s"
    return _conversation("units", f"How many {target}s are in {x} {source}{plural}?", str(answer))


# ---- instructions --------------------------------------------------------------------------------------

# Common short English words (lowercase ASCII, no repeats) for the word tasks.
WORDS = (
    "able", "acid", "aged", "also", "area", "army", "away", "baby", "back", "ball", "band", "bank", "base", "bath",
    "bear", "beat", "bed", "bell", "belt", "best", "bird", "blue", "boat", "body", "bone", "book", "boot", "born",
    "both", "bowl", "box", "boy", "bread", "brick", "bus", "cake", "call", "calm", "camp", "car", "card", "care",
    "cat", "chair", "city", "clay", "clock", "cloud", "coat", "cold", "cook", "cool", "corn", "cow", "cup", "dark",
    "day", "deep", "desk", "dog", "door", "down", "dream", "dress", "drink", "drum", "duck", "dust", "ear", "earth",
    "east", "egg", "face", "fact", "farm", "fast", "fish", "flag", "floor", "food", "foot", "fork", "fox", "free",
    "frog", "fruit", "game", "gate", "gift", "girl", "glass", "gold", "good", "grass", "green", "hair", "hand", "hat",
    "head", "heart", "hill", "home", "horse", "hot", "house", "ice", "idea", "iron", "jam", "job", "juice", "key",
    "king", "kite", "lake", "lamp", "land", "leaf", "left", "lion", "long", "lost", "loud", "love", "low", "map",
    "milk", "moon", "mouse", "name", "near", "neck", "nest", "new", "nice", "night", "nose", "note", "nut", "oak",
    "ocean", "oil", "old", "open", "orange", "owl", "page", "paint", "park", "pen", "pig", "pink", "plant", "plate",
    "pond", "queen", "quick", "rain", "red", "rice", "ring", "river", "road", "rock", "roof", "room", "rope", "rose",
    "round", "salt", "sand", "sea", "seed", "ship", "shoe", "shop", "sing", "sky", "slow", "snow", "soap", "sock",
    "soft", "song", "soup", "star", "stone", "sun", "swim", "table", "tea", "tent", "tiger", "time", "toy", "train",
    "tree", "truck", "water", "week", "west", "wet", "wind", "window", "wolf", "wood", "yard", "year", "yellow", "zoo",
)
_INSTRUCTION_TASKS = ("reverse_words", "sort_numbers", "spell_backwards", "number_words")


def _draw_instructions(rng: random.Random) -> str:
    task = rng.choice(_INSTRUCTION_TASKS)
    if task == "reverse_words":
        arg = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
    elif task == "sort_numbers":
        arg = " ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(3, 5)))
    elif task == "spell_backwards":
        arg = rng.choice(WORDS)
    else:
        arg = str(rng.randint(0, 999))
    return f"instructions:{task}:{arg}"


def _render_instructions(key: str) -> ChatExample:
    _, task, arg = key.split(":")
    if task == "reverse_words":
        question, answer = f"Reverse these words: {arg}", " ".join(reversed(arg.split()))
    elif task == "sort_numbers":
        question, answer = f"Sort these numbers: {arg}", " ".join(str(x) for x in sorted(int(x) for x in arg.split()))
    elif task == "spell_backwards":
        question, answer = f"Spell {arg} backwards.", arg[::-1]
    else:
        from num2words import num2words

        question, answer = f"Write {arg} in words.", str(num2words(int(arg)))
    return _conversation("instructions", question, answer)


# ---- pydoc ---------------------------------------------------------------------------------------------

# pydoc topic key -> the one question asked about it. Topics whose opening sentence is a lexical definition,
# a table reference or a version note are left out; the rule in `_first_sentence` filters the rest.
_STATEMENTS = (
    "assert", "break", "continue", "del", "for", "global", "if", "import", "nonlocal", "pass", "raise", "return",
    "try", "while", "with", "yield",
)
PYDOC_QUESTIONS: dict[str, str] = {
    **{k: f'What does the "{k}" statement do?' for k in _STATEMENTS},
    "assignment": "What are assignment statements used for?",
    "augassign": "What is augmented assignment?",
    "await": "What does await do?",
    "class": "What does a class definition do?",
    "function": "What does a function definition do?",
    "lambda": "What are lambda expressions?",
    "calls": "What does a call do?",
    "dict": "What is a dictionary display?",
    "lists": "What is a list display?",
    "slicings": "What does a slicing select?",
    "subscriptions": "What does a subscription select?",
    "exceptions": "What are exceptions?",
    "compound": "What are compound statements?",
    "context-managers": "What is a context manager?",
    "in": "What do the in and not in operators do?",
    "numbers": "What types of numeric literals are there?",
    "atom-literals": "What literals does Python support?",
    "typesseq": "What are the basic sequence types?",
    "typesmapping": "What is a mapping object?",
    "typesmethods": "What are methods?",
    "typesfunctions": "How are function objects created?",
    "truth": "What can be tested for truth value?",
    "power": "How tightly does the power operator bind?",
    "comparisons": "What priority do comparisons have?",
    "dynamic-features": "When are free variables resolved?",
    "string-methods": "What do strings implement?",
    "exprlists": "When does an expression list yield a tuple?",
    "bltin-type-objects": "What do type objects represent?",
    "bltin-null-object": "What is the null object?",
    "bltin-ellipsis-object": "What is the Ellipsis object used for?",
    "attribute-references": "What is an attribute reference?",
    "specialattrs": "What special attributes does Python add?",
    "binary": "What priority do the binary arithmetic operations have?",
    "unary": "What priority do the unary operations have?",
    "shifting": "What priority do the shifting operations have?",
    "bitwise": "What priority do the bitwise operations have?",
    "objects": "What are objects?",
    "sequence-types": "How can a class emulate a container?",
    "numeric-types": "How can a class emulate a number?",
}
# Longest answer kept; with its question the conversation stays under 200 characters.
MAX_PYDOC_ANSWER = 140
# Typographic characters of the docs mapped to ASCII; whatever else is non-ASCII makes the topic be skipped.
_ASCII_FOLD = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-", "\u2026": "..."}
)


def _first_sentence(text: str) -> str | None:
    """The first sentence of a pydoc topic, or None if the topic doesn't fit the rule.

    Rule: the topic starts with a title line underlined with "*"; take the first paragraph of the body that is
    not indented (indented blocks are grammar rules and code); fold typographic quotes and dashes to ASCII, drop
    "*" emphasis marks and "(see ...)" cross-references (pages the model can't follow), collapse whitespace;
    cut at the first ". " and keep the period (a trailing ":" that introduces a grammar block becomes "."). Keep
    it only if it is ASCII, ends with ".", and is at most MAX_PYDOC_ANSWER characters.
    """
    lines = text.split("\n")
    if len(lines) < 3 or not lines[1] or set(lines[1]) != {"*"}:
        return None
    paragraphs = re.split(r"\n\s*\n", "\n".join(lines[2:]).strip("\n"))
    body = next((p for p in paragraphs if p and not p[0].isspace()), None)
    if body is None:
        return None
    body = body.translate(_ASCII_FOLD).replace("*", "")
    body = re.sub(r"\s*\(see [^)]*\)", "", " ".join(body.split()))
    end = body.find(". ")
    sentence = body if end < 0 else body[: end + 1]
    if sentence.endswith(":"):
        sentence = sentence[:-1] + "."
    if not sentence.isascii() or not sentence.endswith(".") or len(sentence) > MAX_PYDOC_ANSWER:
        return None
    return sentence


@functools.cache
def _pydoc_answers() -> dict[str, str]:
    """pydoc topic key -> its first sentence, for the topics of PYDOC_QUESTIONS that fit `_first_sentence`."""
    from pydoc_data.topics import topics

    answers: dict[str, str] = {}
    for key in PYDOC_QUESTIONS:
        sentence = _first_sentence(topics[key]) if key in topics else None
        # Two topics with one sentence (the docs share some pages) would leak a held-out answer into training.
        if sentence is not None and sentence not in answers.values():
            answers[key] = sentence
    return answers


def _draw_pydoc(rng: random.Random) -> str:
    return f"pydoc:{rng.choice(tuple(_pydoc_answers()))}"


def _render_pydoc(key: str) -> ChatExample:
    topic = key.removeprefix("pydoc:")
    return _conversation("pydoc", PYDOC_QUESTIONS[topic], _pydoc_answers()[topic])


# ---- sampling ------------------------------------------------------------------------------------------

_FAMILIES: dict[str, tuple[Callable[[random.Random], str], Callable[[str], ChatExample]]] = {
    "arithmetic": (_draw_arithmetic, _render_arithmetic),
    "units": (_draw_units, _render_units),
    "instructions": (_draw_instructions, _render_instructions),
    "pydoc": (_draw_pydoc, _render_pydoc),
    "follow_up": (_draw_follow_up, _render_follow_up),
}


def _draw_keys(family: str, split: str, n: int, rng: random.Random) -> list[str]:
    """`n` keys of `family` in `split`, drawn independently (repeats allowed) by rejection sampling."""
    if family == "pydoc" and not any(split_of(f"pydoc:{t}") == split for t in _pydoc_answers()):
        # A finite family could have no topic in a split (on another Python's pydoc_data); don't loop forever.
        raise GenloomError(f"no pydoc topic of this Python falls in split {split!r}; use another split or family")
    draw = _FAMILIES[family][0]
    keys: list[str] = []
    for _ in range(MAX_DRAWS_PER_EXAMPLE * n):
        if len(keys) == n:
            break
        key = draw(rng)
        if split_of(key) == split:
            keys.append(key)
    assert len(keys) == n, f"split {split!r} of {family!r} accepted too few draws"
    return keys


def mixture(name: str) -> tuple[str, ...]:
    """The families a built-in set draws from, one entry per share of the round-robin: "chat" -> all five,
    "arithmetic+arithmetic+units" -> ("arithmetic", "arithmetic", "units")."""
    shares = CHAT_FAMILIES if name == "chat" else tuple(name.split("+"))
    unknown = [part for part in shares if part not in CHAT_FAMILIES]
    if unknown:
        raise GenloomError(f"unknown built-in chat set {unknown[0]!r}; choose from: {', '.join(BUILTIN_CHAT_SETS)}, "
                           "or families joined by + (arithmetic+instructions)")
    return shares


def _keys(name: str, split: str, n: int, seed: int) -> list[str]:
    shares = mixture(name)
    if split not in SPLITS:
        raise GenloomError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    if n < 1:
        raise GenloomError(f"n ({n}) must be positive")
    rng = random.Random(f"{seed}:{name}:{split}")
    if len(shares) == 1:
        return _draw_keys(shares[0], split, n, rng)
    # Round-robin: example i is of share i % k, so every family of `chat` shows up from n = 5 on.
    k = len(shares)
    per_share = [_draw_keys(family, split, len(range(i, n, k)), rng) for i, family in enumerate(shares)]
    return [per_share[i % k][i // k] for i in range(n)]


def _render(key: str, calculator: bool = False) -> ChatExample:
    """The conversation of a canonical key ("arithmetic:add:12:37"); the same key always gives the same text.
    With `calculator`, each answer that is a calculation calls the calculator first."""
    family = key.split(":", 1)[0]
    if family not in _FAMILIES:
        raise GenloomError(f"unknown chat key {key!r}; keys start with one of: {', '.join(CHAT_FAMILIES)}")
    example = _FAMILIES[family][1](key)
    expressions = iter(_calculations(key) if calculator else [])
    messages = tuple({**m, "content": calculator_answer(expression, m["content"])}
                     if m["role"] == "assistant" and (expression := next(expressions, None)) is not None else m
                     for m in example.messages)
    return ChatExample(example.family, messages, messages[-1]["content"])


def _calculations(key: str) -> list[str]:
    """The calculator expression behind each assistant turn of `key` ([] for a family that calculates nothing)."""
    family, *parts = key.split(":")
    symbols = {op: symbol for op, (symbol, _) in _OPERATORS.items()}
    if family == "arithmetic":
        op, a, b = parts
        return [f"{a}{symbols[op]}{b}"]
    if family == "follow_up":
        op, a, b, then, n = parts
        first = _OPERATORS[op][1](int(a), int(b))
        return [f"{a}{symbols[op]}{b}", f"{first}{symbols[then.removeprefix('then-')]}{n}"]
    if family == "units":
        pair, value = parts
        if pair in _UNITS:
            return [f"{value}*{_UNITS[pair][2]}"]
        return [f"{value}/{_UNITS['-'.join(pair.split('-')[::-1])][2]}"]
    return []


def builtin_chat(name: str, split: str, n: int, seed: int = 0, calculator: bool = False) -> list[ChatExample]:
    """n examples of built-in set `name` from `split`, drawn reproducibly from `seed`; with `calculator`, the
    answers that calculate call the chat calculator (see the module docstring)."""
    return [_render(key, calculator) for key in _keys(name, split, n, seed)]
