"""Drawing tokens: inverse-CDF sampling follows the distribution, never draws a token of probability 0, and a row's
draw depends on its own generator only; the top-p set found among the most likely tokens is the one a full sort
finds."""

from __future__ import annotations

import pytest
import torch

from genloom.errors import GenloomError
from genloom.generate import sampling
from genloom.generate.sampling import SamplingConfig, choose_tokens, filter_logits, inverse_cdf, sample

PROBS = torch.tensor([0.0, 0.1, 0.0, 0.2, 0.3, 0.4, 0.0, 0.0], dtype=torch.float64)


@pytest.mark.parametrize("seeded", [False, True])
def test_draws_follow_the_distribution(seeded: bool) -> None:
    n = 20_000
    torch.manual_seed(0)
    generators = [torch.Generator().manual_seed(i) for i in range(n)] if seeded else None
    tokens = sample(PROBS.float().expand(n, -1), generators)
    frequencies = torch.bincount(tokens, minlength=len(PROBS)).double() / n
    # Each frequency within 4 standard deviations of its probability; tokens of probability 0 never drawn.
    assert torch.all((frequencies - PROBS).abs() <= 4 * (PROBS * (1 - PROBS) / n).sqrt())


def test_each_token_takes_its_share_of_the_unit_interval() -> None:
    # Token 1 takes [0, 0.1), token 3 [0.1, 0.3), token 4 [0.3, 0.6), token 5 [0.6, 1).
    below_one = 1.0 - 2.0**-53  # the largest double below 1, the largest torch.rand can draw
    uniforms = torch.tensor([0.0, 0.1 - 1e-12, 0.1, 0.29, 0.31, 0.59, 0.61, below_one], dtype=torch.float64)
    assert inverse_cdf(PROBS.expand(8, -1), uniforms).tolist() == [1, 1, 3, 3, 4, 4, 5, 5]


def test_a_product_that_rounds_up_to_the_total_ends_at_the_last_token_with_probability() -> None:
    unnormalised = torch.tensor([[0.0, 3.0, 7.0, 0.0]], dtype=torch.float64)
    assert inverse_cdf(unnormalised, torch.tensor([1.0], dtype=torch.float64)).tolist() == [2]


def test_a_rows_draws_do_not_depend_on_the_rows_beside_it() -> None:
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=0.8, top_k=30)
    together = choose_tokens(logits, cfg, [torch.Generator().manual_seed(10 + i) for i in range(5)])
    alone = [choose_tokens(logits[i : i + 1], cfg, [torch.Generator().manual_seed(10 + i)]) for i in range(5)]
    assert together.tolist() == torch.cat(alone).tolist()


def test_filtered_tokens_are_never_drawn() -> None:
    logits = torch.randn(256, 100, generator=torch.Generator().manual_seed(1))
    tokens = choose_tokens(logits, SamplingConfig(temperature=2.0, top_k=3), None)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == tokens[:, None]).any(dim=-1).all()


def _nucleus_by_sorting(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p set as a full sort of the vocabulary finds it (Hugging Face's TopPLogitsWarper, genloom before)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    keep_sorted = (probs.cumsum(dim=-1) - probs) < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_the_top_p_set_equals_sorting_the_whole_vocabulary(
    scale: float, top_p: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One candidate first, so that rows take each way: a top-1, a top-8, then a sort of all 100 tokens.
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", 1)
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale
    assert torch.equal(sampling.nucleus(logits, top_p), _nucleus_by_sorting(logits, top_p))
    kept = torch.isfinite(filter_logits(logits, None, top_p))
    assert torch.equal(kept, _nucleus_by_sorting(logits, top_p)) and kept.any(dim=-1).all()


def test_nan_logits_are_one_clear_error_not_a_token() -> None:
    logits = torch.zeros(2, 10)
    logits[1, 3] = float("nan")
    with pytest.raises(GenloomError, match="NaN or infinite"):
        choose_tokens(logits, SamplingConfig(temperature=1.0), None)
