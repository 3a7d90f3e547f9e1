"""AdamW with decay / no-decay parameter groups, and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from genloom.train.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """Weight decay on matrices and embeddings (dim >= 2) only: decaying biases and norm gains hurts."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates all parameters in one pass, which matters when Python overhead dominates.
    fused = device_type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def learning_rate(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (1-based).

    `time_fraction` is the share of `cfg.max_minutes` already spent. The cosine runs to the end of whichever
    budget ends first, steps or time: with only `max_steps`, a run that a wall-clock budget stops early would
    end at a high learning rate and miss the low-rate phase that lowers the loss most.
    """
    if cfg.schedule == "inverse_sqrt":
        # "Attention Is All You Need" §5.3, scaled so the peak (at the end of warmup) equals cfg.lr.
        warmup = max(cfg.warmup_steps, 1)
        return cfg.lr * min(step**-0.5, step * warmup**-1.5) * warmup**0.5
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    step_progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, max(step_progress, time_fraction))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)
