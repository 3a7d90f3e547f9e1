"""The optional hooks of the Task contract: metric directions, per-step hooks and state kept across --resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from torch import nn
from train_helpers import interrupt_at

from genloom.checkpoint import BEST_DIR, read_checkpoint_config
from genloom.models.gpt import GPT
from genloom.train.config import TrainConfig
from genloom.train.lm import LanguageModelTask
from genloom.train.task import BUILT_IN_GOALS, Goal, Task, is_improvement
from genloom.train.trainer import Trainer


class HookedTask(LanguageModelTask):
    """Reports a scripted `fid` (lower is better), counts its steps and keeps the count as task state."""

    metric_goals: ClassVar[dict[str, Goal]] = {"fid": "min"}

    def __init__(self, *args: Any, fids: list[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fids = iter(fids)
        self.steps_seen: list[int] = []
        self.count = 0

    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"fid": next(self.fids)}

    def after_step(self, model: nn.Module, step: int) -> None:
        assert model.training
        self.steps_seen.append(step)
        self.count += 1

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])


def _cfg(out: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = dict(out_dir=str(out), max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2,
                                       eval_interval=4, eval_batches=1, device="cpu", progress=False,
                                       best_metric="fid")
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _task(corpus, config, fids: list[float]) -> HookedTask:
    return HookedTask(config, corpus.tokenizer, corpus, 4, fids=fids)


def test_a_lower_is_better_metric_picks_best_by_its_declared_direction(corpus, tiny_config, tmp_path) -> None:
    task = _task(corpus, tiny_config, [30.0, 10.0, 20.0])
    result = Trainer(task, GPT(tiny_config), _cfg(tmp_path / "run")).fit()
    # Under the old name-guessing, `fid` would have counted as better when higher (best at step 4).
    assert result.best["step"] == 8 and read_checkpoint_config(tmp_path / "run" / BEST_DIR)["fid"] == 10.0


def test_after_step_runs_every_step_and_task_state_survives_resume(corpus, tiny_config, tmp_path) -> None:
    task = interrupt_at(_task(corpus, tiny_config, [3.0, 2.0, 1.0]), 7)
    with pytest.raises(KeyboardInterrupt):
        Trainer(task, GPT(tiny_config), _cfg(tmp_path / "run")).fit()
    assert task.steps_seen == [1, 2, 3, 4, 5, 6]  # type: ignore[attr-defined]
    resumed = _task(corpus, tiny_config, [2.0, 1.0])
    Trainer(resumed, GPT(tiny_config), _cfg(tmp_path / "run")).fit(resume=True)
    assert resumed.steps_seen == [5, 6, 7, 8, 9, 10, 11, 12]  # from checkpoint-4
    assert resumed.count == 12  # 4 before the checkpoint (its saved state) + 8 after


def test_goals_and_improvement() -> None:
    assert BUILT_IN_GOALS == {"val_loss": "min", "val_ppl": "min"}
    assert is_improvement("min", 1.0, 2.0) and not is_improvement("max", 1.0, 2.0) and is_improvement("max", 0.0, None)
    assert Task.metric_goals == {}
