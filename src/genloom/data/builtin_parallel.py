"""Built-in parallel corpora generated from pip packages, so translation can be tried with no download.

- `numbers`: integers written out by num2words ("34" -> en "thirty-four" / de "vierunddreißig"); the pseudo
  language `digits` gives the numeral itself. `min_digits` / `max_digits` control length, for studies of
  length generalisation (train on short numbers, test on long ones).
- `emoji`: CLDR emoji names from the `emoji` package, aligned across its languages ("red apple" / "roter apfel").
- `dates`: random dates in babel's per-locale formats ("Monday, March 4, 2024" / "Montag, 4. März 2024").
- `quantities`: a number and a unit in babel's per-locale long form ("12.5 kilometers" / "12,5 Kilometer").

The held-out splits are chosen by a hash of the underlying item (the number, the emoji, the date, the
quantity), never by position: an item in `test` is in no `train` list for any language pair, range or
seed, so scores measure translation of unseen items rather than recall.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from collections.abc import Callable

from genloom.errors import GenloomError

SPLITS = ("train", "val", "test")
# Share of the items each held-out split gets; fixed so the held-out items never change between calls.
HELD_OUT_FRACTION = 0.05
# A number range up to this size is enumerated; a larger one needs `max_pairs` and is sampled.
ENUMERATE_LIMIT = 100_000

NUMBER_LANGUAGES = ("digits", "en", "de", "fr", "es", "ru", "ar")
# The languages the `emoji` package ships names for (its own list, checked at call time).
EMOJI_LANGUAGES = ("en", "es", "ja", "ko", "pt", "it", "fr", "de", "fa", "id", "zh", "ru", "tr", "ar")
DATE_FORMATS = ("full", "long", "medium", "short")
# CLDR unit ids; long names make these sentences rather than symbols ("kilometers", not "km").
UNITS = (
    "length-kilometer",
    "length-meter",
    "length-centimeter",
    "mass-kilogram",
    "mass-gram",
    "volume-liter",
    "duration-hour",
    "duration-minute",
    "duration-day",
    "temperature-celsius",
    "speed-kilometer-per-hour",
    "area-square-meter",
)


def split_of(key: str) -> str:
    """The split an item belongs to, from a hash of its key: stable across runs, machines and Python versions."""
    u = int.from_bytes(hashlib.sha256(f"genloom-parallel:{key}".encode()).digest()[:8], "big") / 2**64
    if u < HELD_OUT_FRACTION:
        return "test"
    if u < 2 * HELD_OUT_FRACTION:
        return "val"
    return "train"


def _check_languages(name: str, src_lang: str, tgt_lang: str, languages: tuple[str, ...]) -> None:
    for lang in (src_lang, tgt_lang):
        if lang not in languages:
            raise GenloomError(
                f"built-in corpus {name!r} has no language {lang!r}; choose from: {', '.join(languages)}"
            )
    if src_lang == tgt_lang:
        raise GenloomError(f"source and target language are both {src_lang!r}; choose two different ones")


# ---- numbers -------------------------------------------------------------------------------------------


def _spell(n: int, lang: str) -> str:
    if lang == "digits":
        return str(n)
    from num2words import num2words

    return str(num2words(n, lang=lang))


def number_pairs(
    src_lang: str,
    tgt_lang: str,
    split: str,
    min_digits: int = 1,
    max_digits: int = 4,
    max_pairs: int | None = None,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """Integers with `min_digits`..`max_digits` digits, in ascending order (a sample of `max_pairs` if given)."""
    _check_languages("numbers", src_lang, tgt_lang, NUMBER_LANGUAGES)
    if not 1 <= min_digits <= max_digits <= 15:
        raise GenloomError(f"need 1 <= min_digits ({min_digits}) <= max_digits ({max_digits}) <= 15")
    if max_pairs is not None and max_pairs < 1:
        raise GenloomError(f"max_pairs ({max_pairs}) must be positive")
    lo = 0 if min_digits == 1 else 10 ** (min_digits - 1)
    hi = 10**max_digits  # exclusive
    if hi - lo <= ENUMERATE_LIMIT:
        numbers = [n for n in range(lo, hi) if split_of(f"number:{n}") == split]
        if max_pairs is not None and max_pairs < len(numbers):
            numbers = sorted(random.Random(seed).sample(numbers, max_pairs))
    else:
        if max_pairs is None:
            raise GenloomError(
                f"{hi - lo} numbers have {min_digits}..{max_digits} digits; pass max_pairs to sample some of them"
            )
        # Rejection sampling: the range is far larger than the sample, so repeats and other splits are rare.
        rng = random.Random(seed)
        chosen: set[int] = set()
        for _ in range(100 * max_pairs):
            if len(chosen) == max_pairs:
                break
            n = rng.randrange(lo, hi)
            if split_of(f"number:{n}") == split:
                chosen.add(n)
        numbers = sorted(chosen)
    return [(_spell(n, src_lang), _spell(n, tgt_lang)) for n in numbers]


# ---- emoji names ---------------------------------------------------------------------------------------


def _emoji_name(code: str) -> str:
    # ":roter_apfel:" -> "roter apfel"; CLDR names use "_" for spaces in the package's short-code form.
    return " ".join(code.strip(":").replace("_", " ").split())


def emoji_pairs(src_lang: str, tgt_lang: str, split: str) -> list[tuple[str, str]]:
    """Names of the fully-qualified emoji (~4k) in two languages, in the package's order."""
    import emoji

    languages = tuple(getattr(emoji, "LANGUAGES", EMOJI_LANGUAGES))
    _check_languages("emoji", src_lang, tgt_lang, languages)
    # emoji >= 2.13 loads the non-English names lazily into EMOJI_DATA.
    if hasattr(emoji, "config") and hasattr(emoji.config, "load_language"):
        emoji.config.load_language([src_lang, tgt_lang])
    fully_qualified = emoji.STATUS["fully_qualified"]
    pairs = []
    seen = set()
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != fully_qualified or src_lang not in data or tgt_lang not in data:
            continue
        pair = (_emoji_name(data[src_lang]), _emoji_name(data[tgt_lang]))
        if pair in seen or split_of(f"emoji:{char}") != split:
            continue
        seen.add(pair)
        pairs.append(pair)
    return pairs


# ---- dates and quantities (babel) ----------------------------------------------------------------------


def _check_locales(name: str, src_lang: str, tgt_lang: str) -> None:
    from babel import Locale, UnknownLocaleError

    for lang in (src_lang, tgt_lang):
        try:
            Locale.parse(lang)
        except (UnknownLocaleError, ValueError):
            raise GenloomError(
                f"built-in corpus {name!r}: babel knows no locale {lang!r} (e.g. en, de, fr, es, ru, ja)"
            ) from None
    if src_lang == tgt_lang:
        raise GenloomError(f"source and target language are both {src_lang!r}; choose two different ones")


def _plain_spaces(text: str) -> str:
    # CLDR separates digit groups and units with no-break spaces (U+00A0, U+202F). They are correct typography
    # but look like spaces while being different tokens, and sacreBLEU's tokenizer does not split on them.
    return text.replace("\u202f", " ").replace("\xa0", " ")


def _sample_keys(split: str, n: int, seed: int, draw: Callable[[random.Random], str]) -> list[str]:
    """`n` distinct keys in `split`, drawn with `draw` from a generator seeded by `seed` and the split."""
    if n < 1:
        raise GenloomError(f"n ({n}) must be positive")
    rng = random.Random(f"{seed}:{split}")
    keys: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * n):
        if len(keys) == n:
            break
        key = draw(rng)
        if split_of(key) == split:
            keys[key] = None
    return list(keys)


def date_pairs(
    src_lang: str,
    tgt_lang: str,
    split: str,
    n: int = 2000,
    seed: int = 0,
    format: str = "full",
    start_year: int = 1900,
    end_year: int = 2100,
) -> list[tuple[str, str]]:
    """`n` distinct random dates between `start_year` and `end_year` in babel's `format` for each locale."""
    from babel.dates import format_date

    _check_locales("dates", src_lang, tgt_lang)
    if format not in DATE_FORMATS:
        raise GenloomError(f"unknown date format {format!r}; choose from: {', '.join(DATE_FORMATS)}")
    if not 1 <= start_year <= end_year <= 9999:
        raise GenloomError(f"need 1 <= start_year ({start_year}) <= end_year ({end_year}) <= 9999")
    first = datetime.date(start_year, 1, 1).toordinal()
    last = datetime.date(end_year, 12, 31).toordinal()
    keys = _sample_keys(split, n, seed, lambda rng: f"date:{rng.randint(first, last)}")
    dates = [datetime.date.fromordinal(int(k.split(":")[1])) for k in keys]
    return [
        (
            _plain_spaces(format_date(d, format=format, locale=src_lang)),
            _plain_spaces(format_date(d, format=format, locale=tgt_lang)),
        )
        for d in dates
    ]


def quantity_pairs(
    src_lang: str, tgt_lang: str, split: str, n: int = 2000, seed: int = 0
) -> list[tuple[str, str]]:
    """`n` distinct quantities (0.0 to 9999.9 of a CLDR unit) in each locale's long form."""
    from babel.units import format_unit

    _check_locales("quantities", src_lang, tgt_lang)
    keys = _sample_keys(
        split, n, seed, lambda rng: f"quantity:{rng.randrange(100_000)}:{rng.choice(UNITS)}"
    )
    pairs = []
    for key in keys:
        _, tenths, unit = key.split(":")
        # Tenths as an int, so the key is exact; a value with .0 is shown as an integer ("3 hours").
        value: float | int = int(tenths) // 10 if int(tenths) % 10 == 0 else int(tenths) / 10
        pairs.append(
            (
                _plain_spaces(format_unit(value, unit, length="long", locale=src_lang)),
                _plain_spaces(format_unit(value, unit, length="long", locale=tgt_lang)),
            )
        )
    return pairs


BUILTIN_PARALLEL: dict[str, Callable[..., list[tuple[str, str]]]] = {
    "numbers": number_pairs,
    "emoji": emoji_pairs,
    "dates": date_pairs,
    "quantities": quantity_pairs,
}


def builtin_pairs(name: str, src_lang: str, tgt_lang: str, split: str, **options: object) -> list[tuple[str, str]]:
    """(source, target) pairs of the built-in corpus `name`; `options` are that corpus's keyword arguments."""
    if name not in BUILTIN_PARALLEL:
        raise GenloomError(f"unknown built-in parallel corpus {name!r}; choose from: {', '.join(BUILTIN_PARALLEL)}")
    if split not in SPLITS:
        raise GenloomError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    make = BUILTIN_PARALLEL[name]
    allowed = make.__code__.co_varnames[3 : make.__code__.co_argcount]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise GenloomError(
            f"built-in corpus {name!r} has no option {unknown[0]!r}; options: {', '.join(allowed) or 'none'}"
        )
    return make(src_lang, tgt_lang, split, **options)
