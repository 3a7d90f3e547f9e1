"""The one training loop. Each model family supplies a `Task` (see `genloom.train.task`): its batches and its loss.

Runs unchanged on one CPU, one GPU or many processes under `torchrun` (DistributedDataParallel). Every
process draws the same global batch from a shared seeded generator and takes its own slice, so N
processes with batch B see exactly what one process with batch N*B sees, and the averaged gradients match.

A run directory holds `checkpoint-NNNNNNN/` (the last `keep_last`), `best/`, `metrics.jsonl`, the run's data
record (`data.json`) and its components (sub-models such as a VQ image tokenizer, saved once at the start).
A resumed run continues bit for bit: weights, optimizer, RNG states, the data position, the EMA, the task's
own state, and the part of the logging interval summed before the checkpoint, so its `metrics.jsonl` rows
equal the uninterrupted run's (timings aside).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from genloom.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    CheckpointManager,
    Component,
    is_run_directory,
    load_training_state,
    load_weights,
    read_weights,
    remove_stale_temporaries,
    save_checkpoint,
)
from genloom.config import config_to_dict
from genloom.errors import GenloomError
from genloom.outputs import check_output_dir
from genloom.run_record import DATA_RECORD, write_data_record
from genloom.train.config import TrainConfig
from genloom.train.distributed import DistributedContext, init_distributed
from genloom.train.ema import ExponentialMovingAverage
from genloom.train.metrics import MetricsLog
from genloom.train.optim import learning_rate, make_optimizer
from genloom.train.task import Batch, Task, is_improvement, metric_goal

# Settings that may change on --resume without a note: where the run goes and how long it may run.
_RESUME_QUIET = frozenset({"out_dir", "progress", "overwrite", "device", "max_steps", "max_minutes"})


@dataclass
class TrainResult:
    step: int
    val_loss: float | None
    train_losses: list[float] = field(default_factory=list)  # one per optimizer step of this run
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    run_dir: Path = Path()
    stop_reason: str = "max_steps"  # max_steps | time_limit | early_stopping | nothing_to_do
    best: dict[str, float] = field(default_factory=dict)  # step and metrics of best/
    tokens_seen: int = 0  # counted by the task's `count_tokens`, over the whole run (--resume included)
    train_seconds: float = 0.0  # the run's training time, --resume included


@dataclass
class _Interval:
    """The train losses summed since the last logged row (kept in checkpoints, so a resumed run logs the same)."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype == "fp16" and device.type != "cuda":
        raise GenloomError("--dtype fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


class Trainer:
    """Trains `model` on `task` as `cfg` says, into the run directory `cfg.out_dir`.

    components: sub-models the run carries (saved once into the run directory under their names when a fresh
    run starts, and listed in every checkpoint's config, see `genloom.registry`); run_record: the run's data
    record (`data.json`), written when a fresh run starts (and on a resume that lacks one).
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        cfg: TrainConfig,
        ctx: DistributedContext | None = None,
        components: Mapping[str, Component] | None = None,
        run_record: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.cfg = cfg
        self.ctx = ctx or init_distributed(cfg.device)
        self.model = model.to(self.ctx.device)
        self.run_dir = Path(cfg.out_dir)
        self.checkpoints = CheckpointManager(self.run_dir, cfg.keep_last)
        self.components = dict(components or {})
        self.run_record = run_record
        self.optimizer = make_optimizer(self.model, cfg, self.ctx.device.type)
        self.ema = ExponentialMovingAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.data_generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        # Early stopping: the best value of cfg.best_metric so far and validations since it last improved.
        self.best_score: float | None = None
        self.stale_evals = 0
        # Seconds of the run's max_minutes budget spent so far, by rank 0's clock; kept across --resume, so
        # the budget and the time-aware learning-rate schedule cover the whole run.
        self.elapsed_s = 0.0
        self.tokens_seen = 0  # by every process, over the whole run
        self.interval = _Interval()
        self._metrics = MetricsLog(self.run_dir)
        self._bar: tqdm[Any] | None = None

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
            "tokens_seen": self.tokens_seen,
            "log_interval": {"loss": self.interval.loss, "steps": self.interval.steps},
            "task": self.task.state_dict(),
        }
        if self.ema is not None:
            state["ema_updates"] = self.ema.updates
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _resume(self) -> None:
        latest = self.checkpoints.latest()
        load_weights(self.model, latest, MODEL_FILE)
        state = load_training_state(latest)
        saved_config = state.get("train_config", {})
        changed = [f"{k} {saved_config[k]} -> {v}" for k, v in config_to_dict(self.cfg).items()
                   if k in saved_config and saved_config[k] != v and k not in _RESUME_QUIET]
        if changed:
            self._print(f"note: --resume with changed settings, which apply from here on: {', '.join(changed)}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise GenloomError(f"--resume: the optimizer state in {latest} does not fit this model: {e}") from None
        self.data_generator.set_state(state["data_generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.stale_evals = int(state.get("stale_evals", 0))
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        interval = state.get("log_interval", {})
        self.interval = _Interval(float(interval.get("loss", 0.0)), int(interval.get("steps", 0)))
        self.task.load_state_dict(state.get("task", {}))
        if self.ema is not None:
            if not (latest / EMA_FILE).is_file():
                raise GenloomError(f"--resume: {latest} has no {EMA_FILE}; the run was trained without --ema-decay")
            self.ema.load_state_dict(read_weights(latest / EMA_FILE), int(state.get("ema_updates", 0)))
        best = self.checkpoints.best_metadata().get(self.cfg.best_metric)
        self.best_score = None if best is None else float(best)

    # ---- the run directory ---------------------------------------------------------------------------------
    def _prepare_run_dir(self, resume: bool) -> None:
        """Rank 0 makes the run directory ready (refusing a foreign one, removing what a killed save left,
        clearing an earlier run with --overwrite, saving the components and the data record); every process
        learns the outcome, so under torchrun all of them stop with an error instead of waiting for rank 0."""
        error: GenloomError | None = None
        if self.ctx.is_main:
            try:
                self._prepare_as_main(resume)
            except GenloomError as e:
                error = e
        if self.ctx.enabled:
            failed = torch.tensor(float(error is not None), device=self.ctx.device)
            dist.broadcast(failed, src=0)  # also a barrier: nobody writes while rank 0 may still be deleting
            if bool(failed) and error is None:
                error = GenloomError(f"{self.run_dir} cannot be used for this run (see the first process)")
        if error is not None:
            raise error

    def _prepare_as_main(self, resume: bool) -> None:
        components = set(self.components)

        def is_own(directory: Path) -> bool:  # a run, or one killed after saving its components and before more
            return is_run_directory(directory) or {p.name for p in directory.iterdir()} <= components

        check_output_dir(self.run_dir, is_own, "a genloom run directory")
        for name in remove_stale_temporaries(self.run_dir):
            self._print(f"note: cleaned up {name}, left in {self.run_dir} by a save that was interrupted")
        if not resume:
            self.checkpoints.clear(self.cfg.overwrite)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # The record first: from here on the directory shows it is a run's, whatever happens next.
        if self.run_record is not None and not (resume and (self.run_dir / DATA_RECORD).exists()):
            write_data_record(self.run_dir, self.run_record)
        if not resume:
            for name, component in self.components.items():
                save_checkpoint(self.run_dir / name, component.model, component.family, component.config, None)

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

    def _validated_weights(self) -> contextlib.AbstractContextManager[None]:
        """The weights validation measures and best/ holds: the EMA's when the run keeps one."""
        return self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()

    def validation_metrics(self) -> dict[str, float]:
        """val_loss and (for a cross-entropy loss) val_ppl, plus whatever the task's `validation_metrics` adds."""
        with self._validated_weights():
            val_loss = self.evaluate()
            metrics = {"val_loss": val_loss}
            if self.task.loss_is_cross_entropy:
                metrics["val_ppl"] = math.exp(min(val_loss, 50))
            self.model.eval()
            try:
                metrics.update(self.task.validation_metrics(self.model))
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
        is_best = is_improvement(metric_goal(self.task, self.cfg.best_metric), score, self.best_score)
        if is_best:
            self.best_score, self.stale_evals = score, 0
            result.best = {"step": self.step, **metrics}
        else:
            self.stale_evals += 1
        result.val_loss = metrics["val_loss"]
        result.val_losses.append((self.step, metrics["val_loss"]))
        shown = ", ".join(f"{k.removeprefix('val_').replace('ppl', 'perplexity')} {v:.4g}" for k, v in metrics.items())
        self._print(f"step {self.step}: val {shown}" + (" (best)" if is_best else ""))
        if self.ctx.is_main:
            task, metadata = self.task, {**metrics, "components": {n: c.family for n, c in self.components.items()}}
            ema = self.ema.state_dict(self.model) if self.ema is not None else None
            self.checkpoints.save(self.step, self.model, task.family, task.model_config, task.tokenizer,
                                  self._training_state(), metadata, ema)
            if is_best:
                with self._validated_weights():
                    self.checkpoints.save_best(self.step, self.model, task.family, task.model_config,
                                               task.tokenizer, metadata)
            # Logged once its checkpoint is complete: a crash mid-save leaves no row a resume would not redo.
            self._metrics.write({"step": self.step, **metrics})
        if self.ctx.enabled:
            dist.barrier()
        return self.cfg.patience > 0 and self.stale_evals >= self.cfg.patience

    def _time_fraction(self, started: float, elapsed_before: float) -> float:
        """Share of the time budget spent (0 without one). Under torchrun rank 0's clock decides, so every rank
        uses the same learning rate and all stop together."""
        if self.cfg.max_minutes <= 0:  # no budget: the clock is kept for the record, no process waits on it
            self.elapsed_s = elapsed_before + time.perf_counter() - started
            return 0.0
        elapsed = torch.tensor(elapsed_before + time.perf_counter() - started, dtype=torch.float64)
        if self.ctx.enabled:
            elapsed = elapsed.to(self.ctx.device)
            dist.broadcast(elapsed, src=0)
        self.elapsed_s = float(elapsed)
        return self.elapsed_s / (60 * self.cfg.max_minutes)

    def _to_device(self, batch: Batch) -> list[Tensor]:
        return [t.to(self.ctx.device, non_blocking=True) for t in batch]

    def _print(self, line: str) -> None:
        """A line for the user, from rank 0 only, above the progress bar when there is one."""
        if not self.ctx.is_main:
            return
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def _not_finite(self, loss: float) -> GenloomError:
        hint = "lower --lr" if self.cfg.dtype == "fp32" else "lower --lr or train in fp32 (--dtype fp32)"
        return GenloomError(f"loss became {loss} at step {self.step}; {hint}")

    # ---- the loop --------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._prepare_run_dir(resume)
        if resume:
            self._resume()
        result = TrainResult(step=self.step, val_loss=None, run_dir=self.run_dir)
        if self.step >= cfg.max_steps:
            self._print(f"nothing to do: {self.run_dir} is at step {self.step} and --steps is {cfg.max_steps}; "
                        "raise --steps to train further")
            result.stop_reason = "nothing_to_do"
            result.tokens_seen, result.train_seconds = self.tokens_seen, self.elapsed_s
            result.best = self.checkpoints.best_metadata() if ctx.is_main else {}
            return result
        metrics = self._metrics
        if ctx.is_main:
            metrics.truncate_after(self.step)

        ddp = DistributedDataParallel(self.model) if ctx.enabled else None
        train_model: nn.Module = ddp if ddp is not None else self.model
        if cfg.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.dtype == "fp16")
        self.model.train()

        self._bar = bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
            disable=not (ctx.is_main and cfg.progress),
        )
        started, elapsed_before = time.perf_counter(), self.elapsed_s
        time_fraction = self._time_fraction(started, elapsed_before)
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
            if self.ema is not None:
                self.ema.update(self.model)
            self.task.after_step(self.model, self.step)
            if ctx.enabled:
                dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
            loss_value = float(step_loss)
            if not math.isfinite(loss_value):
                raise self._not_finite(loss_value)
            interval = self.interval
            interval.seconds += time.perf_counter() - t0
            interval.loss += loss_value
            interval.steps += 1
            interval.tokens += tokens * ctx.world_size
            self.tokens_seen += tokens * ctx.world_size
            result.train_losses.append(loss_value)
            bar.update(1)

            time_fraction = self._time_fraction(started, elapsed_before)  # for this check and the next step's lr
            out_of_time = time_fraction >= 1.0
            last = self.step == cfg.max_steps or out_of_time
            if self.step % cfg.log_interval == 0 or last:
                n = interval.steps
                tokens_per_s = interval.tokens / max(interval.seconds, 1e-9)
                bar.set_postfix(loss=f"{interval.loss / n:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                if ctx.is_main:
                    metrics.write({
                        "step": self.step, "loss": interval.loss / n, "lr": lr, "tokens": self.tokens_seen,
                        "tokens_per_s": tokens_per_s, "step_ms": 1000 * interval.seconds / max(1, n),
                    })
                self.interval = _Interval()

            if (self.step % cfg.eval_interval == 0 or last) and self._validate_and_save(result):
                result.stop_reason = "early_stopping"
                self._print(f"early stopping: no better {cfg.best_metric} in {cfg.patience} validations")
                break
            if out_of_time:
                result.stop_reason = "time_limit"
                self._print(f"time limit: stopping after {cfg.max_minutes:g} minutes at step {self.step}")
                break
        bar.close()
        self._bar = None
        result.step = self.step
        result.tokens_seen, result.train_seconds = self.tokens_seen, self.elapsed_s
        if not result.best:
            result.best = self.checkpoints.best_metadata() if ctx.is_main else {}
        return result
