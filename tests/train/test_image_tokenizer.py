"""Image-tokenizer training: batches, input checks, metrics, and short real runs through the shared Trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import interrupt_at

from genloom.checkpoint import BEST_DIR, list_checkpoints, read_checkpoint_config
from genloom.data.images import to_unit_range
from genloom.errors import GenloomError
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.registry import load_pretrained
from genloom.train.config import TrainConfig
from genloom.train.image_tokenizer import ImageTokenizerTask, psnr, train_image_tokenizer
from genloom.train.trainer import Trainer

OVERRIDES: dict[str, object] = dict(
    resolution=16, widths=(8, 16), res_blocks=1, norm_groups=4, codebook_size=32, code_dim=4, dead_code_steps=10
)


def _squares(n: int, seed: int, size: int = 16) -> np.ndarray:
    """uint8 (n, size, size, 3): a flat background with one rectangle of another colour."""
    rng = np.random.default_rng(seed)
    palette = np.array([[230, 30, 30], [30, 200, 30], [40, 40, 230], [240, 240, 240], [20, 20, 20], [250, 200, 0]])
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        back, front = rng.choice(len(palette), 2, replace=False)
        images[i] = palette[back]
        y, x = rng.integers(0, size - 6, 2)
        h, w = rng.integers(4, 7, 2)
        images[i, y : y + h, x : x + w] = palette[front]
    return images


TRAIN, VAL = _squares(64, seed=0), _squares(16, seed=1)


def _config(out: Path, **overrides) -> TrainConfig:
    settings = dict(out_dir=str(out), max_steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=3,
                    weight_decay=0.0, eval_interval=10, eval_batches=2, log_interval=5, device="cpu", progress=False)
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _task(batch_size: int = 8) -> ImageTokenizerTask:
    return ImageTokenizerTask(VQConfig(**OVERRIDES), TRAIN, VAL, batch_size)  # type: ignore[arg-type]


def test_batches_are_unit_range_images_split_across_processes() -> None:
    task = _task(batch_size=4)
    assert task.tokenizer is None and task.family == "vqvae"
    state = torch.Generator().manual_seed(3).get_state()

    def draw(rank: int, world: int, n: int) -> list[torch.Tensor]:
        g = torch.Generator()
        g.set_state(state)
        return [b[0] for b in task.micro_batches(g, rank, world, n)]

    one = draw(0, 1, 4)
    assert [tuple(b.shape) for b in one] == [(4, 3, 16, 16)] * 4
    assert one[0].dtype == torch.float32 and one[0].min() >= -1 and one[0].max() <= 1
    # Two processes with two micro-batches each see the four batches of one process.
    assert all(torch.equal(a, b) for a, b in zip(one, draw(0, 2, 2) + draw(1, 2, 2), strict=True))
    assert task.count_tokens((one[0],)) == 4  # images
    # Pixel values survive the round trip: uint8 -> [-1, 1] -> uint8.
    index = int(torch.nonzero((to_unit_range(task.train) == one[0][0]).flatten(1).all(1))[0])
    restored = ((one[0][0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(restored, TRAIN[index])
    # Validation: the same fixed batches however many processes share them.
    whole = [b[0] for b in task.val_batches(3, 0, 1)]
    split = [b[0] for r in (0, 1) for b in task.val_batches(3, r, 2)]
    assert len(whole) == 3 and sorted(t.sum().item() for t in whole) == sorted(t.sum().item() for t in split)
    assert torch.equal(torch.cat(whole), to_unit_range(task.val[:12]))


def test_bad_images_are_user_errors() -> None:
    config = VQConfig(**OVERRIDES)  # type: ignore[arg-type]
    with pytest.raises(GenloomError, match="training images are 32x32 but the model's resolution is 16x16"):
        ImageTokenizerTask(config, _squares(4, 0, size=32), VAL, 4)
    with pytest.raises(GenloomError, match="validation images must be a uint8 numpy array, got float32"):
        ImageTokenizerTask(config, TRAIN, VAL.astype(np.float32), 4)
    with pytest.raises(GenloomError, match=r"shape \(N, H, W, 3\), got \(16, 16, 16\)"):
        ImageTokenizerTask(config, TRAIN, VAL[..., 0], 4)
    with pytest.raises(GenloomError, match="no validation images"):
        ImageTokenizerTask(config, TRAIN, VAL[:0], 4)


def test_psnr_on_the_unit_scale() -> None:
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[0] += 0.2  # 0.1 on [0, 1]: MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(a, b)[0], torch.tensor(20.0))
    assert float(psnr(a, b)[1]) == pytest.approx(100.0)  # identical: capped at MSE 1e-10


def test_validation_metrics_read_and_reset_codebook_usage() -> None:
    torch.manual_seed(0)
    task = _task()
    model = VQVAE(task.model_config)
    (images,) = task.micro_batches(torch.Generator().manual_seed(0), 0, 1, 1)[0]
    model(images)  # one training forward: 8 images x 8 x 8 positions counted
    assert model.quantizer.codebook_stats().assignments == 8 * 64
    model.eval()
    metrics = task.validation_metrics(model)
    assert set(metrics) == {"psnr", "val_mse", "codebook_usage", "codebook_perplexity"}
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["codebook_perplexity"] <= 32
    with torch.no_grad():
        reconstruction = model(to_unit_range(task.val))[0].clamp(-1, 1)
    expected_mse = float((reconstruction - to_unit_range(task.val)).pow(2).mean())
    assert metrics["val_mse"] == pytest.approx(expected_mse, rel=1e-5)
    assert metrics["psnr"] == pytest.approx(float(psnr(to_unit_range(task.val), reconstruction).mean()), rel=1e-5)
    assert model.quantizer.codebook_stats().assignments == 0  # read and reset; validation counted nothing
    assert task.validation_metrics(model)["codebook_usage"] == 0.0


def test_training_lowers_reconstruction_error_and_the_checkpoint_loads_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    torch.manual_seed(0)
    untrained = VQVAE(VQConfig(**OVERRIDES)).eval()  # type: ignore[arg-type]
    before = _task().validation_metrics(untrained)
    model, result = train_image_tokenizer(TRAIN, VAL, "vq-tiny", _config(run, best_metric="psnr"), OVERRIDES)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "psnr" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["val_mse"] < 0.7 * before["val_mse"] and evals[-1]["psnr"] > before["psnr"] + 1.5
    assert result.train_losses[-1] < 0.5 * result.train_losses[0]
    assert all(0 < r["codebook_usage"] <= 1 and r["codebook_perplexity"] >= 1 for r in evals)
    assert read_checkpoint_config(run / BEST_DIR)["psnr"] == max(r["psnr"] for r in evals)  # higher is better

    last = list_checkpoints(run)[-1]
    assert last.name == "checkpoint-0000030" and not (last / "tokenizer.json").exists()
    loaded = load_pretrained(last)
    assert loaded.family == "vqvae" and loaded.tokenizer is None and isinstance(loaded.model, VQVAE)
    assert loaded.config == model.config and loaded.config.resolution == 16
    model.eval()
    images = to_unit_range(torch.from_numpy(VAL).permute(0, 3, 1, 2))
    codes = model.encode(images)
    assert torch.equal(loaded.model.encode(images), codes)
    with torch.no_grad():
        assert torch.equal(loaded.model.decode(codes), model.decode(codes))


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path: Path) -> None:
    full_model, full = train_image_tokenizer(TRAIN, VAL, "vq-tiny", _config(tmp_path / "full", max_steps=20), OVERRIDES)

    cfg = _config(tmp_path / "cut", max_steps=20)
    config = VQConfig(**OVERRIDES)  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed)
    task = interrupt_at(ImageTokenizerTask(config, TRAIN, VAL, cfg.batch_size), 13)
    with pytest.raises(KeyboardInterrupt):
        Trainer(task, VQVAE(config), cfg).fit()
    # The saved model config wins on resume: a different preset name is ignored.
    resumed_model, resumed = train_image_tokenizer(TRAIN, VAL, "vq-small", cfg, resume=True)

    assert resumed.train_losses == full.train_losses[10:]  # bit-identical on CPU, codebook EMA included
    assert resumed.val_loss == full.val_loss
    for key, value in full_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key


def test_resume_of_another_family_is_a_user_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_image_tokenizer(TRAIN, VAL, "vq-tiny", _config(run, max_steps=2, eval_interval=2), OVERRIDES)
    raw = json.loads((list_checkpoints(run)[-1] / "config.json").read_text())
    (list_checkpoints(run)[-1] / "config.json").write_text(json.dumps({**raw, "family": "gpt"}))
    with pytest.raises(GenloomError, match="holds a gpt model, not a vqvae model"):
        train_image_tokenizer(TRAIN, VAL, "vq-tiny", _config(run), resume=True)
