"""The contract between the one training loop and a model family: a `Task`.

A task must give the trainer its batches and its loss. It may also override any of the hooks below; each has
a default that does nothing, so a family implements only what it needs:

- `validation_metrics(model)`: numbers beyond the validation loss (BLEU, PSNR, ...), computed at every
  validation on every process (they must agree), each with its direction in `metric_goals`, so the trainer
  knows whether a higher `fid` or `val_diffusion_loss` is better or worse; any of them can pick `best/`;
- `after_step(model, step)`: runs after every optimizer step (a schedule of the task's own, a probe);
- `state_dict()` / `load_state_dict(state)`: task state saved in every checkpoint's training state and given
  back on `--resume` (tensors and plain values only: it is read with `weights_only=True`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from genloom.tokenizers import Tokenizer

Batch = Sequence[Tensor]
Goal = Literal["min", "max"]  # whether a metric improves by going down (a loss) or up (an accuracy)

# The metrics the trainer itself measures at every validation.
BUILT_IN_GOALS: dict[str, Goal] = {"val_loss": "min", "val_ppl": "min"}


class Task(ABC):
    """What a model family gives the trainer."""

    family: str  # name in the model registry, saved in every checkpoint
    model_config: Any  # the model's config dataclass
    tokenizer: Tokenizer | None  # saved with every checkpoint; None for a model that reads no text
    # The direction of every metric `validation_metrics` returns.
    metric_goals: ClassVar[dict[str, Goal]] = {}
    # Whether the loss is a mean cross-entropy in nats, so that exp(val_loss) is a perplexity worth reporting.
    loss_is_cross_entropy: ClassVar[bool] = True

    @abstractmethod
    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        """This process's `n_micro` micro-batches of one optimizer step, drawn from `generator`."""

    @abstractmethod
    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        """This process's share of the same `n` validation batches, every time it is called.

        The batches must not depend on how many processes share them, so that a validation loss means
        the same under torchrun as in one process.
        """

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean loss of `batch`; `model` may be wrapped (DDP, torch.compile)."""

    @abstractmethod
    def count_tokens(self, batch: Batch) -> int:
        """What the trainer's throughput counts for `batch` (tokens; images for an image model)."""

    # ---- optional hooks ------------------------------------------------------------------------------------
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Metrics beyond the loss, named in `metric_goals`; `model` is in eval mode (and holds the EMA
        weights when the run keeps them)."""
        return {}

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step `step` (1-based) with the unwrapped model in train mode."""
        return None  # a hook: nothing to do unless a task overrides it

    def state_dict(self) -> dict[str, Any]:
        """Task state to save with every checkpoint (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned, on --resume."""
        return None  # a hook: a task without state has nothing to take back


def metric_goal(task: Task, metric: str) -> Goal:
    """Whether `metric` is minimised or maximised; an internal error when its task did not say."""
    goals = {**BUILT_IN_GOALS, **task.metric_goals}
    assert metric in goals, f"{type(task).__name__}.metric_goals does not give the direction of {metric!r}"
    return goals[metric]


def is_improvement(goal: Goal, value: float, best: float | None) -> bool:
    """Whether `value` beats the best so far (None: nothing yet) for a metric with this goal."""
    if best is None:
        return True
    return value < best if goal == "min" else value > best
