"""Built-in parallel corpora: num2words numbers, CLDR emoji names, babel dates and quantities."""

from __future__ import annotations

import datetime

import pytest

from genloom.data.builtin_parallel import NUMBER_LANGUAGES, builtin_pairs, split_of
from genloom.errors import GenloomError

# ---- numbers -------------------------------------------------------------------------------------------


def test_number_words_known_values() -> None:
    # 34 is in train (its split is fixed by hash), so every language pair shows it there.
    assert split_of("number:34") == "train"
    en_de = dict(builtin_pairs("numbers", "digits", "en", "train", max_digits=2))
    assert en_de["34"] == "thirty-four"
    pairs = builtin_pairs("numbers", "en", "de", "train", max_digits=2)
    assert ("thirty-four", "vierunddreißig") in pairs
    fr = dict(builtin_pairs("numbers", "digits", "fr", "train", max_digits=2))
    es = dict(builtin_pairs("numbers", "digits", "es", "train", max_digits=2))
    ru = dict(builtin_pairs("numbers", "digits", "ru", "train", max_digits=2))
    assert (fr["34"], es["34"], ru["34"]) == ("trente-quatre", "treinta y cuatro", "тридцать четыре")


def test_number_splits_disjoint_and_complete() -> None:
    splits = {s: builtin_pairs("numbers", "digits", "en", s, max_digits=3) for s in ("train", "val", "test")}
    numbers = {s: {int(d) for d, _ in pairs} for s, pairs in splits.items()}
    assert not numbers["train"] & numbers["test"]
    assert not numbers["train"] & numbers["val"]
    assert not numbers["val"] & numbers["test"]
    assert numbers["train"] | numbers["val"] | numbers["test"] == set(range(1000))
    assert 20 <= len(numbers["test"]) <= 80  # ~5% of 1000
    # Held-out numbers stay held out in every language pair.
    test_de = builtin_pairs("numbers", "de", "ar", "test", max_digits=3)
    assert len(test_de) == len(numbers["test"])


def test_number_length_control_and_sampling() -> None:
    pairs = builtin_pairs("numbers", "digits", "en", "train", min_digits=3, max_digits=3)
    assert all(len(d) == 3 for d, _ in pairs)
    big = builtin_pairs("numbers", "digits", "de", "test", min_digits=7, max_digits=8, max_pairs=20, seed=1)
    assert len(big) == 20 and all(7 <= len(d) <= 8 for d, _ in big)
    assert all(split_of(f"number:{d}") == "test" for d, _ in big)
    assert big == builtin_pairs("numbers", "digits", "de", "test", min_digits=7, max_digits=8, max_pairs=20, seed=1)
    assert big != builtin_pairs("numbers", "digits", "de", "test", min_digits=7, max_digits=8, max_pairs=20, seed=2)
    few = builtin_pairs("numbers", "digits", "en", "train", max_digits=2, max_pairs=5, seed=0)
    assert len(few) == 5


def test_number_errors() -> None:
    with pytest.raises(GenloomError, match="no language 'xx'"):
        builtin_pairs("numbers", "en", "xx", "train")
    with pytest.raises(GenloomError, match="both 'en'"):
        builtin_pairs("numbers", "en", "en", "train")
    with pytest.raises(GenloomError, match="min_digits"):
        builtin_pairs("numbers", "en", "de", "train", min_digits=3, max_digits=2)
    with pytest.raises(GenloomError, match="max_pairs"):
        builtin_pairs("numbers", "en", "de", "train", max_digits=9)
    assert "ar" in NUMBER_LANGUAGES and "ru" in NUMBER_LANGUAGES


# ---- emoji ---------------------------------------------------------------------------------------------


def test_emoji_names_aligned() -> None:
    split = split_of("emoji:🍎")
    en_de = builtin_pairs("emoji", "en", "de", split)
    assert ("red apple", "roter apfel") in en_de
    assert ("red apple", "pomme rouge") in builtin_pairs("emoji", "en", "fr", split)
    assert all(":" not in s and "_" not in s and ":" not in t for s, t in en_de)
    train = builtin_pairs("emoji", "en", "de", "train")
    test = builtin_pairs("emoji", "en", "de", "test")
    assert len(train) > 3000 and 100 < len(test) < 400
    assert not set(train) & set(test)


def test_emoji_unknown_language() -> None:
    with pytest.raises(GenloomError, match="'emoji' has no language 'xx'"):
        builtin_pairs("emoji", "en", "xx", "train")


# ---- dates and quantities ------------------------------------------------------------------------------


def test_babel_date_format_for_a_fixed_date() -> None:
    from babel.dates import format_date

    # The corpus renders with exactly this call; pin its output so a babel change shows up here.
    d = datetime.date(2024, 3, 4)
    assert format_date(d, format="full", locale="de") == "Montag, 4. März 2024"
    assert format_date(d, format="full", locale="en") == "Monday, March 4, 2024"


def test_date_pairs_seeded_and_held_out() -> None:
    pairs = builtin_pairs("dates", "en", "de", "train", n=50, seed=7)
    assert len(pairs) == 50 and len(set(pairs)) == 50
    assert pairs == builtin_pairs("dates", "en", "de", "train", n=50, seed=7)
    assert pairs != builtin_pairs("dates", "en", "de", "train", n=50, seed=8)
    weekdays = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    assert all(s.startswith(weekdays) for s, _ in pairs)
    # Each English date parses back to one the German side names with the same day and year.
    for src, tgt in pairs[:10]:
        d = datetime.datetime.strptime(src, "%A, %B %d, %Y").date()
        assert tgt.endswith(f"{d.day}. {tgt.split('. ')[1].split()[0]} {d.year}")
    test = builtin_pairs("dates", "en", "de", "test", n=200, seed=7)
    assert not set(test) & set(builtin_pairs("dates", "en", "de", "train", n=2000, seed=7))


def test_quantities() -> None:
    pairs = builtin_pairs("quantities", "en", "de", "train", n=30, seed=0)
    assert len(pairs) == 30
    assert pairs == builtin_pairs("quantities", "en", "de", "train", n=30, seed=0)
    assert all("\xa0" not in t and "\u202f" not in t for _, t in pairs)
    # German uses a decimal comma where English has a point.
    decimals = [(s, t) for s, t in pairs if "." in s.split()[0]]
    assert decimals and all("," in t.split()[0] for _, t in decimals)


def test_babel_and_dispatch_errors() -> None:
    with pytest.raises(GenloomError, match="no locale 'zz_QQ'"):
        builtin_pairs("dates", "en", "zz_QQ", "train")
    with pytest.raises(GenloomError, match="unknown date format"):
        builtin_pairs("dates", "en", "de", "train", format="weird")
    with pytest.raises(GenloomError, match="unknown built-in parallel corpus 'nope'"):
        builtin_pairs("nope", "en", "de", "train")
    with pytest.raises(GenloomError, match="unknown split 'dev'"):
        builtin_pairs("numbers", "en", "de", "dev")
    with pytest.raises(GenloomError, match=r"has no option 'colour'.*min_digits"):
        builtin_pairs("numbers", "en", "de", "train", colour="red")
