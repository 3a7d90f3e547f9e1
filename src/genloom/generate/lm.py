"""Text generation with a decoder-only model: KV-cached incremental decoding over a left-padded batch.

Prompts of different lengths are left-padded; an attention mask hides the padding and each row's
positions start at 0 on its first real token, so every row decodes exactly as it would alone. Decoding is an
iterator (`TokenStream`: one step, one token per row) that knows nothing about text; `generate` turns its
tokens into text as they come (`TextStream`), holding back what a stop string might still claim.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.generate.sampling import SamplingConfig, apply_repetition_penalty, choose_tokens
from genloom.models.gpt import GPT
from genloom.nn import KVCache
from genloom.tokenizers import Tokenizer


@dataclass
class Completion:
    text: str  # the generated text, without the prompt, cut before any stop string
    tokens: list[int]
    finish_reason: str  # "stop" (eos or stop string) or "length"
    # "length" because the context filled up before max_new_tokens: the model can see no more tokens.
    context_limited: bool = False


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


class TokenStream:
    """KV-cached decoding as an iterator: each step yields the new token of every row (None for a finished row).

    A row finishes at EOS (when `cfg.stop_at_eos`), when the caller calls `finish(row)` (a stop string, a
    client gone), or after `max_new` tokens: `cfg.max_new_tokens`, or fewer when the context fills up first
    (`context_limited`). Streaming, chat and a batching server drive decoding through this one loop.

        stream = TokenStream(model, prompts, cfg, eos_id)
        for tokens in stream:          # one decoding step
            ...                        # use tokens[row]; stream.finish(row) to end a row early
    """

    def __init__(
        self, model: GPT, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int | None = None,
        vocab_limit: int | None = None,
    ) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GenloomError("every prompt must have at least one token")
        context = model.config.context_length
        longest = max(len(p) for p in prompts)
        if longest > context:
            raise GenloomError(f"prompt of {longest} tokens is longer than the model's context of {context}")
        self.model, self.prompts, self.cfg, self.eos_id = model, prompts, cfg, eos_id
        self.vocab_limit = vocab_limit  # ids >= this are never produced (a model whose vocabulary is padded)
        self.max_new = min(cfg.max_new_tokens, context - longest)
        self.context_limited = self.max_new < cfg.max_new_tokens
        self.done = [False] * len(prompts)

    def finish(self, row: int) -> None:
        """End `row`: it yields None from the next step on."""
        self.done[row] = True

    def __iter__(self) -> Iterator[list[int | None]]:
        if self.max_new == 0:
            return
        # Inference mode around each step's work, not across the `yield`: the caller's code between steps runs
        # in whatever mode it chose.
        with torch.inference_mode():
            state = self._prefill()
        for step in range(self.max_new):
            with torch.inference_mode():
                tokens = self._choose(state)
            emitted: list[int | None] = []
            for row, token in enumerate(tokens.tolist()):
                emitted.append(None if self.done[row] else token)
                if self.cfg.stop_at_eos and token == self.eos_id:
                    self.done[row] = True
            yield emitted
            if all(self.done) or step == self.max_new - 1:
                return
            with torch.inference_mode():
                self._advance(state, tokens)

    def _prefill(self) -> _DecodingState:
        model, cfg, prompts = self.model, self.cfg, self.prompts
        device = model.token_embedding.weight.device
        batch, longest = len(prompts), max(len(p) for p in prompts)
        idx = torch.zeros(batch, longest, dtype=torch.long)
        valid = torch.zeros(batch, longest, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            idx[row, longest - len(prompt) :] = torch.tensor(prompt)
            valid[row, longest - len(prompt) :] = True
        idx, valid = idx.to(device), valid.to(device)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T): 0 at each row's first real token
        seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool, device=device)
        if cfg.repetition_penalty != 1.0:
            seen.scatter_(1, idx, valid)
        generators = None
        if cfg.seed is not None:
            generators = [torch.Generator(device=device).manual_seed(cfg.seed + row) for row in range(batch)]
        state = _DecodingState(
            caches=model.make_kv_caches(batch, longest + self.max_new), head=_decoding_head(model),
            mask=None if bool(valid.all()) else valid, seen=seen, generators=generators,
            next_position=positions[:, -1:] + 1,  # (B, 1)
        )
        state.logits = self._next_logits(state, idx, positions)
        return state

    def _next_logits(self, state: _DecodingState, tokens: Tensor, positions: Tensor) -> Tensor:
        hidden = self.model.hidden_states(tokens, positions=positions, attention_mask=state.mask,
                                          kv_caches=state.caches, last_only=True)
        logits = hidden[:, -1] @ state.head  # (B, vocab)
        if self.vocab_limit is not None:
            logits[:, self.vocab_limit :] = float("-inf")
        return logits

    def _choose(self, state: _DecodingState) -> Tensor:
        logits = apply_repetition_penalty(state.logits, state.seen, self.cfg.repetition_penalty)
        return choose_tokens(logits, self.cfg, state.generators)  # (B,)

    def _advance(self, state: _DecodingState, tokens: Tensor) -> None:
        """Feed the chosen tokens (B,) through the model: the next step's logits."""
        if self.cfg.repetition_penalty != 1.0:
            state.seen.scatter_(1, tokens[:, None], True)
        if state.mask is not None:
            state.mask = torch.cat([state.mask, state.mask.new_ones(len(tokens), 1)], dim=1)
        state.logits = self._next_logits(state, tokens[:, None], state.next_position)
        state.next_position = state.next_position + 1


@dataclass
class _DecodingState:
    """What `TokenStream` carries from one decoding step to the next."""

    caches: list[KVCache]
    head: Tensor  # (d_model, vocab), see `_decoding_head`
    mask: Tensor | None  # (B, T_so_far) True for real tokens; None when no row is padded
    seen: Tensor  # (B, vocab) tokens in the prompt or output, for the repetition penalty
    generators: list[torch.Generator] | None
    next_position: Tensor  # (B, 1)
    logits: Tensor = field(default_factory=lambda: torch.empty(0))  # (B, vocab) of the next token


def generate_tokens(
    model: GPT,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    eos_id: int | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
    vocab_limit: int | None = None,
) -> list[list[int]]:
    """Generate up to cfg.max_new_tokens after each prompt. Returns the new tokens of every row.

    should_stop(row, token) is called for each new token; returning True ends that row (the token is kept).
    """
    return _collect(TokenStream(model, prompts, cfg, eos_id, vocab_limit), should_stop)


def _collect(stream: TokenStream, should_stop: Callable[[int, int], bool] | None) -> list[list[int]]:
    """Run `stream` to the end; the tokens of every row."""
    outputs: list[list[int]] = [[] for _ in stream.prompts]
    for tokens in stream:
        for row, token in enumerate(tokens):
            if token is None:
                continue
            outputs[row].append(token)
            if should_stop is not None and should_stop(row, token):
                stream.finish(row)
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
    eos_id: int | None = None,
) -> list[Completion]:
    """Complete each prompt; on_text(row, piece) receives text as soon as it is final (streaming).

    eos_id: the token that ends a completion (a chat model's end-of-turn token), instead of the tokenizer's
    end-of-text; it never appears in the text."""
    encoded = [tokenizer.encode(p) for p in prompts]
    streams = [TextStream(tokenizer, cfg.stop) for _ in prompts]
    end_id = eos_id if eos_id is not None else tokenizer.eos_id

    def should_stop(row: int, token: int) -> bool:
        piece = streams[row].push(token) if token != end_id else ""
        if piece and on_text is not None:
            on_text(row, piece)
        return streams[row].stopped

    # A Hugging Face model may pad its vocabulary past the tokenizer's: never sample those rows.
    vocab_limit = tokenizer.vocab_size if tokenizer.vocab_size < model.config.vocab_size else None
    decoding = TokenStream(model, encoded, cfg, end_id, vocab_limit)
    outputs = _collect(decoding, should_stop)
    completions = []
    for row, (tokens, text) in enumerate(zip(outputs, streams, strict=True)):
        rest = text.flush()
        if rest and on_text is not None:
            on_text(row, rest)
        hit_eos = cfg.stop_at_eos and bool(tokens) and tokens[-1] == end_id
        finish = "stop" if text.stopped or hit_eos else "length"
        completions.append(Completion(text.text, tokens, finish, finish == "length" and decoding.context_limited))
    return completions
