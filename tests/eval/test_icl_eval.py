import math
import time

import numpy as np
import pytest
import torch

import genloom.eval.icl as icl_eval
from genloom.data.icl import ICL_CHARS, ICL_FAMILIES, few_shot_prompts, icl_documents
from genloom.errors import GenloomError
from genloom.eval.icl import (
    few_shot_accuracy,
    few_shot_correct,
    icl_probe_metrics,
    icl_score,
    induction_score,
    mapping_induction_score,
    max_shots_that_fit,
)
from genloom.generate import Completion
from genloom.models.gpt import GPT, GPTConfig
from genloom.tokenizers import BPETokenizer, CharTokenizer

TOKENIZER = CharTokenizer(list(ICL_CHARS))


def _tiny(vocab_size: int = TOKENIZER.vocab_size, context: int = 64) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=context, n_layers=1, d_model=32, n_heads=2))


class PeriodOracle(GPT):
    """Knows the text repeats with period `period`: puts all mass on the token `period` places before the next one
    (uniform logits where that lies before the start). A perfect copier, to check which positions get scored."""

    def __init__(self, vocab_size: int, context: int, period: int) -> None:
        super().__init__(GPTConfig(vocab_size=vocab_size, context_length=context, n_layers=1, d_model=8, n_heads=1))
        self.period = period

    def forward(self, idx, **kwargs):
        b, t = idx.shape
        logits = torch.zeros(b, t, self.config.vocab_size)  # (B, T, V)
        source = torch.arange(t) + 1 - self.period  # the position whose token comes next, one period back
        known = source >= 0
        logits[:, known] = logits[:, known].scatter(-1, idx[:, source[known]].unsqueeze(-1), 50.0)
        return logits


def test_accuracy_of_an_untrained_model_is_deterministic():
    model = _tiny()
    model.train()
    families = list(ICL_FAMILIES)
    first = few_shot_accuracy(model, TOKENIZER, families, [0, 2], n=8, batch_size=5)
    assert model.training, "the caller's mode is restored"
    assert set(first) == set(families) and all(set(by_k) == {0, 2} for by_k in first.values())
    assert all(0.0 <= acc <= 1.0 and acc * 8 == int(acc * 8) for by_k in first.values() for acc in by_k.values())
    assert few_shot_accuracy(model, TOKENIZER, families, [0, 2], n=8, batch_size=8) == first


def test_accuracy_scores_exact_matches_of_the_same_prompts(monkeypatch):
    """A fake decoder that knows the answers of the seed's prompts: right answers score 1, anything else 0."""
    items = [item for f in ICL_FAMILIES for k in (1, 3) for item in few_shot_prompts(f, k, 10, 7)]
    answers = {item.prompt: item.answer for item in items}
    assert len(answers) == len(items), "no prompt of two families is the same text"
    seen = []

    def oracle(suffix):
        def fake_generate(model, tokenizer, prompts, cfg):
            assert cfg.temperature == 0.0 and cfg.stop == ["\n"] and len(prompts) <= 4
            seen.extend(prompts)
            return [Completion(answers[p] + suffix, [], "stop") for p in prompts]

        return fake_generate

    model = _tiny()
    monkeypatch.setattr(icl_eval, "generate", oracle(""))
    perfect = few_shot_accuracy(model, TOKENIZER, ICL_FAMILIES, [1, 3], n=10, seed=7, batch_size=4)
    assert perfect == {f: {1: 1.0, 3: 1.0} for f in ICL_FAMILIES}
    assert set(seen) == set(answers)
    monkeypatch.setattr(icl_eval, "generate", oracle("0"))  # one character too many is wrong
    assert few_shot_accuracy(model, TOKENIZER, ["linear"], [3], n=10, seed=7, batch_size=4) == {"linear": {3: 0.0}}



def test_correct_gives_the_verdict_of_each_prompt_in_order(monkeypatch):
    """Every other prompt answered right by a fake decoder: the verdicts follow the prompts across batches."""
    items = few_shot_prompts("mapping", 4, 10, seed=3)
    replies = {item.prompt: "?" if i % 2 else item.answer for i, item in enumerate(items)}
    assert len(replies) == len(items), "ten different prompts"

    def fake_generate(model, tokenizer, prompts, cfg):
        return [Completion(replies[p], [], "stop") for p in prompts]

    monkeypatch.setattr(icl_eval, "generate", fake_generate)
    assert few_shot_correct(_tiny(), TOKENIZER, items, batch_size=3) == [True, False] * 5


def test_too_many_shots_names_how_many_fit():
    fit = max_shots_that_fit(TOKENIZER, ICL_FAMILIES, 64, n=20)
    assert 1 <= fit <= 6

    def longest(k):
        return max(
            len(item.prompt) + len(item.answer) + 1 for f in ICL_FAMILIES for item in few_shot_prompts(f, k, 20)
        )

    assert longest(fit) <= 64 < longest(fit + 1)
    with pytest.raises(GenloomError, match=rf"--shots 20 does not fit the context of 64 tokens: at most {fit} shots"):
        few_shot_accuracy(_tiny(), TOKENIZER, ICL_FAMILIES, [0, 20], n=20)
    assert max_shots_that_fit(TOKENIZER, ["mapping"], 2, n=5) == -1  # "b" + "Q" + the newline
    with pytest.raises(GenloomError, match="not even a prompt with no shots fits"):
        few_shot_accuracy(_tiny(context=2), TOKENIZER, ["mapping"], [0], n=5)


def test_induction_score_is_deterministic():
    model = _tiny(vocab_size=50)
    model.train()
    first, second = induction_score(model, 50, seq_len=16, n_seqs=4)
    assert model.training and all(math.isfinite(v) and v > 0 for v in (first, second))
    assert induction_score(model, 50, seq_len=16, n_seqs=4) == (first, second)
    assert induction_score(model, 50, seq_len=16, n_seqs=4, seed=1) != (first, second)
    with pytest.raises(GenloomError, match="do not fit the model's context of 64"):
        induction_score(model, 50, seq_len=33)


def test_induction_score_scores_the_right_positions():
    """A perfect copier is at chance on every scored token of the first copy and exact on the second."""
    vocab, seq_len = 40, 12
    first, second = induction_score(PeriodOracle(vocab, 64, seq_len), vocab, seq_len)
    # Had the first copy's range taken in token L (the second copy's first token, which the oracle predicts),
    # its mean would fall below ln(V); had the second taken in a token of the first copy, it would rise above 0.
    assert first == pytest.approx(math.log(vocab), abs=1e-5)
    assert second == pytest.approx(0.0, abs=1e-5)


def test_icl_score_sign():
    vocab, period = 30, 8
    r = torch.randint(vocab, (6, period), generator=torch.Generator().manual_seed(0))
    tokens = r.repeat(1, 4)  # (6, 32): text that repeats itself from token `period` on
    oracle = PeriodOracle(vocab, 64, period)
    # Token 4 cannot be known yet (chance loss); token 31 is a copy from a period back (no loss).
    assert icl_score(oracle, tokens, early=4, late=31) == pytest.approx(-math.log(vocab), abs=1e-5)
    assert icl_score(oracle, tokens, early=10, late=31) == pytest.approx(0.0, abs=1e-5)
    # Bands: tokens 1..7 are all unknowable, 24..31 all copies; of tokens 4..8 only the last is a copy.
    assert icl_score(oracle, tokens, early=1, late=31, width=7) == pytest.approx(-math.log(vocab), abs=1e-5)
    assert icl_score(oracle, tokens, early=4, late=31, width=5) == pytest.approx(-0.8 * math.log(vocab), abs=1e-5)
    model = _tiny(vocab_size=vocab)
    assert icl_score(model, tokens, 4, 31) == icl_score(model, tokens, 4, 31)
    for early, late, width in [(0, 5, 1), (5, 5, 1), (4, 32, 1), (4, 10, 4), (4, 10, 0)]:
        with pytest.raises(GenloomError, match="need 1 <= early"):
            icl_score(model, tokens, early, late, width)


def test_probe_metrics():
    model = _tiny(vocab_size=50)
    model.train()
    val = np.random.default_rng(0).integers(0, 50, 5000).astype(np.uint16)
    start = time.perf_counter()
    metrics = icl_probe_metrics(model, val, 50)
    assert time.perf_counter() - start < 2.0 and model.training
    assert set(metrics) == {"induction_first_loss", "induction_second_loss", "induction_gain", "icl_score"}
    first, second = metrics["induction_first_loss"], metrics["induction_second_loss"]
    assert metrics["induction_gain"] == pytest.approx(first - second)
    assert icl_probe_metrics(model, val, 50) == metrics
    # A split shorter than the context: windows of its whole length.
    assert set(icl_probe_metrics(model, val[:40], 50)) == set(metrics)
    # On a repeating validation text a copier scores strongly on both probes.
    oracle = PeriodOracle(50, 64, 32)
    periodic = np.tile(np.random.default_rng(1).integers(0, 50, 32), 100)
    strong = icl_probe_metrics(oracle, periodic, 50)
    assert strong["induction_gain"] == pytest.approx(math.log(50), abs=1e-4) and strong["icl_score"] < -3.0


class InductionOracle(GPT):
    """An induction head in Python: after a token seen before, all mass on what followed its last occurrence
    (uniform logits after a token never seen before)."""

    def __init__(self, vocab_size: int, context: int) -> None:
        super().__init__(GPTConfig(vocab_size=vocab_size, context_length=context, n_layers=1, d_model=8, n_heads=1))

    def forward(self, idx, **kwargs):
        b, t = idx.shape
        logits = torch.zeros(b, t, self.config.vocab_size)  # (B, T, V)
        for row in range(b):
            for i in range(1, t):
                earlier = (idx[row, :i] == idx[row, i]).nonzero()
                if len(earlier):
                    logits[row, i, idx[row, earlier[-1, 0] + 1]] = 50.0
        return logits


def test_mapping_probe_scores_first_seen_and_repeated_outputs():
    """The oracle is exact on every output whose input an earlier line showed and at chance on the others: the
    probe splits a prompt's output letters the right way (an output letter never repeats an input letter)."""
    first, repeated = mapping_induction_score(InductionOracle(TOKENIZER.vocab_size, 64), TOKENIZER)
    assert first == pytest.approx(math.log(TOKENIZER.vocab_size), abs=1e-5)
    assert repeated == pytest.approx(0.0, abs=1e-5)
    model = _tiny()
    random_first, random_repeated = mapping_induction_score(model, TOKENIZER)
    assert abs(random_first - random_repeated) < 0.3  # an untrained model gains nothing from the earlier lines
    assert mapping_induction_score(model, TOKENIZER) == (random_first, random_repeated)
    assert mapping_induction_score(_tiny(context=7), TOKENIZER) is None  # fewer than 2 lines fit
    assert mapping_induction_score(_tiny(), CharTokenizer(list("abcdef\n"))) is None  # no output letters
    bpe = BPETokenizer.train(icl_documents(3000), 1000)  # merges pairs such as "bQ": not a character a token
    assert mapping_induction_score(_tiny(vocab_size=bpe.vocab_size), bpe) is None
    val = np.random.default_rng(0).integers(0, TOKENIZER.vocab_size, 5000).astype(np.uint16)
    metrics = icl_probe_metrics(model, val, TOKENIZER.vocab_size, TOKENIZER)
    assert metrics["mapping_gain"] == pytest.approx(random_first - random_repeated)
    assert "mapping_gain" not in icl_probe_metrics(model, val, TOKENIZER.vocab_size)
