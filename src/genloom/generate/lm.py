"""Text generation with a decoder-only model: KV-cached incremental decoding of a batch of prompts.

Prompts of different lengths decode together (`genloom.generate.batch`: a key mask, positions of each row's
own), so every row decodes exactly as it would alone. Decoding is an iterator (`TokenStream`: one step, one
token per row) that knows nothing about text; `generate` turns its tokens into text as they come
(`TextStream`), holding back what a stop string might still claim. A `DecoderTool` (the chat calculator) may
feed tokens in after any token a row writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from genloom.errors import GenloomError
from genloom.generate.batch import DecodeBatch, Row
from genloom.generate.sampling import SamplingConfig
from genloom.models.gpt import GPT
from genloom.tokenizers import Tokenizer


@dataclass
class Completion:
    text: str  # the generated text, without the prompt, cut before any stop string
    tokens: list[int]
    finish_reason: str  # "stop" (eos or stop string) or "length"
    # "length" because the context filled up before max_new_tokens: the model can see no more tokens.
    context_limited: bool = False


class DecoderTool(Protocol):
    """Something a model calls by writing tokens (`genloom.tokenizers.chat_tools.Calculator`)."""

    def after_token(self, generated: Sequence[int]) -> list[int]:
        """The tokens to feed in next, given everything a row has generated so far ([] for none)."""
        ...


class TokenStream:
    """Decoding a fixed batch as an iterator: each step yields the new token of every row (None for a finished row).

    A row finishes at EOS (when `cfg.stop_at_eos`), when the caller calls `finish(row)` (a stop string, a
    client gone), or after `cfg.max_new_tokens` tokens, or fewer when the context fills up first
    (`row_context_limited[row]`). A `tool`'s tokens are yielded as the row's, one per step. The steps are
    `DecodeBatch`'s, the engine the HTTP server batches requests with, so streaming, chat, evaluation and
    serving decode through one loop.

        stream = TokenStream(model, prompts, cfg, eos_id)
        for tokens in stream:          # one decoding step
            ...                        # use tokens[row]; stream.finish(row) to end a row early
    """

    def __init__(
        self, model: GPT, prompts: list[list[int]], cfg: SamplingConfig, eos_id: int | None = None,
        vocab_limit: int | None = None, tool: DecoderTool | None = None,
    ) -> None:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GenloomError("every prompt must have at least one token")
        context = model.config.context_length
        longest = max(len(p) for p in prompts)
        if longest > context:
            raise GenloomError(f"prompt of {longest} tokens is longer than the model's context of {context}")
        self.model, self.prompts, self.cfg, self.eos_id, self.vocab_limit = model, prompts, cfg, eos_id, vocab_limit
        self.tool = tool
        self.row_context_limited = [cfg.max_new_tokens > context - len(p) for p in prompts]
        self.done = [False] * len(prompts)
        self._batch: DecodeBatch | None = None
        self._rows: list[Row | None] = []

    @property
    def context_limited(self) -> bool:
        """Some row may produce fewer than max_new_tokens because the context fills up first."""
        return any(self.row_context_limited)

    def finish(self, row: int) -> None:
        """End `row`: it yields None from the next step on."""
        self.done[row] = True
        decoding = self._rows[row] if row < len(self._rows) else None
        if self._batch is not None and decoding is not None:
            self._batch.remove(decoding)

    def __iter__(self) -> Iterator[list[int | None]]:
        cfg, context = self.cfg, self.model.config.context_length
        room = [context - len(p) for p in self.prompts]  # a prompt that fills the context yields nothing
        batch = DecodeBatch(self.model, len(self.prompts), max_len=min(context, max(map(len, self.prompts))
                                                                        + cfg.max_new_tokens),
                            eos_id=self.eos_id, vocab_limit=self.vocab_limit)
        # Row i samples with seed + i: the same tokens as that prompt alone with seed + i.
        live = [i for i in range(len(self.prompts)) if room[i] > 0 and not self.done[i]]
        added = batch.add([self.prompts[i] for i in live],
                          [replace(cfg, seed=None if cfg.seed is None else cfg.seed + i) for i in live])
        self._batch, self._rows = batch, [None] * len(self.prompts)
        for i, decoding in zip(live, added, strict=True):
            self._rows[i] = decoding
        for i in range(len(self.prompts)):
            self.done[i] = self.done[i] or room[i] <= 0
        row_of = {decoding.id: i for i, decoding in zip(live, added, strict=True)}
        while batch.rows:
            emitted: list[int | None] = [None] * len(self.prompts)
            for out in batch.step():
                row = row_of[out.row.id]
                emitted[row] = out.token
                if out.finished:
                    self.done[row] = True
                elif self.tool is not None and (forced := self.tool.after_token(out.row.generated)):
                    batch.force(out.row, forced)
            yield emitted


def generate_tokens(
    model: GPT,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    eos_id: int | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
    vocab_limit: int | None = None,
    tool: DecoderTool | None = None,
) -> list[list[int]]:
    """Generate up to cfg.max_new_tokens after each prompt. Returns the new tokens of every row (a tool's too).

    should_stop(row, token) is called for each new token; returning True ends that row (the token is kept).
    """
    return _collect(TokenStream(model, prompts, cfg, eos_id, vocab_limit, tool), should_stop)


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

    Each token decodes a few tokens, not the whole row (vLLM's incremental detokenisation): the text of the tokens
    from `prefix` on, less that of those before `read` (text already taken). The tokens before `read` give a
    tokenizer that decodes a token differently at the start of a text (SentencePiece's leading space) its context,
    and decoding the whole row at every token would cost a 2,000-token answer 2,000 tokens of decoding a step.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.prefix = 0  # tokens[prefix:read] is decoded again beside the new ones, for their context
        self.read = 0  # tokens before this are in `text`
        self.emitted = 0  # characters of the final text already emitted
        self.text = ""
        self.stopped = False

    def _pending(self) -> tuple[str, bool]:
        """The text of the tokens after `read`, and whether it is complete (no UTF-8 sequence left open)."""
        before = self.tokenizer.decode(self.tokens[self.prefix : self.read])
        after = self.tokenizer.decode(self.tokens[self.prefix :])
        return after[len(before) :], len(after) > len(before) and not after.endswith("\ufffd")

    def push(self, token: int) -> str:
        """Add a token; return the newly final text (maybe empty)."""
        self.tokens.append(token)
        if self.stopped:
            return ""
        piece, complete = self._pending()
        if complete:
            self._extend(piece)
            self.prefix, self.read = self.read, len(self.tokens)
        safe = len(self.text)
        if not self.stopped:
            for s in self.stop:  # hold back a suffix that is a prefix of a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if self.text[safe - k : safe] == s[:k]:
                        safe -= k
                        break
        new = self.text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return new

    def _extend(self, piece: str) -> None:
        """Append decoded text, cut at the first stop string: one not in the text before ends in the new piece."""
        start = len(self.text)
        self.text += piece
        for s in self.stop:
            at = self.text.find(s, max(0, start - len(s) + 1))
            if at != -1:
                self.stopped = True
                self.text = self.text[:at]

    def flush(self) -> str:
        """The rest of the text at the row's end, an unfinished UTF-8 sequence included (as U+FFFD)."""
        if not self.stopped and self.read < len(self.tokens):
            self._extend(self._pending()[0])
            self.read = len(self.tokens)
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
    tool: DecoderTool | None = None,
) -> list[Completion]:
    """Complete each prompt; on_text(row, piece) receives text as soon as it is final (streaming).

    eos_id: the token that ends a completion (a chat model's end-of-turn token), instead of the tokenizer's
    end-of-text; it never appears in the text. tool: feeds tokens in as the rows write (a chat calculator);
    they are part of the text."""
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
    decoding = TokenStream(model, encoded, cfg, end_id, vocab_limit, tool)
    outputs = _collect(decoding, should_stop)
    completions = []
    for row, (tokens, text) in enumerate(zip(outputs, streams, strict=True)):
        rest = text.flush()
        if rest and on_text is not None:
            on_text(row, rest)
        hit_eos = cfg.stop_at_eos and bool(tokens) and tokens[-1] == end_id
        finish = "stop" if text.stopped or hit_eos else "length"
        limited = finish == "length" and decoding.row_context_limited[row]
        completions.append(Completion(text.text, tokens, finish, limited))
    return completions
