"""The EMA of the weights: hand-computed updates with warmup, swapped in for validation, saved, resumed, loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from train_helpers import interrupt_at

from genloom.checkpoint import BEST_DIR, EMA_FILE, MODEL_FILE, list_checkpoints, read_weights
from genloom.models.gpt import GPT
from genloom.registry import load_language_model
from genloom.train.config import TrainConfig
from genloom.train.ema import ExponentialMovingAverage
from genloom.train.lm import LanguageModelTask
from genloom.train.trainer import Trainer


def test_update_matches_a_hand_computation_with_warmup() -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ExponentialMovingAverage(model, decay=0.5)
    expected = 1.0
    for n, value in enumerate([3.0, 5.0, -1.0, 7.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.1818.., 0.25, 0.3077.. : the warmup, below the cap
        expected = d * expected + (1 - d) * value
        assert float(ema.shadow["weight"]) == pytest.approx(expected)
    with ema.applied(model):
        assert float(model.weight.detach()) == pytest.approx(expected)
    assert float(model.weight.detach()) == 7.0  # the trained weights come back
    assert ema.decay_at(1000) == 0.5


def _cfg(out: Path, **overrides: object) -> TrainConfig:
    settings: dict[str, object] = dict(out_dir=str(out), max_steps=12, batch_size=4, lr=3e-3, warmup_steps=2,
                                       eval_interval=6, eval_batches=2, log_interval=3, device="cpu", progress=False,
                                       ema_decay=0.9)
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _fit(corpus, config, cfg: TrainConfig, resume: bool = False, stop_at: int | None = None):
    torch.manual_seed(0)
    model = GPT(config)
    task = LanguageModelTask(config, corpus.tokenizer, corpus, cfg.batch_size)
    if stop_at is not None:
        interrupt_at(task, stop_at)
    trainer = Trainer(task, model, cfg)
    return trainer, trainer.fit(resume=resume)


def test_validation_and_best_use_the_average_and_checkpoints_keep_both(corpus, tiny_config, tmp_path) -> None:
    trainer, result = _fit(corpus, tiny_config, _cfg(tmp_path / "run"))
    last = list_checkpoints(tmp_path / "run")[-1]
    trained, averaged = read_weights(last / MODEL_FILE), read_weights(last / EMA_FILE)
    name = "transformer.blocks.0.attn.qkv_proj.weight"
    assert not torch.equal(trained[name], averaged[name])
    assert torch.equal(trained[name], trainer.model.state_dict()[name])
    # The validation loss logged is the averaged model's.
    assert trainer.ema is not None
    with trainer.ema.applied(trainer.model):
        assert trainer.evaluate() == pytest.approx(result.val_loss, abs=1e-6)
    # best/ holds the averaged weights as its model, and inference loads the average of a step checkpoint too.
    best = read_weights(tmp_path / "run" / BEST_DIR / MODEL_FILE)
    assert not (tmp_path / "run" / BEST_DIR / EMA_FILE).exists()
    best_step = tmp_path / "run" / f"checkpoint-{int(result.best['step']):07d}"  # 6 or 12: both are kept
    assert torch.equal(best[name], read_weights(best_step / EMA_FILE)[name])
    model, _ = load_language_model(last)
    assert torch.equal(model.state_dict()[name], averaged[name])


def test_a_resumed_run_continues_the_average_exactly(corpus, tiny_config, tmp_path) -> None:
    full, _ = _fit(corpus, tiny_config, _cfg(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        _fit(corpus, tiny_config, _cfg(tmp_path / "cut"), stop_at=9)
    resumed, _ = _fit(corpus, tiny_config, _cfg(tmp_path / "cut"), resume=True)
    assert full.ema is not None and resumed.ema is not None and resumed.ema.updates == 12
    for name, shadow in full.ema.shadow.items():
        assert torch.equal(resumed.ema.shadow[name], shadow), name
