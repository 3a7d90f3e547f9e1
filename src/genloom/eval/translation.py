"""Translate a held-out set with a trained model and score it: what `genloom eval translate` reports."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from genloom.errors import GenloomError
from genloom.eval.bleu import TranslationScores, score_translations
from genloom.tokenizers import Tokenizer


def evaluate_translation(
    model: nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    beam_size: int = 4,
    alpha: float = 0.6,
    batch_size: int = 32,
    tokenize: str = "13a",
    prefix: str = "",
) -> tuple[list[str], TranslationScores]:
    """The model's translations of the sources of `pairs` (in order) and their scores against the targets.

    `prefix` (a multi-task model's task tag, see `direction_prefix`) is put before every source it translates;
    length buckets count the source without it.
    """
    from genloom.generate.translate import translate

    if not pairs:
        raise GenloomError("no pairs to evaluate")
    sources = [src for src, _ in pairs]
    hyps = translate(model, tokenizer, [prefix + s for s in sources], beam_size=beam_size, alpha=alpha,
                     batch_size=batch_size)
    return hyps, score_translations(hyps, [tgt for _, tgt in pairs], sources, tokenize=tokenize)
