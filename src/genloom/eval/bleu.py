"""Translation scores: sacreBLEU corpus BLEU and chrF, exact match, and BLEU by source length.

Scores come from sacreBLEU (Post, 2018), never a re-implementation: BLEU depends on tokenization and
smoothing details, and only sacreBLEU's numbers with their signature strings are comparable across papers.
The signature (e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`) is reported with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from genloom.errors import GenloomError

# (label, fewest, most) whitespace tokens of the source; the last bucket is open-ended. Long sources are
# where attention models were first shown to beat RNN encoder-decoders (Bahdanau et al., 2015, fig. 2).
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1-10", 1, 10),
    ("11-20", 11, 20),
    ("21-30", 21, 30),
    ("31+", 31, None),
)


def length_bucket(source: str) -> str:
    """The bucket label of a source sentence by its whitespace tokens; an empty source counts as length 1."""
    n = max(1, len(source.split()))
    for label, _lo, hi in LENGTH_BUCKETS:
        if hi is None or n <= hi:
            return label
    raise AssertionError("the last bucket is open-ended")


@dataclass
class BucketScore:
    """BLEU over the sentences whose source falls in one length bucket."""

    sentences: int
    bleu: float


@dataclass
class TranslationScores:
    """Corpus-level scores of a set of translations against one reference each."""

    sentences: int
    bleu: float  # corpus BLEU, 0..100
    chrf: float  # corpus chrF, 0..100
    exact_match: float  # share of hypotheses equal to their reference (surrounding whitespace ignored), 0..1
    bleu_signature: str
    chrf_signature: str
    # Bucket label -> score; a bucket with no sentences is absent rather than reported as 0.
    bleu_by_length: dict[str, BucketScore] = field(default_factory=dict)

    def format_report(self) -> str:
        """A few aligned lines for a terminal or a log."""
        lines = [
            f"sentences    {self.sentences}",
            f"BLEU         {self.bleu:6.2f}   {self.bleu_signature}",
            f"chrF         {self.chrf:6.2f}   {self.chrf_signature}",
            f"exact match  {100 * self.exact_match:6.2f}%",
            "BLEU by source length (whitespace tokens):",
        ]
        for label, _, _ in LENGTH_BUCKETS:
            bucket = self.bleu_by_length.get(label)
            if bucket is not None:
                lines.append(f"  {label:<6} {bucket.bleu:6.2f}   ({bucket.sentences} sentences)")
        return "\n".join(lines)


def score_translations(
    hypotheses: Sequence[str], references: Sequence[str], sources: Sequence[str], tokenize: str = "13a"
) -> TranslationScores:
    """Score `hypotheses` against `references` (one each); `sources` only decide the length buckets.

    `tokenize` is sacreBLEU's tokenizer: "13a" (its default, for most languages), "intl", "char", "zh",
    or "ja-mecab" / "ko-mecab" where their extra packages are installed.
    """
    import sacrebleu

    if not len(hypotheses) == len(references) == len(sources):
        raise GenloomError(
            f"{len(hypotheses)} hypotheses, {len(references)} references and {len(sources)} sources; "
            "need one of each per sentence"
        )
    if not hypotheses:
        raise GenloomError("no translations to score")
    hyps, refs = list(hypotheses), list(references)
    try:
        bleu = sacrebleu.BLEU(tokenize=tokenize)
    except KeyError:
        raise GenloomError(f"sacreBLEU has no tokenizer {tokenize!r}") from None
    bleu_score = bleu.corpus_score(hyps, [refs]).score
    chrf = sacrebleu.CHRF()
    chrf_score = chrf.corpus_score(hyps, [refs]).score

    by_bucket: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        by_bucket.setdefault(length_bucket(src), []).append(i)
    bleu_by_length = {}
    for label, _, _ in LENGTH_BUCKETS:
        if label in by_bucket:
            idx = by_bucket[label]
            # A fresh metric object per bucket: the corpus-level one keeps its signature untouched.
            score = sacrebleu.BLEU(tokenize=tokenize).corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]])
            bleu_by_length[label] = BucketScore(len(idx), score.score)

    exact = sum(h.strip() == r.strip() for h, r in zip(hyps, refs, strict=True)) / len(hyps)
    return TranslationScores(
        sentences=len(hyps),
        bleu=bleu_score,
        chrf=chrf_score,
        exact_match=exact,
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
        bleu_by_length=bleu_by_length,
    )
