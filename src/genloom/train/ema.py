"""An exponential moving average of the weights (Polyak averaging), kept beside the trained ones.

    ema <- d * ema + (1 - d) * weights,  after every optimizer step, with  d = min(decay, (1 + n) / (10 + n))

where n counts the updates so far: the warmup keeps the average from clinging to the random initial weights
on short runs (an EMA of 0.9999 over a few thousand steps samples noise; diffusers' EMAModel warms up the
same way). Diffusion models sample from their EMA weights, and language models can validate with them.

The average is kept in fp32 whatever the weights' dtype. Buffers (a VQ codebook, ...) are not averaged: the
model's own ones are used with the averaged parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class ExponentialMovingAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay ({decay}) must be in (0, 1)")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    def decay_at(self, updates: int) -> float:
        """The decay of update number `updates` + 1 (warmup: (1 + n) / (10 + n), capped at `decay`)."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in the model's current weights (after an optimizer step)."""
        d = self.decay_at(self.updates)
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own come back afterwards."""
        params = dict(model.named_parameters())
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])

    def state_dict(self, model: nn.Module) -> dict[str, Tensor]:
        """A complete state dict of `model` with the averaged parameters (in their dtype) and its own buffers,
        ready to save as `ema.safetensors`; a tied weight appears once, under its first name."""
        params = dict(model.named_parameters())
        shared = {p.data_ptr() for p in params.values()}
        out = {}
        for name, tensor in model.state_dict().items():
            if name in self.shadow:
                out[name] = self.shadow[name].to(params[name].dtype).cpu()
            elif tensor.data_ptr() not in shared:  # a buffer; other names of tied parameters are left out
                out[name] = tensor.detach().cpu().clone()
        return out

    @torch.no_grad()
    def load_state_dict(self, weights: dict[str, Tensor], updates: int) -> None:
        """Take back the averaged parameters of a saved state dict (`state_dict`'s) and the update count."""
        for name, shadow in self.shadow.items():
            shadow.copy_(weights[name].float())
        self.updates = updates
