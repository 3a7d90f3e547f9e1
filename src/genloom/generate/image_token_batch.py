"""Step-level ("continuous") batching for the token method (DALL-E style): requests join and leave between steps.

An image is grid_size**2 tokens, sampled one at a time after its caption. Batching whole calls shares a step only
between requests that arrive together with the same settings, and a request that comes a moment later waits for
the whole call. `ImageTokenBatch` runs one decoding step at a time over every live request, each at its own image
token, with its own guidance scale, temperature, negative prompt and per-image generators: a new request joins at
the next step (its caption is prefilled, and its first token drawn, when it is added) and a finished one leaves at
once, as `DecodeBatch` does for text and `DiffusionBatch` for denoiser passes.

- Every row owns a slot of a `SlotKVCache` per layer: its caption fills columns 0..Lt-1 and its image tokens
  follow, so rows at different steps decode together, each reading its own columns through a key mask. A leaving
  row's slot is refilled by the last row, so live rows are slots 0..R-1 and a step runs on views of the cache.
- A `TokenGroup` holds one request's rows: its k images' conditional rows and, when guided, k unconditional rows
  (the empty caption, or the negative prompt). They advance in lockstep: one sampling call per group.
- An image depends only on its own rows and its own generator: the same tokens alone, in a call, or joined
  mid-way, up to the float rounding of batched matrix products.

`sample_image_tokens` (generate/imagine.py) is this engine with one group; the HTTP server's image scheduler
(serve/step_scheduler.py) feeds it requests as they come.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from genloom.diffusion.guidance import guide
from genloom.errors import GenloomError
from genloom.generate.batch import SlotKVCache, prepare_step
from genloom.generate.sampling import SamplingConfig, choose_tokens
from genloom.models.dalle import Dalle


@dataclass(eq=False)  # compared and hashed by identity: a scheduler keys its requests by group
class TokenGroup:
    """One request's images, sampled in lockstep."""

    id: int
    sampling: SamplingConfig  # temperature, top-k and top-p of every image
    guidance_scale: float
    generators: list[torch.Generator] | None  # one per image (None: torch's global RNG)
    image_len: int
    sample: Tensor  # (k, t) image tokens drawn so far; (k, image_len) once done
    slots: list[int] = field(default_factory=list)  # its cache slots: k conditional rows, then k unconditional

    @property
    def rows(self) -> int:
        """Images (conditional rows)."""
        return self.sample.shape[0]

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def step(self) -> int:
        """Tokens drawn per image."""
        return self.sample.shape[1]

    @property
    def done(self) -> bool:
        return self.step >= self.image_len


class ImageTokenBatch:
    """Requests of one DALL-E style model sampled together, one image token per `step`, joining (`add`) and
    leaving (`remove`, or when done) between steps.

        batch = ImageTokenBatch(model, capacity=16)
        group = batch.add(text, SamplingConfig(temperature=1.0), guidance_scale=3.0, unconditional=empty)
        while not group.done:
            batch.step()              # returns the groups that finished with this step
        codes = group.sample          # (k, grid_size**2)

    capacity: the images a step holds (a guided image takes two cache rows). A request larger than that runs
    alone (`fits`), in a cache grown for it.
    """

    def __init__(self, model: Dalle, capacity: int) -> None:
        if capacity < 1:
            raise GenloomError(f"batch capacity ({capacity}) must be at least 1")
        self.model, self.capacity = model, capacity
        self.device = model.text_embedding.weight.device
        self.groups: list[TokenGroup] = []
        self.owners: list[tuple[TokenGroup, int]] = []  # slot -> (its group, its index in group.slots)
        self.caches = self._make_caches(2 * capacity)
        self._ids = itertools.count()

    def _make_caches(self, rows: int) -> list[SlotKVCache]:
        cfg, weight = self.model.config, self.model.text_embedding.weight
        return [SlotKVCache(rows, cfg.n_heads, cfg.seq_len, cfg.d_model // cfg.n_heads, self.device, weight.dtype)
                for _ in range(cfg.n_layers)]

    @property
    def rows(self) -> int:
        """Images being sampled."""
        return sum(group.rows for group in self.groups)

    def fits(self, rows: int) -> bool:
        """Whether a request of `rows` images can join now: there is room, or nothing else runs."""
        return not self.groups or self.rows + rows <= self.capacity

    def add(self, text: Tensor, sampling: SamplingConfig, guidance_scale: float = 1.0,
            unconditional: Tensor | None = None, generators: list[torch.Generator] | None = None) -> TokenGroup:
        """A request of captions text (k, Lt): its captions are read and its first tokens drawn now; it takes
        its next tokens with the other groups' at each `step`.

        unconditional (Lt,) or (k, Lt): the empty caption or the negative prompts, needed when guidance_scale != 1.
        generators: one per image (`row_generators`)."""
        k = text.shape[0]
        if not self.fits(k):
            raise GenloomError(f"{k} new images do not fit: {self.rows} of the batch's {self.capacity} rows are taken")
        if guidance_scale != 1.0:
            if unconditional is None:
                raise GenloomError("classifier-free guidance needs the empty caption")
            text = torch.cat([text, unconditional.expand(k, -1)])  # (2k, Lt): conditional rows, then the others
        if len(self.owners) + text.shape[0] > self.caches[0].k.shape[0]:  # a request larger than the batch, alone
            self.caches = self._make_caches(text.shape[0])
        group = TokenGroup(next(self._ids), sampling, guidance_scale, generators, self.model.config.image_len,
                           torch.zeros(k, 0, dtype=torch.long, device=self.device))
        with torch.inference_mode():
            prefilled = self.model.make_kv_caches(text.shape[0])
            logits = self.model.next_image_logits(text.to(self.device), None, prefilled)  # (rows, V)
            for i in range(text.shape[0]):
                slot = len(self.owners)
                for slot_cache, cache in zip(self.caches, prefilled, strict=True):
                    slot_cache.store(slot, cache.k[i, :, : cache.length], cache.v[i, :, : cache.length])
                group.slots.append(slot)
                self.owners.append((group, i))
            self._draw(group, logits)
        self.groups.append(group)
        return group

    def remove(self, group: TokenGroup) -> None:
        """End `group` now (its client is gone): its slots are free for the next `add`. Removing a group that has
        left is a no-op."""
        if group not in self.groups:
            return
        self.groups.remove(group)
        text_len = self.model.config.text_len
        for slot in sorted(group.slots, reverse=True):  # highest first: the last row is never one of the group's
            last = len(self.owners) - 1
            if slot != last:  # keep live rows in slots 0..R-1: the last row moves into the freed slot
                other, index = self.owners[last]
                for cache in self.caches:
                    cache.move(last, slot, text_len + other.step - 1)  # its caption and the image tokens fed
                other.slots[index] = slot
                self.owners[slot] = (other, index)
            self.owners.pop()
        group.slots = []

    def step(self) -> list[TokenGroup]:
        """One decoding step: every live group's latest tokens read, and one more token drawn for each of its
        images. Returns the groups that finished with it, which have left the batch."""
        if any(not group.done for group in self.groups):
            with torch.inference_mode():
                self._advance()
        finished = [group for group in self.groups if group.done]
        for group in finished:
            self.remove(group)
        return finished

    def _advance(self) -> None:
        """Read every row's latest image token into its slot, and draw the next one."""
        rows, text_len, groups = len(self.owners), self.model.config.text_len, self.groups
        order = [slot for group in groups for slot in group.slots]  # the rows, group by group
        # No row has moved (one group, or none has left): no scatter and no gather needed.
        slot_order = None if order == list(range(rows)) else torch.tensor(order, device=self.device)
        fed = torch.cat([torch.cat([g.sample[:, -1], g.sample[:, -1]]) if g.guided else g.sample[:, -1]
                         for g in groups])  # (R,) the token each row feeds, group by group
        tokens = fed if slot_order is None else torch.empty_like(fed).index_copy_(0, slot_order, fed)
        steps = [group.step for group, _ in self.owners]  # (R,) per slot, from Python: no device sync per step
        index = torch.tensor(steps, device=self.device) - 1  # the grid position of the token each row feeds
        fill = text_len + index  # (R,) columns before this token: a row's column is its position
        width, aligned = text_len + max(steps), min(steps) == max(steps)
        # Rows all at one step write one column (a slice) and read every column (no key mask): what a lone request
        # costs.
        prepare_step(self.caches, fill, width, aligned)
        key_valid = None if aligned else torch.arange(width, device=self.device)[None, :] <= fill[:, None]
        logits = self.model.step_image_logits(tokens[:, None], index, key_valid, self.caches)  # (R, V)
        if slot_order is not None:
            logits = logits.index_select(0, slot_order)
        for group, group_logits in zip(groups, logits.split([len(g.slots) for g in groups]), strict=True):
            self._draw(group, group_logits)

    def _draw(self, group: TokenGroup, logits: Tensor) -> None:
        """Append the next token of each of the group's images, from its rows' logits (k or 2k, V)."""
        logits = logits.float()
        if group.guided:
            logits = guide(logits[: group.rows], logits[group.rows :], group.guidance_scale)
        chosen = choose_tokens(logits, group.sampling, group.generators)  # (k,)
        group.sample = torch.cat([group.sample, chosen[:, None]], dim=1)
