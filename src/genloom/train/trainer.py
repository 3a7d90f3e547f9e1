"""The one training loop. Each model family supplies a `Task`: its batches and its loss.

Runs unchanged on one CPU, one GPU or many processes under `torchrun` (DistributedDataParallel). Every
process draws the same global batch from a shared seeded generator and takes its own slice, so N
processes with batch B see exactly what one process with batch N*B sees, and the averaged gradients match.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from genloom.config import config_to_dict
from genloom.errors import GenloomError
from genloom.tokenizers import Tokenizer
from genloom.train.checkpoint import CheckpointManager, load_training_state, load_weights
from genloom.train.config import TrainConfig, is_improvement
from genloom.train.distributed import DistributedContext, init_distributed
from genloom.train.metrics import MetricsLog
from genloom.train.optim import learning_rate, make_optimizer

Batch = Sequence[Tensor]


class Task(Protocol):
    """What a model family gives the trainer."""

    family: str  # name in the model registry, saved in every checkpoint
    model_config: Any  # the model's config dataclass

    @property
    def tokenizer(self) -> Tokenizer | None:
        """Saved with every checkpoint; None for a model that reads no text (the VQ image tokenizer)."""
        ...

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        """This process's `n_micro` micro-batches of one optimizer step, drawn from `generator`."""
        ...

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        """This process's share of the same `n` validation batches, every time it is called.

        The batches must not depend on how many processes share them, so that a validation loss means
        the same under torchrun as in one process.
        """
        ...

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean loss of `batch`; `model` may be wrapped (DDP, torch.compile)."""
        ...

    def count_tokens(self, batch: Batch) -> int: ...


# A task may also define `validation_metrics(model) -> dict[str, float]`: metrics beyond the loss (e.g. BLEU
# of greedy translations), computed at every validation on every process (they must agree) and eligible as
# `TrainConfig.best_metric`.


@dataclass
class TrainResult:
    step: int
    val_loss: float | None
    train_losses: list[float] = field(default_factory=list)  # one per optimizer step of this run
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    run_dir: Path = Path()
    stop_reason: str = "max_steps"  # max_steps | time_limit | early_stopping
    best: dict[str, float] = field(default_factory=dict)  # step and metrics of best/


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype == "fp16" and device.type != "cuda":
        raise GenloomError("--dtype fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


class Trainer:
    def __init__(self, task: Task, model: nn.Module, cfg: TrainConfig, ctx: DistributedContext | None = None):
        self.task = task
        self.cfg = cfg
        self.ctx = ctx or init_distributed(cfg.device)
        self.model = model.to(self.ctx.device)
        self.run_dir = Path(cfg.out_dir)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.keep_last)
        self.optimizer = make_optimizer(self.model, cfg, self.ctx.device.type)
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        # Early stopping: the best value of cfg.best_metric so far and validations since it last improved.
        self.best_score: float | None = None
        self.stale_evals = 0
        # Seconds of the run's max_minutes budget spent so far, by rank 0's clock; kept across --resume, so
        # the budget and the time-aware learning-rate schedule cover the whole run.
        self.elapsed_s = 0.0

    # ---- state -----------------------------------------------------------------------------------------
    def _training_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "data_generator": self.data_generator.get_state(),  # the data position
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "train_config": config_to_dict(self.cfg),
            "stale_evals": self.stale_evals,
            "elapsed_s": self.elapsed_s,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _resume(self) -> None:
        latest = self.checkpoints.latest()
        load_weights(self.model, latest)
        state = load_training_state(latest)
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.stale_evals = int(state.get("stale_evals", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        best = self.checkpoints.best_metadata().get(self.cfg.best_metric)
        self.best_score = None if best is None else float(best)

    # ---- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over the task's fixed validation batches, split across processes."""
        self.model.eval()
        batches = self.task.val_batches(self.cfg.eval_batches, self.ctx.rank, self.ctx.world_size)
        total = torch.zeros(2, device=self.ctx.device)  # (sum of losses, number of batches)
        with _autocast(self.ctx.device, self.cfg.dtype):
            for batch in batches:
                total[0] += self.task.loss(self.model, self._to_device(batch)).float()
                total[1] += 1
        if self.ctx.enabled:
            dist.all_reduce(total)
        self.model.train()
        return float(total[0] / total[1])

    def validation_metrics(self) -> dict[str, float]:
        """val_loss and val_ppl, plus whatever the task's optional `validation_metrics` adds."""
        val_loss = self.evaluate()
        metrics = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
        extra = getattr(self.task, "validation_metrics", None)
        if extra is not None:
            self.model.eval()
            try:
                metrics.update(extra(self.model))
            finally:
                self.model.train()
        if self.cfg.best_metric not in metrics:
            raise GenloomError(
                f"best metric {self.cfg.best_metric!r} is not measured here; choose from: {', '.join(metrics)}"
            )
        return metrics

    def _validate_and_save(self, result: TrainResult) -> bool:
        """Validate, checkpoint, update best/; True when patience has run out."""
        metrics = self.validation_metrics()
        score = metrics[self.cfg.best_metric]
        is_best = is_improvement(self.cfg.best_metric, score, self.best_score)
        if is_best:
            self.best_score, self.stale_evals = score, 0
            result.best = {"step": self.step, **metrics}
        else:
            self.stale_evals += 1
        result.val_loss = metrics["val_loss"]
        result.val_losses.append((self.step, metrics["val_loss"]))
        shown = ", ".join(f"{k.removeprefix('val_').replace('ppl', 'perplexity')} {v:.4g}" for k, v in metrics.items())
        self._bar.write(f"step {self.step}: val {shown}" + (" (best)" if is_best else ""))
        if self.ctx.is_main:
            self._metrics.write({"step": self.step, **metrics})
            self.checkpoints.save(
                self.step, self.model, self.task.family, self.task.model_config, self.task.tokenizer,
                self._training_state(), metrics, is_best,
            )
        if self.ctx.enabled:
            dist.barrier()
        return self.cfg.patience > 0 and self.stale_evals >= self.cfg.patience

    def _clear_earlier_run(self) -> None:
        """Rank 0 refuses or deletes an earlier run's checkpoints; every process learns the outcome, so under
        torchrun all of them stop with the error instead of waiting for rank 0 forever."""
        error: GenloomError | None = None
        if self.ctx.is_main:
            try:
                self.checkpoints.clear(self.cfg.overwrite)
            except GenloomError as e:
                error = e
        if self.ctx.enabled:
            failed = torch.tensor(float(error is not None), device=self.ctx.device)
            dist.broadcast(failed, src=0)  # also a barrier: nobody writes while rank 0 may still be deleting
            if bool(failed) and error is None:
                error = GenloomError(f"{self.run_dir} holds checkpoints of an earlier run (see the first process)")
        if error is not None:
            raise error

    def _time_fraction(self, started: float, elapsed_before: float) -> float:
        """Share of the time budget spent (0 without one). Under torchrun rank 0's clock decides, so every rank
        uses the same learning rate and all stop together."""
        if self.cfg.max_minutes <= 0:
            return 0.0
        elapsed = torch.tensor(elapsed_before + time.perf_counter() - started, dtype=torch.float64)
        if self.ctx.enabled:
            elapsed = elapsed.to(self.ctx.device)
            dist.broadcast(elapsed, src=0)
        self.elapsed_s = float(elapsed)
        return self.elapsed_s / (60 * self.cfg.max_minutes)

    def _to_device(self, batch: Batch) -> list[Tensor]:
        return [t.to(self.ctx.device, non_blocking=True) for t in batch]

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if resume:
            self._resume()
        else:
            self._clear_earlier_run()
        metrics = MetricsLog(self.run_dir)
        if ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics.truncate_after(self.step)

        ddp = DistributedDataParallel(self.model) if ctx.enabled else None
        train_model: nn.Module = ddp if ddp is not None else self.model
        if cfg.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.dtype == "fp16")
        self.model.train()

        result = TrainResult(step=self.step, val_loss=None, run_dir=self.run_dir)
        self._metrics = metrics
        self._bar = bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
            disable=not (ctx.is_main and cfg.progress),
        )
        started, elapsed_before = time.perf_counter(), self.elapsed_s
        time_fraction = self._time_fraction(started, elapsed_before)
        interval_loss, interval_tokens, interval_time = 0.0, 0, 0.0
        while self.step < cfg.max_steps:
            self.step += 1
            t0 = time.perf_counter()
            lr = learning_rate(self.step, cfg, time_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            micro = self.task.micro_batches(self.data_generator, ctx.rank, ctx.world_size, cfg.grad_accum)
            step_loss = torch.zeros((), device=ctx.device)
            tokens = 0
            for i, batch in enumerate(micro):
                # Gradients are all-reduced only on the last micro-batch of the step.
                sync = ddp.no_sync() if ddp is not None and i < len(micro) - 1 else contextlib.nullcontext()
                with sync, _autocast(ctx.device, cfg.dtype):
                    loss = self.task.loss(train_model, self._to_device(batch)) / len(micro)
                scaler.scale(loss).backward()
                step_loss += loss.detach().float()
                tokens += self.task.count_tokens(batch)
            if cfg.grad_clip > 0:
                scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            scaler.step(self.optimizer)
            scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if ctx.enabled:
                dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise GenloomError(f"loss became {loss_value} at step {self.step}; lower --lr or use fp32/bf16")
            interval_time += time.perf_counter() - t0
            interval_loss += loss_value
            interval_tokens += tokens * ctx.world_size
            result.train_losses.append(loss_value)
            bar.update(1)

            time_fraction = self._time_fraction(started, elapsed_before)  # for this check and the next step's lr
            out_of_time = time_fraction >= 1.0
            last = self.step == cfg.max_steps or out_of_time
            if self.step % cfg.log_interval == 0 or last:
                n = cfg.log_interval if self.step % cfg.log_interval == 0 else self.step % cfg.log_interval
                tokens_per_s = interval_tokens / max(interval_time, 1e-9)
                bar.set_postfix(loss=f"{interval_loss / n:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                if ctx.is_main:
                    metrics.write({
                        "step": self.step, "loss": interval_loss / n, "lr": lr,
                        "tokens_per_s": tokens_per_s, "step_ms": 1000 * interval_time / n,
                    })
                interval_loss, interval_tokens, interval_time = 0.0, 0, 0.0

            if (self.step % cfg.eval_interval == 0 or last) and self._validate_and_save(result):
                result.stop_reason = "early_stopping"
                bar.write(f"early stopping: no better {cfg.best_metric} in {cfg.patience} validations")
                break
            if out_of_time:
                result.stop_reason = "time_limit"
                bar.write(f"time limit: stopping after {cfg.max_minutes:g} minutes at step {self.step}")
                break
        bar.close()
        result.step = self.step
        if not result.best:
            result.best = self.checkpoints.best_metadata() if ctx.is_main else {}
        return result
