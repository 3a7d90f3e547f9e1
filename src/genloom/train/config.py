"""Training settings shared by every model family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["cosine", "constant", "inverse_sqrt"]
DType = Literal["fp32", "bf16", "fp16"]


@dataclass
class TrainConfig:
    out_dir: str = "runs/lm"
    max_steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size * grad_accum * world
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1  # applied to matrices and embeddings only, never to biases or norms
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # steps between validations (and checkpoints)
    eval_batches: int = 20
    log_interval: int = 10
    keep_last: int = 2  # step checkpoints kept besides best/
    dtype: DType = "fp32"  # autocast precision; bf16 works on recent CPUs and GPUs, fp16 needs CUDA
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 1337
    progress: bool = True  # show a progress bar
    # Wall-clock training budget over the whole run (a resumed run continues its clock); 0: none. The step that
    # crosses it is the last, and the cosine schedule decays over it when it ends before max_steps.
    max_minutes: float = 0.0
    patience: int = 0  # stop after this many validations without a better best_metric; 0: never stop early
    best_metric: str = "val_loss"  # validation metric that picks best/ and drives patience (e.g. bleu)
    overwrite: bool = False  # a fresh run may delete the checkpoints of an earlier run in out_dir
    # > 0: keep an exponential moving average of the weights with this decay (warmed up, see train/ema.py);
    # validation, best/ and inference then use the averaged weights. 0: off.
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} ({getattr(self, name)}) must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"the learning rate ({self.lr:g}) must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"the final learning rate min_lr ({self.min_lr:g}) must be in [0, lr ({self.lr:g})]")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        if self.schedule not in ("cosine", "constant", "inverse_sqrt"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.max_minutes < 0 or self.patience < 0:
            raise ValueError(f"max_minutes ({self.max_minutes}) and patience ({self.patience}) must be >= 0")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown dtype {self.dtype!r}; expected fp32, bf16 or fp16")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay ({self.ema_decay}) must be in [0, 1); 0 turns the EMA off")
