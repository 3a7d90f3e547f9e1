"""Text-to-image training: precomputed codes, caption dropout, a short run that learns, saves and loads back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genloom.checkpoint import save_checkpoint
from genloom.data.builtin_images import builtin_images
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.errors import GenloomError
from genloom.generate.imagine import encode_images, imagine
from genloom.models.dalle import DalleConfig
from genloom.models.vq_colour import usable_blank_token
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.registry import IMAGE_TOKENIZER as IMAGE_TOKENIZER_DIR
from genloom.registry import load_pretrained, load_text_to_image_model
from genloom.train.config import TrainConfig
from genloom.train.text_to_image import TextToImageTask, train_text_to_image

VQ = VQConfig(resolution=16, widths=(8, 8, 8), res_blocks=1, norm_groups=4, codebook_size=32)  # 4x4 grid


@pytest.fixture(scope="module")
def shapes():
    return builtin_images("shapes", resolution=16, n=120).split(val_fraction=0.2)


def make_task(captions: list[str], p: float, batch_size: int = 8) -> TextToImageTask:
    tokenizer = train_caption_tokenizer(captions, 300)
    codec = CaptionCodec(tokenizer, 16)
    cfg = DalleConfig(text_vocab_size=tokenizer.vocab_size, text_len=16, image_vocab_size=32, grid_size=4,
                      d_model=32, n_layers=1, n_heads=2, d_ff=64, pad_id=codec.ids.pad)
    text = codec.encode(captions)
    codes = torch.arange(len(captions) * 16).view(-1, 16) % 32
    return TextToImageTask(cfg, tokenizer, text, codes, text[:4], codes[:4], batch_size, p)


def test_caption_dropout_rate_and_determinism() -> None:
    captions = [f"a red circle number {i}" for i in range(50)]
    task = make_task(captions, p=0.25)
    empty = task.empty_caption

    def draw(seed: int, rank: int = 0, world: int = 1, n_micro: int = 2) -> list:
        return task.micro_batches(torch.Generator().manual_seed(seed), rank, world, n_micro)

    generator = torch.Generator().manual_seed(0)
    batches = [b for _ in range(100) for b in task.micro_batches(generator, 0, 1, 2)]
    rows = torch.cat([text for text, _ in batches])
    dropped = (rows == empty).all(dim=1).float().mean().item()
    assert abs(dropped - 0.25) < 0.05, dropped
    # The same generator state gives the same batches, dropout included; codes stay paired with their images.
    for (t1, c1), (t2, c2) in zip(draw(5), draw(5), strict=True):
        assert torch.equal(t1, t2) and torch.equal(c1, c2)
    # Two processes see exactly the global batch of one process, each its own slice.
    whole = TextToImageTask(task.model_config, task.tokenizer, task.train_text, task.train_codes, task.val_text,
                            task.val_codes, 16, 0.25).micro_batches(torch.Generator().manual_seed(3), 0, 1, 1)[0]
    halves = [task.micro_batches(torch.Generator().manual_seed(3), r, 2, 1)[0] for r in range(2)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])
    # p = 0: no caption is ever dropped.
    none = make_task(captions, p=0.0).micro_batches(torch.Generator().manual_seed(0), 0, 1, 4)
    assert not any((text == empty).all(dim=1).any() for text, _ in none)


def test_task_rejects_bad_inputs() -> None:
    with pytest.raises(GenloomError, match="caption dropout"):
        make_task(["a red circle"], p=1.0)
    with pytest.raises(GenloomError, match="more than the model's 16"):
        make_task(["a red circle " * 20], p=0.1)


def test_encode_images_matches_vq(shapes) -> None:
    train, _, _ = shapes
    torch.manual_seed(0)
    vq = VQVAE(VQ).train()
    codes = encode_images(vq, train.images[:10], batch_size=4)
    assert codes.shape == (10, 16) and codes.dtype == torch.long
    assert vq.training  # left as it was
    assert torch.equal(codes, vq.eval().encode(train.to_tensor(range(10))).flatten(1))


TINY = {"d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 1}


@pytest.fixture(scope="module")
def short_run(shapes, tmp_path_factory):
    """(vq_dir, config, model, tokenizer, result) of a 40-step run on a random-weight VQ (encoding needs none)."""
    train, val, _ = shapes
    root = tmp_path_factory.mktemp("t2i")
    torch.manual_seed(0)
    vq_dir = root / "vq"
    save_checkpoint(vq_dir, VQVAE(VQ), "vqvae", VQ, None)
    # A constant schedule, so a 20-step run is the first half of the 40-step one (the resume check below).
    cfg = TrainConfig(out_dir=str(root / "run"), max_steps=40, batch_size=16, lr=3e-3, warmup_steps=5,
                      schedule="constant", eval_interval=20, eval_batches=2, log_interval=10,
                      progress=False, device="cpu")
    model, tokenizer, _, result = train_text_to_image(train, val, vq_dir, "dalle-tiny", cfg, vocab_size=300,
                                                      model_overrides=TINY)
    return vq_dir, cfg, model, tokenizer, result


def test_short_run_learns(shapes, short_run) -> None:
    train, val, _ = shapes
    _, _, model, tokenizer, result = short_run
    losses = result.train_losses
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < losses[0] - 0.5, (losses[0], losses[-5:])
    assert model.config.image_vocab_size == 32 and model.config.grid_size == 4
    assert model.config.text_len == max(len(tokenizer.encode(c)) for c in train.captions + val.captions) + 2


def test_best_metrics_are_the_best_checkpoints_own(shapes, short_run) -> None:
    """val_image_loss / val_image_accuracy as logged equal a recomputation with best/ on the validation set."""
    _, val, _ = shapes
    _, cfg, _, _, result = short_run
    loaded = load_text_to_image_model(Path(cfg.out_dir) / "best")
    codes = encode_images(loaded.vq, val.images)
    text = CaptionCodec(loaded.tokenizer, loaded.model.config.text_len).encode(val.captions)
    with torch.no_grad():
        _, logits = loaded.model(text, codes)  # (N, image_len, V)
    flat = logits.float().reshape(-1, logits.shape[-1])
    accuracy = float((flat.argmax(-1) == codes.reshape(-1)).float().mean())
    loss = float(torch.nn.functional.cross_entropy(flat, codes.reshape(-1)))
    assert result.best["val_image_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert result.best["val_image_loss"] == pytest.approx(loss, rel=1e-5)


def test_the_run_loads_back_with_its_image_tokenizer_and_samples(shapes, short_run) -> None:
    train, _, _ = shapes
    _, cfg, model, _, _ = short_run
    run = Path(cfg.out_dir)
    assert (run / IMAGE_TOKENIZER_DIR / "model.safetensors").is_file()  # the VQ model travels with the run
    loaded = load_text_to_image_model(run)
    assert load_pretrained(run).family == "dalle"
    model.eval()
    for name, p in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], p)
    images, codes = imagine(loaded.model, loaded.tokenizer, loaded.vq, [train.captions[0]], n_images=2, seed=0,
                            guidance_scale=2.0, progress=False)
    assert images.shape == (2, 16, 16, 3) and codes.shape == (2, 4, 4)


def test_resume_continues_exactly_from_the_runs_vq_copy(shapes, short_run, tmp_path) -> None:
    train, val, _ = shapes
    vq_dir, cfg, _, _, result = short_run
    half = TrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "half"), "max_steps": 20})
    train_text_to_image(train, val, vq_dir, "dalle-tiny", half, vocab_size=300, model_overrides=TINY)
    rest = TrainConfig(**{**half.__dict__, "max_steps": 40})
    *_, resumed = train_text_to_image(train, val, None, "dalle-tiny", rest, resume=True)  # no VQ path needed
    np.testing.assert_allclose(resumed.train_losses, result.train_losses[20:], rtol=1e-5)


def test_a_fresh_run_is_refused_and_a_missing_image_tokenizer_named(shapes, short_run, tmp_path) -> None:
    train, val, _ = shapes
    vq_dir, cfg, *_ = short_run
    run = tmp_path / "copy"
    shutil.copytree(cfg.out_dir, run)
    again = TrainConfig(**{**cfg.__dict__, "out_dir": str(run)})
    # A fresh run into the same directory is refused before anything (the VQ copy included) is replaced.
    with pytest.raises(GenloomError, match="earlier run"):
        train_text_to_image(train, val, vq_dir, "dalle-tiny", again, vocab_size=300)
    shutil.rmtree(run / IMAGE_TOKENIZER_DIR)
    with pytest.raises(GenloomError, match="image_tokenizer"):
        load_text_to_image_model(run)


def _factorised_vq(images: torch.Tensor, codebook_size: int) -> VQVAE:
    """A colour-factorised VQ whose codebooks k-means has set on `images` (no training)."""
    torch.manual_seed(0)
    config = VQConfig(resolution=16, widths=(8, 8, 8), res_blocks=1, norm_groups=4, codebook_size=codebook_size,
                      encoder="patch", colour_codes=8)
    vq = VQVAE(config).train()
    vq(images)
    return vq.eval()


def test_colour_factorised_tokenizer_sets_up_the_model(shapes, tmp_path) -> None:
    train, val, _ = shapes
    vq = _factorised_vq(train.to_tensor(range(len(train))), 64)
    save_checkpoint(tmp_path / "vq", vq, "vqvae", vq.config, None)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=4, batch_size=8, warmup_steps=1, eval_interval=4,
                      eval_batches=1, progress=False, device="cpu")
    model, *_ = train_text_to_image(train, val, tmp_path / "vq", "dalle-tiny", cfg, vocab_size=300,
                                    model_overrides={"d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 1})
    assert (model.config.image_vocab_size, model.config.colour_codes) == (512, 8)
    assert model.config.blank_token == vq.blank_token() >= 0
    loaded = load_text_to_image_model(tmp_path / "run")
    _, codes = imagine(loaded.model, loaded.tokenizer, loaded.vq, [train.captions[0]], n_images=2, seed=0,
                       guidance_scale=2.0, progress=False)
    shape, colour = divmod(model.config.blank_token, 8)
    assert torch.equal(codes // 8 == shape, codes % 8 == colour)  # blank patches black, lit ones coloured
    # With too few shape codes k-means gives a dim lit patch the blank patch's code: no blank token then.
    coarse = _factorised_vq(train.to_tensor(range(len(train))), 16)
    coarse_codes = encode_images(coarse, train.images)
    assert coarse.blank_token() >= 0 and usable_blank_token(coarse.blank_token(), 8, coarse_codes) == -1


def test_task_rejects_tokens_the_factorised_model_cannot_emit() -> None:
    tokenizer = train_caption_tokenizer(["a red circle"], 300)
    codec = CaptionCodec(tokenizer, 16)
    cfg = DalleConfig(text_vocab_size=tokenizer.vocab_size, text_len=16, image_vocab_size=32, colour_codes=4,
                      blank_token=3, grid_size=2, d_model=32, n_layers=1, n_heads=2, d_ff=64, pad_id=codec.ids.pad)
    text = codec.encode(["a red circle"])
    good, lit_in_black = torch.tensor([[3, 4, 5, 6]]), torch.tensor([[3, 7, 5, 6]])  # 7 = shape 1 in colour 3
    TextToImageTask(cfg, tokenizer, text, good, text, good, 1)
    with pytest.raises(GenloomError, match="1 image tokens pair the blank shape code"):
        TextToImageTask(cfg, tokenizer, text, lit_in_black, text, good, 1)
