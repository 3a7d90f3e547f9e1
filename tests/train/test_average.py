"""Checkpoint averaging: the mean of the weights, the newest config and tokenizer, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from genloom.checkpoint import save_checkpoint
from genloom.cli import main
from genloom.errors import GenloomError
from genloom.models.gpt import GPT
from genloom.registry import load_pretrained
from genloom.train.average import average_checkpoints


def _run_with_checkpoints(tmp_path, corpus, tiny_config, n: int):
    run = tmp_path / "run"
    models = []
    for step in range(1, n + 1):
        torch.manual_seed(step)
        model = GPT(tiny_config)
        save_checkpoint(run / f"checkpoint-{step:07d}", model, "gpt", tiny_config, corpus.tokenizer,
                        training_state={"step": step}, metadata={"step": step})
        models.append(model)
    return run, models


def test_average_is_the_mean_of_the_last_n(tmp_path, corpus, tiny_config):
    run, models = _run_with_checkpoints(tmp_path, corpus, tiny_config, 4)
    used = average_checkpoints(run, 3, tmp_path / "avg")
    assert [p.name for p in used] == ["checkpoint-0000002", "checkpoint-0000003", "checkpoint-0000004"]
    loaded = load_pretrained(tmp_path / "avg")
    assert isinstance(loaded.model, GPT)
    for name, param in loaded.model.state_dict().items():
        expected = sum(m.state_dict()[name] for m in models[1:]) / 3
        torch.testing.assert_close(param, expected)
    assert loaded.model.lm_head.weight is loaded.model.token_embedding.weight  # still tied
    assert loaded.tokenizer.encode("Line 1") == corpus.tokenizer.encode("Line 1")
    assert not (tmp_path / "avg" / "training_state.pt").exists()
    assert set(load_file(str(tmp_path / "avg" / "model.safetensors"))) == set(
        load_file(str(used[-1] / "model.safetensors"))
    )


def test_too_few_checkpoints_is_a_user_error(tmp_path, corpus, tiny_config, capsys):
    run, _ = _run_with_checkpoints(tmp_path, corpus, tiny_config, 2)
    with pytest.raises(GenloomError, match="fewer than the 5"):
        average_checkpoints(run, 5, tmp_path / "avg")
    assert main(["average-checkpoints", str(run), "--last", "5", "--out", str(tmp_path / "avg")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--keep-last" in err


def test_cli_average(tmp_path, corpus, tiny_config, capsys):
    run, _ = _run_with_checkpoints(tmp_path, corpus, tiny_config, 2)
    assert main(["average-checkpoints", str(run), "--last", "2", "--out", str(tmp_path / "avg")]) == 0
    assert "checkpoint-0000001, checkpoint-0000002" in capsys.readouterr().out
