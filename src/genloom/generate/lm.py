"""Text generation with a decoder-only model: KV-cached incremental decoding over a left-padded batch.

Prompts of different lengths are left-padded; an attention mask hides the padding and each row's
positions start at 0 on its first real token, so every row decodes exactly as it would alone.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.generate.sampling import SamplingConfig, apply_repetition_penalty, choose_tokens
from genloom.models.gpt import GPT
from genloom.tokenizers import Tokenizer


@dataclass
class Completion:
    text: str  # the generated text, without the prompt, cut before any stop string
    tokens: list[int]
    finish_reason: str  # "stop" (eos or stop string) or "length"


_HEADS: weakref.WeakKeyDictionary[GPT, tuple[tuple[int, int], Tensor]] = weakref.WeakKeyDictionary()


def _decoding_head(model: GPT) -> Tensor:
    """The output head as a contiguous (d_model, vocab) matrix, kept between calls.

    BLAS multiplies a few rows by this layout much faster than by the (vocab, d_model) embedding the head
    is tied to (8 rows x GPT-2's head: 11 ms instead of 18 ms; see genloom.nn.layers.Linear). Making it
    costs a slow strided transpose (~0.2 s for GPT-2), so it is redone only when the weight changes.
    """
    weight = model.lm_head.weight
    key = (weight.data_ptr(), weight._version)
    cached = _HEADS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().t().contiguous())
        _HEADS[model] = cached
    return cached[1]


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    eos_id: int | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
) -> list[list[int]]:
    """Generate up to cfg.max_new_tokens after each prompt. Returns the new tokens of every row.

    should_stop(row, token) is called for each new token; returning True ends that row (the token is kept).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenloomError("every prompt must have at least one token")
    context = model.config.context_length
    longest = max(len(p) for p in prompts)
    if longest > context:
        raise GenloomError(f"prompt of {longest} tokens is longer than the model's context of {context}")
    max_new = min(cfg.max_new_tokens, context - longest)
    device = model.token_embedding.weight.device
    batch = len(prompts)

    idx = torch.zeros(batch, longest, dtype=torch.long)
    valid = torch.zeros(batch, longest, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, longest - len(prompt) :] = torch.tensor(prompt)
        valid[row, longest - len(prompt) :] = True
    idx, valid = idx.to(device), valid.to(device)
    ragged = not bool(valid.all())
    positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
    mask: Tensor | None = valid if ragged else None

    seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool, device=device)
    if cfg.repetition_penalty != 1.0:
        seen.scatter_(1, idx, valid)
    generators = None
    if cfg.seed is not None:
        generators = [torch.Generator(device=device).manual_seed(cfg.seed + row) for row in range(batch)]

    caches = model.make_kv_caches(batch, longest + max_new)
    head = _decoding_head(model)

    def next_logits(tokens: Tensor, pos: Tensor, key_mask: Tensor | None) -> Tensor:
        hidden = model.hidden_states(tokens, positions=pos, attention_mask=key_mask, kv_caches=caches, last_only=True)
        return hidden[:, -1] @ head  # (B, vocab)

    logits = next_logits(idx, positions, mask)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    next_position = positions[:, -1:] + 1  # (B, 1)
    for step in range(max_new):
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
        tokens = choose_tokens(logits, cfg, generators)  # (B,)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            outputs[row].append(token)
            if (cfg.stop_at_eos and token == eos_id) or (should_stop is not None and should_stop(row, token)):
                done[row] = True
        if all(done) or step == max_new - 1:
            break
        if cfg.repetition_penalty != 1.0:
            seen.scatter_(1, tokens[:, None], True)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        logits = next_logits(tokens[:, None], next_position, mask)
        next_position = next_position + 1
    return outputs


class TextStream:
    """Incremental detokenisation of one row: emits only text that is final.

    Held back: an incomplete UTF-8 sequence (decodes to U+FFFD) and any tail that could be the start of
    a stop string, so a stop string never reaches the output, even partly.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.emitted = 0  # characters of the final text already emitted
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> str:
        """Add a token; return the newly final text (maybe empty)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        for s in self.stop:
            at = text.find(s)
            if at != -1:
                self.stopped = True
                text = text[:at]
        self.text = text
        safe = len(text)
        if not self.stopped:
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for s in self.stop:  # hold back a suffix that is a prefix of a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[safe - k : safe] == s[:k]:
                        safe -= k
                        break
        new = text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return new

    def flush(self) -> str:
        new = self.text[self.emitted :]
        self.emitted = len(self.text)
        return new


def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompts: list[str],
    cfg: SamplingConfig,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Completion]:
    """Complete each prompt; on_text(row, piece) receives text as soon as it is final (streaming)."""
    encoded = [tokenizer.encode(p) for p in prompts]
    streams = [TextStream(tokenizer, cfg.stop) for _ in prompts]

    def should_stop(row: int, token: int) -> bool:
        piece = streams[row].push(token) if token != tokenizer.eos_id else ""
        if piece and on_text is not None:
            on_text(row, piece)
        return streams[row].stopped

    outputs = generate_tokens(model, encoded, cfg, tokenizer.eos_id, should_stop)
    completions = []
    for row, (tokens, stream) in enumerate(zip(outputs, streams, strict=True)):
        rest = stream.flush()
        if rest and on_text is not None:
            on_text(row, rest)
        hit_eos = cfg.stop_at_eos and bool(tokens) and tokens[-1] == tokenizer.eos_id
        finish = "stop" if stream.stopped or hit_eos else "length"
        completions.append(Completion(stream.text, tokens, finish))
    return completions
