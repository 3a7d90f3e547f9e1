"""The shared training loop: resume equivalence, checkpoints, accumulation, schedules, optimizer groups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from train_helpers import Killed, interrupt_at

from genloom.checkpoint import BEST_DIR, list_checkpoints, read_checkpoint_config, save_checkpoint
from genloom.data.text import TokenArrays
from genloom.errors import GenloomError
from genloom.models.gpt import GPT, GPTConfig
from genloom.train.config import TrainConfig
from genloom.train.lm import LanguageModelTask
from genloom.train.optim import learning_rate, make_optimizer
from genloom.train.task import Goal
from genloom.train.trainer import Trainer, TrainResult


def _config(out: Path, **overrides) -> TrainConfig:
    settings = dict(out_dir=str(out), max_steps=20, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3,
                    eval_interval=5, eval_batches=2, log_interval=1, device="cpu", progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _train(corpus: TokenArrays, model_config: GPTConfig, cfg: TrainConfig, resume: bool = False) -> TrainResult:
    torch.manual_seed(0)  # same initial weights for every run
    task = LanguageModelTask(model_config, corpus.tokenizer, corpus, cfg.batch_size)
    return Trainer(task, GPT(model_config), cfg).fit(resume=resume)


def test_interrupted_and_resumed_run_matches_uninterrupted(corpus, tiny_config, tmp_path):
    model_config = GPTConfig(**{**tiny_config.__dict__, "dropout": 0.1})  # dropout makes RNG state matter
    full = _train(corpus, model_config, _config(tmp_path / "full"))

    cfg = _config(tmp_path / "cut")
    torch.manual_seed(0)
    task = interrupt_at(LanguageModelTask(model_config, corpus.tokenizer, corpus, cfg.batch_size), 13)
    with pytest.raises(KeyboardInterrupt):
        Trainer(task, GPT(model_config), cfg).fit()
    resumed = _train(corpus, model_config, cfg, resume=True)  # continues from checkpoint-10

    assert resumed.train_losses == full.train_losses[10:]  # bit-identical on CPU
    assert resumed.val_loss == full.val_loss
    steps = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in steps if s <= 20]
    assert sorted(set(train_steps)) == list(range(1, 21))  # steps 11-12 of the first run were not kept twice
    assert steps.count(10) == 2  # one train record and one val record


def test_resume_without_checkpoint_is_a_user_error(corpus, tiny_config, tmp_path):
    with pytest.raises(GenloomError, match="no checkpoint to resume"):
        _train(corpus, tiny_config, _config(tmp_path / "empty"), resume=True)


def test_keeps_last_n_checkpoints_and_the_best(corpus, tiny_config, tmp_path):
    result = _train(corpus, tiny_config, _config(tmp_path / "run", keep_last=2))
    names = [p.name for p in list_checkpoints(tmp_path / "run")]
    assert names == ["checkpoint-0000015", "checkpoint-0000020"]
    best = read_checkpoint_config(tmp_path / "run" / BEST_DIR)
    assert best["val_loss"] == min(loss for _, loss in result.val_losses)
    assert not (tmp_path / "run" / BEST_DIR / "training_state.pt").exists()


def test_crash_mid_save_keeps_the_previous_checkpoint(corpus, tiny_config, tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    model = GPT(tiny_config)
    save_checkpoint(target, model, "gpt", tiny_config, corpus.tokenizer, metadata={"step": 1})
    before = (target / "model.safetensors").read_bytes()

    def crash(directory: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(corpus.tokenizer, "save", crash)
    with torch.no_grad():
        model.token_embedding.weight.add_(1.0)
    with pytest.raises(GenloomError, match=r"^cannot write checkpoint .*ckpt: disk full$"):
        save_checkpoint(target, model, "gpt", tiny_config, corpus.tokenizer, metadata={"step": 2})
    assert (target / "model.safetensors").read_bytes() == before
    assert read_checkpoint_config(target)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ckpt"]  # no temporary directory left


def test_gradient_accumulation_matches_one_large_batch(corpus, tiny_config, tmp_path):
    big = _train(corpus, tiny_config, _config(tmp_path / "big", batch_size=8, max_steps=6))
    accumulated = _train(corpus, tiny_config, _config(tmp_path / "acc", batch_size=4, grad_accum=2, max_steps=6))
    assert accumulated.train_losses == pytest.approx(big.train_losses, abs=1e-5)


def test_training_reduces_loss(corpus, tiny_config, tmp_path):
    result = _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=60, eval_interval=60))
    assert result.val_loss is not None
    assert result.val_loss < 0.75 * result.train_losses[0]


def test_learning_rate_schedules():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    assert learning_rate(50, cfg) == pytest.approx(5e-4)
    assert learning_rate(100, cfg) == pytest.approx(1e-3)
    assert learning_rate(550, cfg) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert learning_rate(1000, cfg) == pytest.approx(1e-4)
    inv = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, schedule="inverse_sqrt")
    assert max(learning_rate(s, inv) for s in range(1, 1001)) == pytest.approx(1e-3)
    assert learning_rate(400, inv) == pytest.approx(1e-3 * (100 / 400) ** 0.5)


def test_cosine_follows_the_time_budget_when_it_ends_first():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4, max_minutes=1.0)
    assert learning_rate(200, cfg, time_fraction=0.5) == pytest.approx(5.5e-4)  # half the time: half the cosine
    assert learning_rate(200, cfg, time_fraction=1.0) == pytest.approx(1e-4)
    assert learning_rate(550, cfg, time_fraction=0.1) == pytest.approx(5.5e-4)  # steps ending first still decide


def test_weight_decay_only_on_matrices(tiny_config):
    model = GPT(tiny_config)
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1), "cpu")
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_parameters()


def test_invalid_train_config_values():
    with pytest.raises(ValueError, match="max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)


class ScriptedMetricTask(LanguageModelTask):
    """Reports a scripted `score` at each validation, to drive best/ selection and early stopping."""

    metric_goals: ClassVar[dict[str, Goal]] = {"score": "max"}

    def __init__(self, *args, scores: list[float], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scores = iter(scores)

    def validation_metrics(self, model):
        return {"score": next(self.scores)}


def test_best_metric_picks_best_and_patience_stops_early(corpus, tiny_config, tmp_path):
    cfg = _config(tmp_path / "run", max_steps=100, eval_interval=5, best_metric="score", patience=2)
    torch.manual_seed(0)
    task = ScriptedMetricTask(tiny_config, corpus.tokenizer, corpus, cfg.batch_size, scores=[1.0, 3.0, 2.0, 2.5, 9.0])
    result = Trainer(task, GPT(tiny_config), cfg).fit()

    # score is maximized (only losses are minimized): best at step 10, then two validations without progress.
    assert result.stop_reason == "early_stopping"
    assert result.step == 20
    assert result.best["step"] == 10 and result.best["score"] == 3.0
    assert read_checkpoint_config(tmp_path / "run" / BEST_DIR)["score"] == 3.0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["score"] for m in logged if "score" in m] == [1.0, 3.0, 2.0, 2.5]


def test_unknown_best_metric_is_a_user_error(corpus, tiny_config, tmp_path):
    with pytest.raises(GenloomError, match="best metric 'bleu' is not measured"):
        _train(corpus, tiny_config, _config(tmp_path / "run", best_metric="bleu"))


def test_time_limit_stops_validates_and_saves(corpus, tiny_config, tmp_path, monkeypatch):
    clock = iter(float(t) for t in range(10**6))  # every perf_counter() call is one second later
    monkeypatch.setattr("genloom.train.trainer.time.perf_counter", lambda: next(clock))
    result = _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=1000, eval_interval=500,
                                                  max_minutes=0.5))
    assert result.stop_reason == "time_limit"
    assert 1 < result.step < 30
    assert result.val_losses[-1][0] == result.step  # the last step was validated and saved
    assert list_checkpoints(tmp_path / "run")[-1].name == f"checkpoint-{result.step:07d}"
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [m["lr"] for m in logged if "lr" in m]
    assert lrs[-1] == pytest.approx(3e-4, rel=0.15)  # the cosine ran down to min_lr with the time budget


def test_resume_continues_the_time_budget(corpus, tiny_config, tmp_path, monkeypatch):
    clock = iter(float(t) for t in range(10**6))
    monkeypatch.setattr("genloom.train.trainer.time.perf_counter", lambda: next(clock))
    cfg = _config(tmp_path / "run", max_steps=1000, eval_interval=5, max_minutes=0.5)
    first = _train(corpus, tiny_config, cfg)
    resumed = _train(corpus, tiny_config, cfg, resume=True)
    assert first.stop_reason == resumed.stop_reason == "time_limit"
    assert resumed.step == first.step + 1  # the budget was already spent: one step, validated and saved


def test_fresh_run_refuses_an_earlier_runs_checkpoints_unless_overwrite(corpus, tiny_config, tmp_path):
    _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=10))
    with pytest.raises(GenloomError, match="earlier run; pass --resume"):
        _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=5))
    result = _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=5, overwrite=True))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-0000005"]
    assert read_checkpoint_config(tmp_path / "run" / BEST_DIR)["step"] == 5
    assert result.step == 5


TIMINGS = ("tokens_per_s", "step_ms")  # measured, so never equal between two runs


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.mark.parametrize("kill_at", [14, 17, 23])  # mid-interval, just after a logged row, after a checkpoint
def test_a_run_killed_anywhere_then_resumed_logs_exactly_the_uninterrupted_rows(
    corpus, tiny_config, tmp_path, kill_at: int
) -> None:
    """log_interval 4 against eval_interval 10: logged intervals straddle the checkpoints, so the part of an
    interval summed before a checkpoint must come back on --resume for the rows to match."""
    model_config = GPTConfig(**{**tiny_config.__dict__, "dropout": 0.1})
    settings = dict(max_steps=30, eval_interval=10, log_interval=4)
    _train(corpus, model_config, _config(tmp_path / "full", **settings))
    cfg = _config(tmp_path / "cut", **settings)
    torch.manual_seed(0)
    task = interrupt_at(LanguageModelTask(model_config, corpus.tokenizer, corpus, cfg.batch_size), kill_at, Killed)
    with pytest.raises(Killed):
        Trainer(task, GPT(model_config), cfg).fit()
    _train(corpus, model_config, cfg, resume=True)
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")  # train and val rows, every value


def test_resume_says_what_changed_and_when_there_is_nothing_to_do(corpus, tiny_config, tmp_path, capsys) -> None:
    _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=10))
    capsys.readouterr()
    result = _train(corpus, tiny_config, _config(tmp_path / "run", max_steps=10, lr=1e-3), resume=True)
    out = capsys.readouterr().out
    assert "changed settings, which apply from here on: lr 0.003 -> 0.001" in out
    assert "nothing to do" in out and "at step 10 and --steps is 10" in out
    assert result.stop_reason == "nothing_to_do" and result.step == 10


def test_a_loss_that_is_not_finite_is_one_line_with_a_fitting_hint(corpus, tiny_config, tmp_path) -> None:
    class Exploding(LanguageModelTask):
        def loss(self, model, batch):
            return super().loss(model, batch) * float("nan")

    for dtype, hint in (("fp32", "lower --lr$"), ("bf16", r"lower --lr or train in fp32 \(--dtype fp32\)$")):
        task = Exploding(tiny_config, corpus.tokenizer, corpus, 4)
        with pytest.raises(GenloomError, match=f"loss became nan at step 1; {hint}"):
            Trainer(task, GPT(tiny_config), _config(tmp_path / dtype, dtype=dtype)).fit()


def test_a_run_cleans_up_after_a_save_that_was_killed(corpus, tiny_config, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    _train(corpus, tiny_config, _config(run, max_steps=10))
    # What a kill between atomic_directory's steps leaves: a half-written copy, and best/ moved aside
    # for the instant between its two renames (so best/ itself is missing).
    (run / ".checkpoint-0000015.tmp-abc123").mkdir()
    (run / ".checkpoint-0000015.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    (run / "best").rename(run / ".best.old-xyz789")
    _train(corpus, tiny_config, _config(run, max_steps=12), resume=True)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert read_checkpoint_config(run / BEST_DIR)["step"] in (5, 10, 12)  # put back, then kept up to date
    assert "cleaned up .checkpoint-0000015.tmp-abc123" in capsys.readouterr().out


def test_a_failed_save_leaves_the_last_checkpoint_and_no_row_for_it(corpus, tiny_config, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _train(corpus, tiny_config, _config(run, max_steps=10))
    def disk_full(directory: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(corpus.tokenizer, "save", disk_full)
    with pytest.raises(GenloomError, match=r"cannot write checkpoint .*checkpoint-0000015: No space left on device"):
        _train(corpus, tiny_config, _config(run, max_steps=20), resume=True)
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-0000005", "checkpoint-0000010"]
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert steps == [5, 10]  # the validation of step 15 never completed: no row claims it did
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
