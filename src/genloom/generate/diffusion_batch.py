"""Step-level ("continuous") batching for latent diffusion: requests join and leave between denoiser passes.

A diffusion request is `steps` passes of the denoiser over its latents. Batching whole calls shares a pass only
between requests that arrive together with the same settings, and a request that comes a moment later waits for
the whole call. `DiffusionBatch` runs one pass at a time over every live request, each at its own step of its own
plan (steps, sampler, img2img strength), with its own guidance scale, captions and noise: a new request joins at
the next pass and a finished one leaves at once, as `DecodeBatch` does for text. The process functions are pure
functions of (sample, output, levels) for this (genloom.diffusion.process).

- A `LatentGroup` holds one request's rows. They walk its plan in lockstep, so each sampler step is one call over
  the group, and the denoiser pass is shared by all groups.
- Guided groups add their unconditional (or negative-prompt) rows to the pass; unguided ones (scale 1) add none.
- An image depends only on its own rows: the denoiser mixes nothing between rows and every image draws its noise
  from its own generator. So it is the same image alone, in a call, or joined mid-way, up to the float rounding
  of batched matrix products.

`sample_latents` (generate/diffuse.py) is this engine with one group; the HTTP server's diffusion scheduler feeds
it requests as they come.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from genloom.diffusion.guidance import guide
from genloom.diffusion.process import (
    Sampler,
    SamplingPlan,
    check_guidance,
    check_sampler,
    sampler_step,
    sampling_plan,
    start_sample,
)
from genloom.diffusion.samplers import SolverHistory
from genloom.diffusion.schedules import Spacing
from genloom.errors import GenloomError
from genloom.models.dit import DiT


@dataclass
class DiffusionSampling:
    """How a diffusion model samples; None sampler: the objective's default (dpm++ for ddpm, euler for flow)."""

    steps: int = 20
    sampler: str | None = None
    eta: float = 0.0  # DDIM's noise (0: deterministic)
    spacing: Spacing = "trailing"  # which training timesteps a ddpm-objective sampler visits


def draw_noise(shape: tuple[int, ...], generators: list[torch.Generator] | None, device: torch.device) -> Tensor:
    """Standard normal (N, *shape[1:]): row i from generator i (torch's global RNG without generators)."""
    if generators is None:
        return torch.randn(shape, device=device)
    return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in generators])


@dataclass(eq=False)  # compared and hashed by identity: a scheduler keys its requests by group
class LatentGroup:
    """One request's images, sampled in lockstep down one plan."""

    id: int
    sampler: Sampler
    plan: SamplingPlan
    eta: float
    guidance_scale: float
    tokens: Tensor  # (k, Lt, d) encoded captions, then (guided) the k unconditional ones: (2k, Lt, d)
    valid: Tensor  # (k or 2k, Lt) caption positions that are not padding
    generators: list[torch.Generator] | None
    sample: Tensor  # (k, C, h, w) the current latents; the result once `done`
    history: SolverHistory | None = None  # DPM-Solver++'s memory between steps
    x0: Tensor | None = None  # the denoiser's latest estimate of the clean latents (previews)
    step: int = 0  # steps taken

    @property
    def rows(self) -> int:
        return self.sample.shape[0]

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    @property
    def done(self) -> bool:
        return self.step >= self.plan.steps

    @property
    def needs_noise(self) -> bool:
        return self.sampler == "ddpm" or (self.sampler == "ddim" and self.eta > 0)


class DiffusionBatch:
    """Requests of one denoiser sampled together, one denoiser pass per `step`, joining (`add`) and leaving
    (`remove`, or when done) between passes.

        batch = DiffusionBatch(model, capacity=16)
        group = batch.add(text, DiffusionSampling(steps=20), guidance_scale=3.0, unconditional=empty)
        while not group.done:
            batch.step()              # returns the groups that finished with this pass
        latents = group.sample

    capacity: the images (conditional rows) a pass holds. A request larger than that runs alone (`fits`).
    """

    def __init__(self, model: DiT, capacity: int) -> None:
        if capacity < 1:
            raise GenloomError(f"batch capacity ({capacity}) must be at least 1")
        self.model, self.capacity = model, capacity
        self.process = model.config.process
        self.device = model.positions.device
        self.ac = self.process.alphas_cumprod().to(self.device)
        self.groups: list[LatentGroup] = []
        self._ids = itertools.count()

    @property
    def rows(self) -> int:
        return sum(group.rows for group in self.groups)

    def fits(self, rows: int) -> bool:
        """Whether a request of `rows` images can join now: there is room, or nothing else runs."""
        return not self.groups or self.rows + rows <= self.capacity

    def add(self, text: Tensor, sampling: DiffusionSampling, guidance_scale: float = 1.0,
            unconditional: Tensor | None = None, generators: list[torch.Generator] | None = None,
            init: Tensor | None = None, strength: float = 1.0) -> LatentGroup:
        """A request of captions text (k, Lt); it takes its first step at the next `step`.

        unconditional (Lt,) or (k, Lt): the empty caption or the negative prompts, needed when guidance_scale != 1.
        generators: one per image (`row_generators`). init (k, C, h, w): img2img's latents, noised to `strength`."""
        try:
            sampler = check_sampler(self.process, sampling.sampler)
            check_guidance(self.process, guidance_scale)
            plan = sampling_plan(self.process, sampling.steps, sampling.spacing, strength)
        except ValueError as e:
            raise GenloomError(str(e)) from None
        rows = text.shape[0]
        if not self.fits(rows):
            raise GenloomError(f"{rows} new images do not fit: {self.rows} of the batch's {self.capacity} rows are "
                               "taken")
        if guidance_scale != 1.0:
            if unconditional is None:
                raise GenloomError("classifier-free guidance needs the unconditional caption")
            text = torch.cat([text, unconditional.expand(rows, -1)])  # (2k, Lt): conditional rows, then the others
        cfg = self.model.config
        with torch.inference_mode():
            tokens, valid = self.model.encode_caption(text.to(self.device))
            noise = draw_noise((rows, cfg.latent_channels, cfg.latent_size, cfg.latent_size), generators, self.device)
            sample = start_sample(self.process, self.ac, plan, noise, None if init is None else init.to(self.device))
        group = LatentGroup(next(self._ids), sampler, plan, sampling.eta, guidance_scale, tokens, valid, generators,
                            sample)
        self.groups.append(group)
        return group

    def remove(self, group: LatentGroup) -> None:
        """End `group` now (its client is gone). Removing a group that has left is a no-op."""
        if group in self.groups:
            self.groups.remove(group)

    @torch.inference_mode()
    def step(self) -> list[LatentGroup]:
        """One denoiser pass over every live group, each moved one step down its plan. Returns the groups that
        finished with it, which have left the batch."""
        groups = list(self.groups)  # a group leaves as soon as it is done
        if not groups:
            return []
        guided = [group for group in groups if group.guided]
        # Every group's conditional rows, then the guided groups' unconditional rows: with one group, the layout
        # of a whole call, so a request alone computes exactly what it computed before the batch could mix.
        fed = torch.cat([g.sample for g in groups] + [g.sample for g in guided])
        t = torch.cat([torch.full((g.rows,), g.plan.model_time(g.step, self.process), device=self.device)
                       for g in groups + guided])
        tokens = torch.cat([g.tokens[: g.rows] for g in groups] + [g.tokens[g.rows :] for g in guided])
        valid = torch.cat([g.valid[: g.rows] for g in groups] + [g.valid[g.rows :] for g in guided])
        output = self.model(fed, t, caption=(tokens, valid)).float()  # (rows + guided rows, C, h, w)
        images = sum(g.rows for g in groups)
        conditional = output[:images].split([g.rows for g in groups])
        unconditional = dict(zip(guided, output[images:].split([g.rows for g in guided]), strict=True))
        for group, out in zip(groups, conditional, strict=True):
            if group.guided:
                out = guide(out, unconditional[group], group.guidance_scale)
            noise = draw_noise(tuple(group.sample.shape), group.generators, self.device) if group.needs_noise else None
            result = sampler_step(self.process, self.ac, group.sampler, group.plan, group.step, group.sample, out,
                                  group.history, noise, group.eta)
            group.sample, group.history, group.x0 = result.sample, result.history, result.x0
            group.step += 1
        finished = [group for group in groups if group.done]
        for group in finished:
            self.groups.remove(group)
        return finished
