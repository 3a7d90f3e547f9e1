"""KL-autoencoder training (the latent space of latent diffusion): a task for the shared Trainer, and its recipe.

Every validation also measures the latent scale (1 / std of the latents of a fixed sample of training images)
and stores it in the model, so every checkpoint the Trainer writes carries the scale of its own weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from genloom.data.images import to_unit_range
from genloom.models.vae import VAE, gaussian_kl, measure_latent_scale
from genloom.train.config import TrainConfig
from genloom.train.image_tokenizer import ImageReconstructionTask, train_reconstruction
from genloom.train.task import Batch, Goal
from genloom.train.trainer import TrainResult

FAMILY = "vae"
SCALE_SAMPLE = 512  # training images the latent scale is measured on


class ImageAutoencoderTask(ImageReconstructionTask):
    """Loss: pixel MSE of the reconstruction from a posterior sample + kl_weight x KL (+ the edge term)."""

    family = FAMILY
    metric_goals: ClassVar[dict[str, Goal]] = {"psnr": "max", "val_mse": "min", "kl": "min"}

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        assert isinstance(model, VAE)
        (images,) = batch
        return model.loss(images).total

    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Over the validation set, decoding the posterior mean: psnr (dB), val_mse, kl (per latent element),
        latent_mean and latent_std (unscaled); latent_scale, measured on the first SCALE_SAMPLE training images
        and set in the model."""
        assert isinstance(model, VAE)
        device = next(model.parameters()).device
        kl_sum, z_sum, z_sq, latents = 0.0, 0.0, 0.0, 0

        def reconstruct(images: Tensor) -> Tensor:  # from the posterior mean, tallying the latents on the way
            nonlocal kl_sum, z_sum, z_sq, latents
            mean, logvar = model.encode(images)
            kl_sum += float(gaussian_kl(mean, logvar).sum())
            z_sum, z_sq, latents = z_sum + float(mean.sum()), z_sq + float(mean.pow(2).sum()), latents + mean.numel()
            return model.decode(mean)

        metrics = self.reconstruction_metrics(reconstruct, device)
        sample = self.train[:SCALE_SAMPLE]
        batches = [to_unit_range(sample[i : i + self.batch_size].to(device)) for i in range(0, len(sample),
                                                                                                self.batch_size)]
        scale = measure_latent_scale(model, batches, torch.Generator(device=device).manual_seed(0))
        z_mean = z_sum / latents
        return {**metrics, "kl": kl_sum / latents, "latent_mean": z_mean,
                "latent_std": max(z_sq / latents - z_mean**2, 0.0) ** 0.5, "latent_scale": scale}


def train_image_autoencoder(
    train_images: np.ndarray,
    val_images: np.ndarray,
    preset_name: str,
    train_config: TrainConfig,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
) -> tuple[VAE, TrainResult]:
    """Build a VAE from a preset and train it with the shared Trainer on uint8 (N, H, W, 3) images."""
    model, result = train_reconstruction(ImageAutoencoderTask, train_images, val_images, preset_name, train_config,
                                         model_overrides, resume, run_record)
    assert isinstance(model, VAE)
    return model, result
