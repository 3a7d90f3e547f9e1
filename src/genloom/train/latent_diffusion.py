"""Text-to-image training, Stable Diffusion style: a DiT learns to denoise VAE latents given the caption.

Images are encoded ONCE, before training, by the run's autoencoder (its posterior mean and log-variance); every
batch then draws a posterior sample, a noise level and the noise from the trainer's generator, so a batch is a
pure function of the generator state and a resumed run sees exactly the same batches. A fresh run carries a copy
of the autoencoder as its component `autoencoder/` (see `genloom.train.caption_image`).

The objective (DDPM with ε/v/x_0 prediction, or flow matching), the schedule and the caption dropout are the
model config's `process` (`genloom.diffusion.process.DiffusionConfig`), saved in every checkpoint, which is how
sampling knows how to sample it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genloom.data.captions import CaptionCodec
from genloom.data.images import ImageCaptionSet, check_resolution, images_to_tensor, to_unit_range
from genloom.diffusion.process import DiffusionConfig, training_example, training_times
from genloom.errors import GenloomError
from genloom.models.dit import DiT, DiTConfig
from genloom.models.vae import VAE
from genloom.registry import AUTOENCODER, check_latent_shape
from genloom.tokenizers import Tokenizer
from genloom.train.caption_image import caption_image_run, check_pad_id
from genloom.train.config import TrainConfig
from genloom.train.distributed import init_distributed
from genloom.train.run import new_model, run_model_config
from genloom.train.task import Batch, Task
from genloom.train.trainer import Trainer, TrainResult

FAMILY = "dit"
VAL_SEED = 0  # the validation batches' posterior samples, noise levels and noise


@torch.no_grad()
def encode_posteriors(vae: VAE, images: np.ndarray, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The autoencoder's posterior (mean, logvar), each (N, C, h, w) float32 on the CPU, of uint8 images
    (N, H, W, 3); `vae` is left in the mode it was in."""
    check_resolution(images, vae.config.resolution, "the autoencoder")
    device = next(vae.parameters()).device
    was_training = vae.training
    vae.eval()
    try:
        pixels = images_to_tensor(images)  # (N, 3, H, W) uint8
        parts = [vae.encode(to_unit_range(pixels[i : i + batch_size].to(device)))
                 for i in range(0, len(pixels), batch_size)]
    finally:
        vae.train(was_training)
    return torch.cat([m.float().cpu() for m, _ in parts]), torch.cat([v.float().cpu() for _, v in parts])


class LatentDiffusionTask(Task):
    """Batches of (caption ids, scaled latent x_0, noise, noise level); the loss is the (min-SNR weighted) MSE
    of the denoiser's output against the objective's target.

    Every micro-batch is `batch_size` pairs drawn uniformly (with replacement) by the trainer's generator, then
    one uniform number per pair for caption dropout, the posterior samples, the noise and the noise levels, all
    for the global batch: every process draws the same numbers and keeps its slice.
    """

    family = FAMILY
    loss_is_cross_entropy = False  # an MSE

    def __init__(self, model_config: DiTConfig, tokenizer: Tokenizer, latent_scale: float,
                 train_text: Tensor, train_posterior: tuple[Tensor, Tensor],
                 val_text: Tensor, val_posterior: tuple[Tensor, Tensor], batch_size: int) -> None:
        if batch_size < 1:
            raise GenloomError(f"batch size ({batch_size}) must be at least 1")
        for split, text, (mean, _) in (("training", train_text, train_posterior),
                                       ("validation", val_text, val_posterior)):
            if len(text) == 0:
                raise GenloomError(f"no {split} images")
            if len(text) != len(mean):
                raise GenloomError(f"{split}: {len(text)} captions but {len(mean)} images")
        self.model_config = model_config
        self.process: DiffusionConfig = model_config.process
        self.alphas_cumprod = self.process.alphas_cumprod()  # (T,), once: the cosine schedule is a Python loop
        self.tokenizer = tokenizer
        check_pad_id(tokenizer, model_config.pad_id)
        self.empty_caption = CaptionCodec(tokenizer, model_config.text_len).empty()[0]  # (Lt,)
        self.batch_size = batch_size
        self.scale = latent_scale
        self.train_text, self.train_posterior = train_text.long(), train_posterior
        # Validation draws its posterior samples, noise and levels once, so every validation scores the same loss.
        generator = torch.Generator().manual_seed(VAL_SEED)
        self.val = self._draw(val_text.long(), *val_posterior, generator)

    def _draw(self, text: Tensor, mean: Tensor, logvar: Tensor, generator: torch.Generator
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(text, x_0 = a scaled posterior sample, noise, noise levels) of these pairs, from `generator`."""
        eps = torch.randn(mean.shape, generator=generator)
        x0 = (mean + (0.5 * logvar).exp() * eps) * self.scale
        noise = torch.randn(mean.shape, generator=generator)
        return text, x0, noise, training_times(self.process, len(text), generator)

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        b = self.batch_size
        total = b * n_micro * world_size
        drawn = torch.randint(len(self.train_text), (total,), generator=generator)
        dropped = torch.rand(total, generator=generator) < self.process.caption_dropout  # (total,)
        text = torch.where(dropped[:, None], self.empty_caption, self.train_text[drawn])  # (total, Lt)
        mean, logvar = self.train_posterior
        batch = self._draw(text, mean[drawn], logvar[drawn], generator)
        mine = rank * b * n_micro
        return [tuple(part[mine + i * b : mine + (i + 1) * b] for part in batch) for i in range(n_micro)]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # The first n fixed batches; batch i goes to process i % world_size (the trainer averages them all).
        b = self.batch_size
        chunks = [tuple(part[i : i + b] for part in self.val) for i in range(0, len(self.val[0]), b)][:n]
        return [chunks[i] for i in range(rank, len(chunks), world_size)]

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        text, x0, noise, times = batch
        ac = self.alphas_cumprod.to(x0.device)
        example = training_example(self.process, ac, x0, noise, times)
        output = model(example.noisy, example.model_time, text)  # (b, C, h, w)
        per_sample = (output.float() - example.target.float()).pow(2).flatten(1).mean(1)  # (b,)
        return (example.weight * per_sample).mean()

    def count_tokens(self, batch: Batch) -> int:
        """Images: the throughput of a denoiser is counted in images per second."""
        return len(batch[0])


def train_latent_diffusion(
    train: ImageCaptionSet,
    val: ImageCaptionSet,
    autoencoder_checkpoint: Path | None,
    preset_name: str,
    train_config: TrainConfig,
    process: DiffusionConfig | None = None,
    tokenizer: Tokenizer | None = None,
    vocab_size: int = 512,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
) -> tuple[DiT, Tokenizer, VAE, TrainResult]:
    """Encode the images with the VAE at `autoencoder_checkpoint`, train a caption BPE (unless given) and a DiT
    from a preset with the shared Trainer. `process`: the objective, schedule and caption dropout (None: the
    preset's). `train_config.batch_size` counts (caption, image) pairs; keep an EMA with `ema_decay`.

    On resume the run's autoencoder copy, tokenizer and model config win (`autoencoder_checkpoint` may be None).
    """
    ctx = init_distributed(train_config.device)
    overrides = dict(model_overrides or {})
    run = caption_image_run(FAMILY, train_config, resume, autoencoder_checkpoint, train, val, vocab_size,
                            overrides.pop("text_len", None), tokenizer, component=AUTOENCODER)
    vae = run.image_model
    assert isinstance(vae, VAE)
    vae.to(ctx.device)
    latent_channels, latent_size, _ = vae.config.latent_shape
    from_data: dict[str, object] = {**run.caption_fields(), "latent_channels": latent_channels,
                                    "latent_size": latent_size}
    if process is not None:
        from_data["process"] = process
    model_config = run_model_config(FAMILY, preset_name, run.saved, overrides, **from_data)
    check_latent_shape(vae.config, model_config, "the autoencoder", "the model")
    codec = CaptionCodec(run.tokenizer, model_config.text_len)
    task = LatentDiffusionTask(
        model_config, run.tokenizer, float(vae.latent_scale), codec.encode(train.captions),
        encode_posteriors(vae, train.images), codec.encode(val.captions), encode_posteriors(vae, val.images),
        train_config.batch_size,
    )
    model = new_model(FAMILY, model_config, train_config.seed)
    assert isinstance(model, DiT)
    result = Trainer(task, model, train_config, ctx, run.components(), run_record).fit(resume=resume)
    return model, run.tokenizer, vae, result
