"""Translation scores: agreement with sacreBLEU, exact match, length buckets, the report, errors."""

from __future__ import annotations

import pytest
import sacrebleu

from genloom.errors import GenloomError
from genloom.eval.bleu import length_bucket, score_translations

REFS = ["the cat sat on the mat", "there is a dog in the garden", "I like green tea very much"]
HYPS = ["the cat sat on a mat", "a dog is in the garden", "I like green tea very much"]
SRCS = ["die Katze saß auf der Matte", "ein Hund ist im Garten", "ich mag grünen Tee sehr"]


def test_identical_hypotheses_score_100() -> None:
    scores = score_translations(REFS, REFS, SRCS)
    assert scores.bleu == pytest.approx(100.0)
    assert scores.chrf == pytest.approx(100.0)
    assert scores.exact_match == 1.0
    assert scores.sentences == 3


def test_matches_sacrebleu_directly() -> None:
    scores = score_translations(HYPS, REFS, SRCS)
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert 0 < scores.bleu < 100
    assert scores.exact_match == pytest.approx(1 / 3)
    assert scores.bleu_signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "nc:6|nw:0" in scores.chrf_signature


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    scores = score_translations(["  hello world \n", "Hello world"], ["hello world", "hello world"], ["a", "b"])
    assert scores.exact_match == 0.5


def test_length_bucket_boundaries() -> None:
    def words(n: int) -> str:
        return " ".join(["w"] * n)

    assert [length_bucket(words(n)) for n in (0, 1, 10, 11, 20, 21, 30, 31, 200)] == [
        "1-10", "1-10", "1-10", "11-20", "11-20", "21-30", "21-30", "31+", "31+",
    ]
    assert length_bucket("  a\tb\n c  ") == "1-10"


def test_bleu_by_length_buckets() -> None:
    long_src = " ".join(["wort"] * 25)
    hyps = ["the cat sat on the mat", "a completely wrong output here", "the dog ran home fast today"]
    refs = ["the cat sat on the mat", "something else entirely in this one", "the dog ran home fast today"]
    srcs = ["kurz", long_src, "auch kurz"]
    scores = score_translations(hyps, refs, srcs)
    assert set(scores.bleu_by_length) == {"1-10", "21-30"}  # empty buckets are absent
    short, mid = scores.bleu_by_length["1-10"], scores.bleu_by_length["21-30"]
    assert (short.sentences, mid.sentences) == (2, 1)
    assert short.bleu == pytest.approx(100.0)
    assert mid.bleu == pytest.approx(sacrebleu.corpus_bleu([hyps[1]], [[refs[1]]]).score)
    assert mid.bleu < 10


def test_format_report() -> None:
    scores = score_translations(HYPS, REFS, SRCS)
    report = scores.format_report()
    assert f"{scores.bleu:6.2f}" in report and scores.bleu_signature in report
    assert f"{scores.chrf:6.2f}" in report and "33.33%" in report
    assert "1-10" in report and "31+" not in report


def test_errors() -> None:
    with pytest.raises(GenloomError, match="2 hypotheses, 3 references and 3 sources"):
        score_translations(HYPS[:2], REFS, SRCS)
    with pytest.raises(GenloomError, match="no translations"):
        score_translations([], [], [])
    with pytest.raises(GenloomError, match="no tokenizer 'bogus'"):
        score_translations(HYPS, REFS, SRCS, tokenize="bogus")
