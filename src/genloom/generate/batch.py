"""Iteration-level ("continuous") batching for a decoder-only model: rows join and leave between decoding steps.

Orca (Yu et al. 2022) and vLLM schedule at the granularity of one decoding step: a request that arrives while
others are decoding is prefilled and joins the running batch at the next step, and a finished one leaves at once
instead of holding its row until the longest request ends. `DecodeBatch` is that engine for genloom's GPT:

- Every row owns a slot of a pre-allocated KV cache (`SlotKVCache`: capacity x context). A row's keys fill its
  slot from column 0; rows of different lengths decode together with a key mask, and each row's positions are
  its own, so a row decodes as it would alone (same tokens greedily or with its seed, whatever shares the batch).
- New rows are prefilled together (left-padded, as one forward) and their valid columns copied, left-aligned,
  into free slots. With a `prefill_chunk` (the server's), prompts are read by `prefill()` instead, at most that many
  tokens per call, a long prompt in chunks over several steps (vLLM's chunked prefill): a 1,000-token prompt then
  delays the rows already decoding by one chunk per step instead of by its whole prefill. A chunk is a forward of
  its own before the step; Sarathi-Serve fuses it into the step's forward instead, which saves a step's fixed cost
  per chunk (not built here).
- A leaving row's slot is refilled by the last row, so live rows are always slots 0..n-1 and a step runs on views
  of the cache, never on a gathered copy.
- Every row samples with its own settings (`SamplingConfig`, including OpenAI's logit bias and its presence and
  frequency penalties), its own generator, and can ask for the log-probabilities of its tokens.
- The cache may hold keys and values in a narrower dtype than the model's (`kv_dtype`; llama.cpp keeps a 16-bit
  cache by default): half the memory per row and column. Attention then runs in that dtype.
- A row's next tokens can be given instead of sampled (`force`): a tool's output (generate's calculator) goes
  through the model one token a step, with the other rows, as if the model had written it.
- The step's forward can be a `torch.compile`d one (`genloom.generate.compiled.compile_decoding(model)`).

The engine knows no text: `TokenStream` (generate/lm.py) runs a fixed batch through it, the HTTP server's
scheduler (serve/) feeds it requests as they come.
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from genloom.errors import GenloomError
from genloom.generate.compiled import step_function
from genloom.generate.sampling import (
    SamplingConfig,
    apply_logit_bias,
    apply_output_penalties,
    apply_repetition_penalty,
    choose_tokens,
)
from genloom.models.gpt import GPT
from genloom.nn.attention import KVCache

_HEADS: weakref.WeakKeyDictionary[GPT, tuple[tuple[int, int], Tensor]] = weakref.WeakKeyDictionary()


def decoding_head(model: GPT) -> Tensor:
    """The output head as a (d_model, vocab) matrix for `hidden @ head`, in the layout the model's device
    multiplies a few rows by fastest.

    - CPU: a contiguous copy, kept between calls. CPU BLAS multiplies a few rows by this layout much faster than
      by the (vocab, d_model) embedding the head is tied to (8 rows x GPT-2's head: 11 ms instead of 18 ms; see
      genloom.nn.layers.Linear). Making it costs a slow strided transpose (~0.2 s for GPT-2), so it is redone only
      when the weight changes.
    - Other devices (GPU): a transposed view of the embedding itself, nn.Linear's layout, and no second copy of
      the weights. A contiguous copy's leading dimension would be the vocabulary, 50,257 for GPT-2: odd, so its
      rows are not 16-byte aligned in bf16, and cuBLAS is known to run bf16 products with such operands tens of
      times slower (pytorch/pytorch#106469, #146817). That is the likeliest cause of GPT-2 decoding in bf16 on
      an H200 at a tenth of fp32's speed (README, GPU section); benchmarks/gpu_decode.py is to measure it.
    """
    weight = model.lm_head.weight
    if weight.device.type != "cpu":
        return weight.detach().t()
    key = (weight.data_ptr(), weight._version)
    cached = _HEADS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().t().contiguous())
        _HEADS[model] = cached
    return cached[1]


class SlotKVCache:
    """One layer's keys and values for `capacity` rows, each row filling its slot from column 0.

    k, v: (capacity, H, max_len, head_dim), in `dtype` (keys and values given in another are converted). Before
    each decoding step the engine calls `prepare_step` on its layers' caches: live rows are slots 0..rows-1 and
    row i has written fill[i] columns; `append` then writes the step's key of row i at column fill[i] and returns
    the first max(fill) + 1 columns of the live rows (views). When every row writes one column (the image engine's
    requests at one step) the write is a slice instead of a scatter.
    """

    def __init__(self, capacity: int, n_heads: int, max_len: int, head_dim: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.k = torch.zeros(capacity, n_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.rows = 0
        self.width = 0  # max(fill) + 1 during a step
        self.column: int | None = None  # set when every row writes the same column: a slice, not a scatter
        self.targets = torch.zeros(0, dtype=torch.long, device=device)  # (rows * H,) see `write_targets`

    @property
    def length(self) -> int:
        """The longest live row before this step (what a model checks against its context)."""
        return self.width - 1

    def write_targets(self, fill: Tensor) -> Tensor:
        """(rows * H,): where each live row's and head's key goes this step, as an index into the cache's
        (capacity * H * max_len, head_dim) rows: one `index_copy_` then writes a step's keys, 2.5-3x as fast as
        indexing k[rows, :, fill] on a CPU (4 heads: 5 us against 13-15 us, twice a layer and step)."""
        _, heads, max_len, _ = self.k.shape
        slot_heads = torch.arange(len(fill) * heads, device=fill.device).view(-1, heads)  # (rows, H): r * H + h
        return (slot_heads * max_len + fill[:, None]).view(-1)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v: (rows, H, 1, hd) of this step. Returns keys and values (rows, H, width, hd)."""
        assert k.shape[2] == 1, "a slot cache decodes one token per row and step"
        if self.column is not None:
            self.k[: self.rows, :, self.column] = k[:, :, 0].to(self.k.dtype)
            self.v[: self.rows, :, self.column] = v[:, :, 0].to(self.v.dtype)
        else:
            head_dim = k.shape[-1]
            self.k.view(-1, head_dim).index_copy_(0, self.targets, k.reshape(-1, head_dim).to(self.k.dtype))
            self.v.view(-1, head_dim).index_copy_(0, self.targets, v.reshape(-1, head_dim).to(self.v.dtype))
        return self.k[: self.rows, :, : self.width], self.v[: self.rows, :, : self.width]

    def store(self, slot: int, k: Tensor, v: Tensor) -> None:
        """Put a prefilled row's keys and values (H, T, hd) at the start of `slot`."""
        self.k[slot, :, : k.shape[1]] = k  # (copying converts to the cache's dtype)
        self.v[slot, :, : v.shape[1]] = v

    def move(self, source: int, target: int, columns: int) -> None:
        self.k[target, :, :columns] = self.k[source, :, :columns]
        self.v[target, :, :columns] = self.v[source, :, :columns]


def prepare_step(caches: Sequence[SlotKVCache], fill: Tensor, width: int, aligned: bool = False) -> None:
    """Set up one decoding step on every layer's cache: live rows are slots 0..len(fill)-1, row i has written
    fill[i] columns (a device tensor), width = max(fill) + 1 (from Python: no device sync). aligned: every row writes
    column width - 1, a slice; else each row's column is its own, and where the keys go is worked out once here for
    all the layers (they share one shape)."""
    targets = None if aligned or not caches else caches[0].write_targets(fill)
    for cache in caches:
        cache.rows, cache.width = len(fill), width
        cache.column = width - 1 if aligned else None
        if targets is not None:
            assert cache.k.shape == caches[0].k.shape, "the layers' caches share one shape"
            cache.targets = targets


@dataclass
class TokenLogprobs:
    """The log-probability of a chosen token under the model (before temperature and filtering, as OpenAI
    reports them), and the `top` most likely alternatives."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Row:
    """One sequence being decoded. `slot` changes when rows leave; `id` never does."""

    id: int
    prompt: list[int]
    sampling: SamplingConfig
    max_new: int  # tokens this row may still produce in all (the context may allow fewer than asked)
    top_logprobs: int | None  # None: no log-probabilities; k >= 0: the chosen token's and k alternatives
    generator: torch.Generator | None
    eos_id: int | None  # the token that ends this row (with sampling.stop_at_eos)
    slot: int = -1
    generated: list[int] = field(default_factory=list)
    forced: list[int] = field(default_factory=list)  # the next tokens, given instead of sampled (`force`)
    finish_reason: str | None = None  # "stop" (end token) or "length", once finished by the engine

    @property
    def columns(self) -> int:
        """Cache columns this row has written: everything before the token the next step reads."""
        return len(self.prompt) - 1 + len(self.generated)

    @property
    def context_limited(self) -> bool:
        """The context, not the request's max_new_tokens, bounds this row."""
        return self.max_new < self.sampling.max_new_tokens


@dataclass
class PendingPrompt:
    """A row whose prompt `DecodeBatch.prefill` has not read whole yet (a batch with a `prefill_chunk`)."""

    row: Row
    read: int = 0  # prompt tokens read so far, into `caches`
    caches: list[KVCache] | None = None  # one per layer, made at its first chunk (a prompt read whole needs none)

    @property
    def unread(self) -> int:
        """Tokens still to read: every prompt token but the last, which the row's first decoding step reads."""
        return len(self.row.prompt) - 1 - self.read


@dataclass
class StepOutput:
    row: Row
    token: int
    logprobs: TokenLogprobs | None
    finished: bool  # the row ended with this token (end token or length) and has left the batch


class DecodeBatch:
    """A batch of at most `capacity` rows that decode one token per step; rows join (`add`) and leave
    (`remove`, or at their end token or length) between steps.

        batch = DecodeBatch(model, capacity=16)
        rows = batch.add([prompt], [cfg])
        while batch.rows:
            for out in batch.step():  # one token per live row
                ...                   # batch.remove(out.row) to end it early (a stop string, a client gone)

    kv_dtype: the cache's dtype (default: the model's), e.g. torch.bfloat16 for an fp32 model.

    prefill_chunk: None (default) reads each prompt in `add`. A number of tokens: `add` only queues the prompts, and
    `prefill()`, called before each step, reads at most that many of them, oldest first: prompts that fit whole go
    together in one forward (left-padded, the padding counted), and a longer prompt goes alone in chunks of exactly
    that size. A chunk's bounds depend on nothing but its own prompt, so a row's result does not depend on what
    else is queued.

        batch = DecodeBatch(model, capacity=16, prefill_chunk=128)
        batch.add(prompts, cfgs)
        while batch.busy:
            batch.prefill()           # rows whose prompt is read join the step
            for out in batch.step():
                ...
    """

    def __init__(self, model: GPT, capacity: int, max_len: int | None = None, eos_id: int | None = None,
                 vocab_limit: int | None = None, kv_dtype: torch.dtype | None = None,
                 prefill_chunk: int | None = None) -> None:
        if capacity < 1:
            raise GenloomError(f"batch capacity ({capacity}) must be at least 1")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise GenloomError(f"the prefill chunk ({prefill_chunk} tokens) must be at least 1 token")
        self.model, self.capacity, self.eos_id = model, capacity, eos_id
        self.prefill_chunk = prefill_chunk
        self.context = model.config.context_length
        self.max_len = min(max_len or self.context, self.context)
        self.vocab_limit = vocab_limit  # ids >= this are never produced (a vocabulary padded past the tokenizer's)
        weight = model.token_embedding.weight
        self.device = weight.device
        cfg = model.config
        self.caches = [SlotKVCache(capacity, cfg.n_heads, self.max_len, cfg.d_model // cfg.n_heads, self.device,
                                   kv_dtype or weight.dtype) for _ in range(cfg.n_layers)]
        self.head = decoding_head(model)
        self._step = step_function(model)  # eager, or compiled after compile_decoding(model)
        vocab = cfg.vocab_size
        self.seen = torch.zeros(capacity, vocab, dtype=torch.bool, device=self.device)  # prompt + output
        self.counts = torch.zeros(capacity, vocab, device=self.device)  # output tokens, for OpenAI's penalties
        self.rows: list[Row] = []  # live rows; rows[i].slot == i
        self.pending: deque[PendingPrompt] = deque()  # added, prompt not yet read (prefill_chunk), oldest first
        self._ids = itertools.count()

    @property
    def free(self) -> int:
        """Rows that `add` can take: a row whose prompt is still being read holds its place."""
        return self.capacity - len(self.rows) - len(self.pending)

    @property
    def busy(self) -> bool:
        """Rows are decoding or prompts wait to be read."""
        return bool(self.rows or self.pending)

    def add(self, prompts: list[list[int]], samplings: list[SamplingConfig],
            top_logprobs: list[int | None] | None = None, eos_ids: list[int | None] | None = None) -> list[Row]:
        """Prefill `prompts` (one forward, left-padded) into free slots; they produce tokens from the next step.
        With a `prefill_chunk`, queue them for `prefill()` instead.

        top_logprobs[i]: log-probabilities for row i (see `Row`); eos_ids[i]: the token that ends row i (default:
        the batch's `eos_id`), so base and chat prompts can share a batch."""
        if len(prompts) > self.free:
            raise GenloomError(f"{len(prompts)} new rows do not fit: {self.free} of {self.capacity} slots are free")
        if not prompts:
            return []
        new = [self._new_row(p, s, None if top_logprobs is None else top_logprobs[i],
                             self.eos_id if eos_ids is None else eos_ids[i])
               for i, (p, s) in enumerate(zip(prompts, samplings, strict=True))]
        for row in new:
            if row.max_new <= 0:  # the prompt fills the context: nothing to generate
                row.finish_reason = "length"
        starting = [row for row in new if row.finish_reason is None]
        if self.prefill_chunk is not None:
            self.pending.extend(PendingPrompt(row) for row in starting)
        else:
            with torch.inference_mode():
                self._prefill(starting)
        return new

    def prefill(self) -> int:
        """Read queued prompts (a batch with a `prefill_chunk`), at most `prefill_chunk` tokens, oldest first; a row
        whose prompt is read takes a slot and decodes from the next `step`. Returns the tokens read, padding
        included (0 without a prefill_chunk: `add` has read every prompt)."""
        chunk = self.prefill_chunk
        if chunk is None or not self.pending:
            return 0
        budget = chunk
        with torch.inference_mode():
            while self.pending and budget > 0:
                head = self.pending[0]
                if head.read == 0 and head.unread <= chunk:  # whole prompts: as many as fit, in one forward
                    group: list[Row] = []
                    longest = 0
                    for waiting in self.pending:  # (only the oldest can be part-read: chunks go oldest first)
                        if waiting.unread > chunk:
                            break
                        cost = (len(group) + 1) * max(longest, waiting.unread)
                        if cost > budget:
                            break
                        group.append(waiting.row)
                        longest = max(longest, waiting.unread)
                    if not group:
                        break  # the oldest prompt needs more than is left of this call's budget
                    for _ in group:
                        self.pending.popleft()
                    self._prefill(group)
                    budget -= len(group) * longest
                else:  # a long prompt: its next chunk, alone and whole, or nothing this call
                    size = min(chunk, head.unread)
                    if size > budget:
                        break
                    self._read_chunk(head, size)
                    budget -= size
        return chunk - budget

    def _read_chunk(self, pending: PendingPrompt, size: int) -> None:
        """Read the next `size` tokens of a long prompt into its own caches; once it is all read, the row takes a
        slot."""
        row = pending.row
        if pending.caches is None:
            pending.caches = self.model.make_kv_caches(1, len(row.prompt) - 1)
        idx = torch.tensor([row.prompt[pending.read : pending.read + size]], device=self.device)  # (1, size)
        self.model.hidden_states(idx, kv_caches=pending.caches, last_only=True)  # positions continue the caches
        pending.read += size
        if pending.unread == 0:
            self.pending.popleft()
            self._join(row)
            for slot_cache, cache in zip(self.caches, pending.caches, strict=True):
                slot_cache.store(row.slot, cache.k[0], cache.v[0])

    def _new_row(self, prompt: list[int], sampling: SamplingConfig, top_logprobs: int | None,
                 eos_id: int | None) -> Row:
        if not prompt:
            raise GenloomError("every prompt must have at least one token")
        if len(prompt) > self.context:
            raise GenloomError(f"prompt of {len(prompt)} tokens is longer than the model's context of {self.context}")
        if len(prompt) > self.max_len:
            raise GenloomError(f"prompt of {len(prompt)} tokens does not fit this batch's {self.max_len} columns")
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        # The last chosen token is never read back, so a row needs only prompt + max_new - 1 columns.
        max_new = min(sampling.max_new_tokens, self.max_len + 1 - len(prompt), self.context - len(prompt))
        return Row(next(self._ids), list(prompt), sampling, max_new, top_logprobs, generator, eos_id)

    def _prefill(self, new: list[Row]) -> None:
        """Read every prompt but its last token into the new rows' slots; the last token is read by the next step,
        with the other rows' tokens (so a new row costs its batch no separate step)."""
        for row in new:
            self._join(row)
        context_rows = [row for row in new if len(row.prompt) > 1]
        if not context_rows:
            return
        longest = max(len(r.prompt) - 1 for r in context_rows)
        idx = torch.zeros(len(context_rows), longest, dtype=torch.long)
        valid = torch.zeros(len(context_rows), longest, dtype=torch.bool)
        for i, row in enumerate(context_rows):
            idx[i, longest - len(row.prompt) + 1 :] = torch.tensor(row.prompt[:-1])
            valid[i, longest - len(row.prompt) + 1 :] = True
        idx, valid = idx.to(self.device), valid.to(self.device)
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)  # (g, T): 0 at each row's first real token
        caches = self.model.make_kv_caches(len(context_rows), longest)
        self.model.hidden_states(idx, positions=positions, attention_mask=None if bool(valid.all()) else valid,
                                 kv_caches=caches, last_only=True)
        for i, row in enumerate(context_rows):
            start = longest - len(row.prompt) + 1  # left-align: the slot holds no padding
            for slot_cache, cache in zip(self.caches, caches, strict=True):
                slot_cache.store(row.slot, cache.k[i, :, start:], cache.v[i, :, start:])

    def _join(self, row: Row) -> None:
        """Give `row` the next slot, with its prompt's tokens seen and no output counted (for the penalties)."""
        row.slot = len(self.rows)
        self.rows.append(row)
        self.seen[row.slot] = False
        self.seen[row.slot, torch.tensor(row.prompt, device=self.device)] = True
        self.counts[row.slot] = 0

    def force(self, row: Row, tokens: list[int]) -> None:
        """Make `tokens` the row's next tokens, one per step, instead of sampling them."""
        row.forced.extend(tokens)

    def remove(self, row: Row) -> None:
        """End `row` now: its slot is free for the next `add`. Removing a row that has left is a no-op."""
        if row.slot < 0:
            for waiting in self.pending:  # a prompt not read yet: it leaves the queue
                if waiting.row is row:
                    self.pending.remove(waiting)
                    break
            return
        last = self.rows[-1]
        if last is not row:  # keep live rows in slots 0..n-1: the last row moves into the freed slot
            for cache in self.caches:
                cache.move(last.slot, row.slot, last.columns)
            for table in (self.seen, self.counts):
                table[row.slot] = table[last.slot]
            last.slot = row.slot
            self.rows[row.slot] = last
        self.rows.pop()
        row.slot = -1

    def step(self) -> list[StepOutput]:
        """One decoding step: read every live row's last token, then choose one more token for each."""
        if not self.rows:
            return []
        with torch.inference_mode():
            outputs = self._choose_all(self._advance())
            live = torch.arange(len(outputs), device=self.device)
            chosen = torch.tensor([out.token for out in outputs], device=self.device)
            self.seen[live, chosen] = True
            self.counts[live, chosen] += 1
        for out in outputs:
            row = out.row
            row.generated.append(out.token)
            if row.sampling.stop_at_eos and out.token == row.eos_id:
                row.finish_reason = "stop"
            elif len(row.generated) >= row.max_new:
                row.finish_reason = "length"
            out.finished = row.finish_reason is not None
        for out in outputs:
            if out.finished:
                self.remove(out.row)
        return outputs

    def _choose_all(self, logits: Tensor) -> list[StepOutput]:
        """A token for every live row. Rows that sample alike (same temperature, top-k and top-p, each with a
        generator of its own or none with one, no bias or penalty, no log-probabilities) share one sampling call:
        per-row work would cost a 16-row batch more than its forward pass on a small model."""
        rows = self.rows
        if self.vocab_limit is not None:
            logits[:, self.vocab_limit :] = float("-inf")
        groups: dict[tuple[float, int | None, float | None, bool], list[int]] = {}
        outputs: list[StepOutput | None] = [None] * len(rows)
        for i, row in enumerate(rows):
            if row.forced:
                token = row.forced.pop(0)
                logprobs = None if row.top_logprobs is None else token_logprobs(logits[i], token, row.top_logprobs)
                outputs[i] = StepOutput(row, token, logprobs, False)
                continue
            cfg = row.sampling
            plain = (row.top_logprobs is None and cfg.repetition_penalty == 1.0 and cfg.presence_penalty == 0
                     and cfg.frequency_penalty == 0 and not cfg.logit_bias)
            if plain:
                seeded = row.generator is not None and cfg.temperature > 0
                groups.setdefault((cfg.temperature, cfg.top_k, cfg.top_p, seeded), []).append(i)
            else:
                outputs[i] = self._choose(row, logits[i : i + 1])
        for (*_, seeded), members in groups.items():
            if len(members) == len(rows):  # members are in row order: every row's logits as they are, no copy
                selected = logits
            else:
                selected = logits.index_select(0, torch.tensor(members, device=self.device))
            generators = [g for i in members if (g := rows[i].generator) is not None] if seeded else None
            chosen = choose_tokens(selected, rows[members[0]].sampling, generators).tolist()
            for i, token in zip(members, chosen, strict=True):
                outputs[i] = StepOutput(rows[i], int(token), None, False)
        return [out for out in outputs if out is not None]

    def _choose(self, row: Row, logits: Tensor) -> StepOutput:
        """Row `row`'s token from its logits (1, vocab), with its own bias, penalties, generator and
        log-probabilities (those of the model, before bias and penalties, as OpenAI and vLLM report them)."""
        cfg = row.sampling
        adjusted = apply_logit_bias(logits, cfg.logit_bias)
        adjusted = apply_repetition_penalty(adjusted, self.seen[row.slot : row.slot + 1], cfg.repetition_penalty)
        adjusted = apply_output_penalties(adjusted, self.counts[row.slot : row.slot + 1], cfg.presence_penalty,
                                          cfg.frequency_penalty)
        token = int(choose_tokens(adjusted, cfg, None if row.generator is None else [row.generator])[0])
        logprobs = None
        if row.top_logprobs is not None:
            logprobs = token_logprobs(logits[0], token, row.top_logprobs)
        return StepOutput(row, token, logprobs, finished=False)

    def _advance(self) -> Tensor:
        """Read every live row's last token (its prompt's last, or the token chosen last step) into its slot: the
        next-token logits of the live rows."""
        rows = self.rows
        columns_before = [r.columns for r in rows]
        # The width comes from the Python list: max() of the device tensor would wait for the GPU every token.
        width = max(columns_before) + 1
        fill = torch.tensor(columns_before, device=self.device)  # (n,) columns before this token
        prepare_step(self.caches, fill, width)
        tokens = torch.tensor([[r.generated[-1] if r.generated else r.prompt[-1]] for r in rows],
                              device=self.device)  # (n, 1)
        columns = torch.arange(width, device=self.device)[None, :]  # (1, width)
        key_valid = columns <= fill[:, None]  # (n, width): each row's own columns, its new token included
        # A row's position is its column: slots hold no padding.
        return self._step(self.model, tokens, fill[:, None], key_valid, self.caches, self.head)  # (n, vocab)


def token_logprobs(logits: Tensor, token: int, top: int) -> TokenLogprobs:
    """log-softmax of logits (vocab,): the chosen token's value and the `top` largest, best first."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(logp, min(top, logp.numel())) if top > 0 else None
    alternatives = [] if best is None else list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return TokenLogprobs(float(logp[token]), alternatives)


def prompt_logprobs(model: GPT, prompt: list[int], top: int) -> list[TokenLogprobs | None]:
    """Log-probabilities of each prompt token given the ones before it (None for the first, which has no
    context): what evaluation harnesses read from `echo` to score an answer."""
    if len(prompt) > model.config.context_length:
        raise GenloomError(f"prompt of {len(prompt)} tokens is longer than the model's context of "
                           f"{model.config.context_length}")
    with torch.inference_mode():
        device = model.token_embedding.weight.device
        logits = model(torch.tensor([prompt], device=device))[0]  # (T, vocab)
    return [None] + [token_logprobs(logits[i - 1], prompt[i], top) for i in range(1, len(prompt))]
