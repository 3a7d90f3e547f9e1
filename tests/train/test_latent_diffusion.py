"""Latent-diffusion training: posteriors encoded once, batches that are a pure function of the generator (dropout,
posterior sample, noise, level), a loss that is the objective's MSE, and a short run that learns and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from genloom.checkpoint import save_checkpoint
from genloom.data.builtin_images import builtin_images
from genloom.data.captions import CaptionCodec, train_caption_tokenizer
from genloom.diffusion.process import DiffusionConfig, training_example
from genloom.errors import GenloomError
from genloom.models.dit import DiT, DiTConfig
from genloom.models.vae import VAE, VAEConfig
from genloom.registry import load_image_generator
from genloom.tokenizers import SpecialIds
from genloom.train.config import TrainConfig
from genloom.train.latent_diffusion import LatentDiffusionTask, encode_posteriors, train_latent_diffusion
from genloom.train.metrics import read_metrics

VAE_CONFIG = VAEConfig(resolution=16, widths=(8, 16), res_blocks=1, norm_groups=4)  # 16x16 -> 8x8x4


@pytest.fixture(scope="module")
def shapes():
    return builtin_images("shapes", resolution=16, n=120).split(val_fraction=0.2)


def make_task(process: DiffusionConfig, n: int = 40, batch_size: int = 8) -> LatentDiffusionTask:
    captions = [f"a red circle number {i}" for i in range(n)]
    tokenizer = train_caption_tokenizer(captions, 300)
    codec = CaptionCodec(tokenizer, 12)
    config = DiTConfig(latent_size=8, d_model=32, n_layers=1, n_heads=2, d_ff=64, text_vocab_size=tokenizer.vocab_size,
                       text_len=12, text_layers=1, pad_id=SpecialIds.of(tokenizer).pad, process=process)
    text = codec.encode(captions)
    mean, logvar = torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((n, 4, 8, 8), -2.0)
    return LatentDiffusionTask(config, tokenizer, 0.5, text, (mean, logvar), text[:8], (mean[:8], logvar[:8]),
                               batch_size)


def test_batches_are_a_pure_function_of_the_generator_and_split_across_processes() -> None:
    task = make_task(DiffusionConfig(caption_dropout=0.25))
    one = task.micro_batches(torch.Generator().manual_seed(3), 0, 1, 2)
    again = task.micro_batches(torch.Generator().manual_seed(3), 0, 1, 2)
    for a, b in zip(one, again, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    _text, x0, noise, times = one[0]
    assert x0.shape == noise.shape == (8, 4, 8, 8) and times.dtype == torch.long
    halves = [task.micro_batches(torch.Generator().manual_seed(3), rank, 2, 1)[0] for rank in range(2)]
    whole = make_task(DiffusionConfig(caption_dropout=0.25), batch_size=16).micro_batches(
        torch.Generator().manual_seed(3), 0, 1, 1)[0]
    for i in range(4):
        assert torch.equal(torch.cat([h[i] for h in halves]), whole[i])
    rows = torch.cat([b[0] for _ in range(50) for b in task.micro_batches(torch.Generator().manual_seed(_), 0, 1, 1)])
    dropped = (rows == task.empty_caption).all(dim=1).float().mean().item()
    assert abs(dropped - 0.25) < 0.06, dropped
    # Validation draws its noise once: the same batches every time.
    first, second = task.val_batches(4, 0, 1), task.val_batches(4, 0, 1)
    assert all(torch.equal(x, y) for a, b in zip(first, second, strict=True) for x, y in zip(a, b, strict=True))


def test_the_loss_is_the_weighted_mse_against_the_objectives_target() -> None:
    for process in (DiffusionConfig(prediction="v_prediction", min_snr_gamma=5.0), DiffusionConfig(objective="flow")):
        task = make_task(process)
        batch = task.micro_batches(torch.Generator().manual_seed(0), 0, 1, 1)[0]
        torch.manual_seed(0)
        model = DiT(task.model_config)
        text, x0, noise, times = batch
        example = training_example(process, process.alphas_cumprod(), x0, noise, times)
        expected = (example.weight * (model(example.noisy, example.model_time, text) - example.target).pow(2)
                    .flatten(1).mean(1)).mean()
        torch.testing.assert_close(task.loss(model, batch), expected)


def test_encode_posteriors_matches_the_vae(shapes) -> None:
    train, _, _ = shapes
    torch.manual_seed(0)
    vae = VAE(VAE_CONFIG)
    mean, logvar = encode_posteriors(vae, train.images[:5], batch_size=2)
    from genloom.data.images import images_to_tensor, to_unit_range

    with torch.no_grad():
        m, v = vae.eval().encode(to_unit_range(images_to_tensor(train.images[:5])))
    torch.testing.assert_close(mean, m)
    torch.testing.assert_close(logvar, v)
    with pytest.raises(GenloomError, match="the autoencoder"):
        encode_posteriors(vae, builtin_images("shapes", resolution=32, n=2).images)


def test_a_short_run_learns_saves_and_samples(shapes, tmp_path) -> None:
    train, val, _ = shapes
    torch.manual_seed(0)
    vae = VAE(VAE_CONFIG)
    vae.latent_scale.fill_(2.0)
    save_checkpoint(tmp_path / "vae", vae, "vae", VAE_CONFIG, None)
    config = TrainConfig(out_dir=str(tmp_path / "run"), max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5,
                         eval_interval=30, eval_batches=2, log_interval=5, device="cpu", progress=False,
                         ema_decay=0.9)
    _model, tokenizer, _, result = train_latent_diffusion(train, val, tmp_path / "vae", "dit-tiny", config,
                                                         DiffusionConfig(objective="flow"), vocab_size=300)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3])  # it learns: the velocity loss falls from the untrained ~2
    saved = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert saved["family"] == "dit" and saved["model"]["process"]["objective"] == "flow"
    assert saved["model"]["latent_size"] == 8 and saved["model"]["text_vocab_size"] == tokenizer.vocab_size
    loaded = load_image_generator(tmp_path / "run")
    assert float(loaded.vae.latent_scale) == 2.0  # the run's own copy of the autoencoder
    # Resuming continues the same run to a later step.
    more = TrainConfig(**{**config.__dict__, "max_steps": 70})
    *_, resumed = train_latent_diffusion(train, val, None, "dit-tiny", more, resume=True)
    assert resumed.step == 70 and result.step == 60
