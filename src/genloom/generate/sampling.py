"""Turning next-token logits into tokens: logit bias, repetition penalty, temperature, top-k, top-p, greedy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from genloom.errors import GenloomError


@dataclass
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p (nucleus sampling)
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): >1 discourages tokens already present
    # OpenAI's penalties, subtracted from the logits of tokens already generated: a flat amount for each token
    # that occurs (presence) and an amount per occurrence (frequency); in [-2, 2], 0 is off.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # OpenAI's logit_bias: token id -> an amount in [-100, 100] added to that token's logit before sampling (-100
    # in effect bans the token, 100 in effect forces it).
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)  # stop when the text contains one of these
    seed: int | None = None  # row i of a batch samples with seed + i, so it matches a batch of one
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise GenloomError(f"max_new_tokens ({self.max_new_tokens}) must be at least 1")
        if self.temperature < 0:
            raise GenloomError(f"temperature ({self.temperature}) must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GenloomError(f"top_k ({self.top_k}) must be at least 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenloomError(f"top_p ({self.top_p}) must be in (0, 1]")
        if self.repetition_penalty <= 0:
            raise GenloomError(f"repetition_penalty ({self.repetition_penalty}) must be > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise GenloomError(f"{name} ({getattr(self, name)}) must be in [-2, 2]")
        for token, bias in self.logit_bias.items():
            if token < 0 or not -100.0 <= bias <= 100.0:
                raise GenloomError(f"logit_bias {{{token}: {bias}}}: token ids must be >= 0 and biases in [-100, 100]")


def apply_logit_bias(logits: Tensor, bias: dict[int, float]) -> Tensor:
    """logits (B, V) plus `bias` (token id -> amount) in every row."""
    if not bias:
        return logits
    ids = torch.tensor(list(bias), device=logits.device)
    amounts = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(1, ids, amounts.expand(logits.shape[0], -1))


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """logits (B, V); seen (B, V) bool marks tokens in the prompt or output so far."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def apply_output_penalties(logits: Tensor, counts: Tensor, presence: float, frequency: float) -> Tensor:
    """OpenAI's presence and frequency penalties: logits (B, V) minus presence * [count > 0] + frequency * count,
    counts (B, V) the occurrences of each token in the output so far."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    return logits - presence * (counts > 0).to(logits.dtype) - frequency * counts.to(logits.dtype)


def filter_logits(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor:
    """Set logits outside the top-k / top-p set to -inf. logits: (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = logits.masked_fill(~nucleus(logits, top_p), float("-inf"))
    return logits


NUCLEUS_CANDIDATES = 256  # the most likely tokens searched first for a top-p set


def nucleus(logits: Tensor, top_p: float) -> Tensor:
    """The top-p set of each row of logits (B, V) as a mask: the most likely tokens, down to the first whose
    cumulative probability reaches top_p (a token is dropped when the mass before it already reaches top_p; the
    most likely token always stays).

    A set that ends among the 256 most likely tokens (or 2,048) is found with a top-k of them: sorting the whole
    vocabulary is what top-p costs otherwise (16 rows of GPT-2's 50,257 tokens: 77 ms on a CPU thread, against
    3.4 ms for a top-256). Past an eighth of the vocabulary one sort costs less than another top-k.
    """
    probs = logits.softmax(dim=-1)  # (B, V)
    k = NUCLEUS_CANDIDATES
    while True:
        if k > probs.shape[-1] // 8:
            top_probs, top_index = probs.sort(dim=-1, descending=True)
            cumulative = top_probs.cumsum(dim=-1)
            break
        top_probs, top_index = probs.topk(k, dim=-1)  # (B, k), most likely first
        cumulative = top_probs.cumsum(dim=-1)
        if bool((cumulative[:, -1] >= top_p).all()):  # every row's set ends among the k
            break
        k *= 8
    keep = (cumulative - top_probs) < top_p
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top_index, keep)


def choose_tokens(logits: Tensor, cfg: SamplingConfig, generators: list[torch.Generator] | None) -> Tensor:
    """Next token per row, (B,), from logits (B, V) already penalised; generators: one per row, or None for
    torch's global RNG."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if cfg.temperature != 1.0:  # a pass over B x V saved at the default
        logits = logits / cfg.temperature
    return sample(filter_logits(logits, cfg.top_k, cfg.top_p).softmax(dim=-1), generators)


def sample(probs: Tensor, generators: list[torch.Generator] | None) -> Tensor:
    """One token per row of probs (B, V), by inverse CDF: one uniform number per row, from that row's generator
    (so a row's token does not depend on which rows share its batch) or from torch's global RNG.

    torch.multinomial draws an exponential variate for every vocabulary entry on a CPU: 16 rows of GPT-2's
    50,257 tokens took 28 ms (23 ms as one call per row with its generator) against 1.3 ms (1.4 ms) this way,
    on one thread (`benchmarks/sampling_speed.py`).
    """
    precise = torch.float32 if probs.device.type == "mps" else torch.float64  # MPS has no float64
    if generators is None:
        uniforms = torch.rand(probs.shape[0], device=probs.device, dtype=precise)
    else:
        uniforms = torch.cat([torch.rand(1, generator=g, device=probs.device, dtype=precise) for g in generators])
    return inverse_cdf(probs, uniforms)


def inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """The token where each row's cumulative probability, summed in the uniforms' dtype, first exceeds
    uniforms (B,) in [0, 1) times its total.

    A token of probability 0 is never chosen: the cumulative sum does not rise at it. Neither is one past the
    last token that has probability, where a product rounded up to the total would land."""
    cdf = probs.to(uniforms.dtype, copy=True).cumsum_(dim=-1)  # (B, V); in place: one buffer of B x V, not two
    total = cdf[:, -1:].contiguous()  # (B, 1): 1 up to rounding
    if not bool(torch.isfinite(total).all()):  # a search would return some token, silently
        raise GenloomError("the model's next-token logits are NaN or infinite, so no token can be drawn (a diverged "
                           "checkpoint, or an overflow in half precision)")
    chosen = torch.searchsorted(cdf, uniforms[:, None] * total, right=True)  # (B, 1)
    last = torch.searchsorted(cdf, total)  # (B, 1): where the sum reaches its total, the last token it can choose
    return torch.minimum(chosen, last).squeeze(-1)
