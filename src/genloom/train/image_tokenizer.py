"""Image-tokenizer training: the VQ-VAE reconstruction task for the shared Trainer, and its recipe.

The task reads uint8 RGB arrays (N, H, W, 3), the `images` of a `genloom.data.images.ImageCaptionSet`;
captions play no part in learning the image tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.data.images import images_to_tensor, to_unit_range
from genloom.errors import GenloomError
from genloom.models.vae import VAEConfig
from genloom.models.vqvae import VQVAE, VQConfig
from genloom.train.config import TrainConfig
from genloom.train.run import new_model, run_model_config, saved_run
from genloom.train.task import Batch, Goal, Task
from genloom.train.trainer import Trainer, TrainResult

FAMILY = "vqvae"


def psnr(reference: Tensor, reconstruction: Tensor) -> Tensor:
    """Per-image PSNR in dB (B,) of images in [-1, 1], measured on the usual [0, 1] pixel scale."""
    # On [0, 1] every difference is half as large, so the squared error is a quarter.
    mse = (reference.float() - reconstruction.float()).pow(2).flatten(1).mean(1) / 4  # (B,)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def _check_images(images: np.ndarray, split: str, resolution: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise GenloomError(f"{split} images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GenloomError(f"{split} images must have shape (N, H, W, 3), got {images.shape}")
    if len(images) == 0:
        raise GenloomError(f"no {split} images")
    if images.shape[1:3] != (resolution, resolution):
        raise GenloomError(
            f"{split} images are {images.shape[2]}x{images.shape[1]} but the model's resolution is "
            f"{resolution}x{resolution}"
        )


class ImageReconstructionTask(Task):
    """Random batches of whole images, for a model that learns to reconstruct them (an image tokenizer or
    autoencoder); subclasses give the loss and the validation metrics.

    Every micro-batch is `batch_size` images drawn uniformly (with replacement) by the trainer's generator,
    so the data position is the generator state alone and a resumed run continues exactly.
    """

    tokenizer = None  # images in, codes or latents out: no text tokenizer to save
    loss_is_cross_entropy = False  # a reconstruction error (plus codebook or KL terms)

    def __init__(
        self, model_config: VQConfig | VAEConfig, train_images: np.ndarray, val_images: np.ndarray, batch_size: int
    ) -> None:
        if batch_size < 1:
            raise GenloomError(f"batch size ({batch_size}) must be at least 1")
        _check_images(train_images, "training", model_config.resolution)
        _check_images(val_images, "validation", model_config.resolution)
        self.model_config = model_config
        self.batch_size = batch_size
        self.train = images_to_tensor(train_images)  # (N, 3, H, W) uint8
        self.val = images_to_tensor(val_images)  # (M, 3, H, W) uint8

    def micro_batches(self, generator: torch.Generator, rank: int, world_size: int, n_micro: int) -> list[Batch]:
        # Every process draws the same global batch of indices and keeps its own slice.
        b = self.batch_size
        drawn = torch.randint(len(self.train), (b * n_micro * world_size,), generator=generator)
        mine = drawn[rank * b * n_micro : (rank + 1) * b * n_micro]
        return [(to_unit_range(self.train[mine[i * b : (i + 1) * b]]),) for i in range(n_micro)]

    def _val_chunks(self) -> list[Tensor]:
        """The validation set in order, cut into batches of `batch_size`."""
        return [self.val[i : i + self.batch_size] for i in range(0, len(self.val), self.batch_size)]

    def val_batches(self, n: int, rank: int, world_size: int) -> list[Batch]:
        # The first n fixed batches (all, if fewer); batch i goes to process i % world_size. The trainer
        # averages over all batches of all processes, so the value does not depend on world_size.
        chosen = self._val_chunks()[:n]
        return [(to_unit_range(chosen[i]),) for i in range(rank, len(chosen), world_size)]

    def count_tokens(self, batch: Batch) -> int:
        """Images, so the trainer's tokens/s reads as images per second."""
        return len(batch[0])

    def reconstruction_metrics(self, reconstruct: Callable[[Tensor], Tensor], device: torch.device
                               ) -> dict[str, float]:
        """psnr (dB, [0, 1] scale) and val_mse ([-1, 1] scale) of `reconstruct` (images in [-1, 1] -> their
        reconstructions) over the whole validation set, clamped to [-1, 1] as decoded images are."""
        psnr_sum, sq_err_sum, pixels = 0.0, 0.0, 0
        for chunk in self._val_chunks():
            images = to_unit_range(chunk.to(device))
            reconstruction = reconstruct(images).float().clamp(-1.0, 1.0)
            psnr_sum += float(psnr(images, reconstruction).sum())
            sq_err_sum += float((reconstruction - images).pow(2).sum())
            pixels += images.numel()
        return {"psnr": psnr_sum / len(self.val), "val_mse": sq_err_sum / pixels}


class ImageTokenizerTask(ImageReconstructionTask):
    """The VQ-VAE: loss is pixel MSE of the reconstruction plus the VQ commitment loss."""

    family = FAMILY
    metric_goals: ClassVar[dict[str, Goal]] = {
        "psnr": "max", "val_mse": "min", "codebook_usage": "max", "codebook_perplexity": "max",
        "colour_codebook_usage": "max", "colour_perplexity": "max",
    }

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        (images,) = batch
        reconstruction, vq_loss, _ = model(images)
        return F.mse_loss(reconstruction.float(), images) + vq_loss

    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Over the whole validation set: psnr (dB, [0, 1] scale) and val_mse (reconstruction MSE, [-1, 1]
        scale, without the commitment term); over the training steps since the last validation:
        codebook_usage (fraction of codes assigned at least once) and codebook_perplexity. Reading the usage
        resets it.
        """
        assert isinstance(model, VQVAE)
        metrics = self.reconstruction_metrics(lambda images: model(images)[0], next(model.parameters()).device)
        stats = model.quantizer.codebook_stats(reset=True)
        metrics |= {"codebook_usage": stats.used_fraction, "codebook_perplexity": stats.perplexity}
        if model.colour_quantizer is not None:  # factorised tokens: codebook_* are the shape codes'
            colour = model.colour_quantizer.codebook_stats(reset=True)
            metrics |= {"colour_codebook_usage": colour.used_fraction, "colour_perplexity": colour.perplexity}
        return metrics


def train_image_tokenizer(
    train_images: np.ndarray,
    val_images: np.ndarray,
    preset_name: str,
    train_config: TrainConfig,
    model_overrides: Mapping[str, object] | None = None,
    resume: bool = False,
    run_record: dict[str, Any] | None = None,
) -> tuple[VQVAE, TrainResult]:
    """Build a VQ-VAE from a preset and train it with the shared Trainer on uint8 (N, H, W, 3) images.

    `train_config.batch_size` counts images. On resume the run's saved model config wins. `run_record`: the
    run's data record (see `genloom.run_record`).
    """
    model, result = train_reconstruction(ImageTokenizerTask, train_images, val_images, preset_name, train_config,
                                         model_overrides, resume, run_record)
    assert isinstance(model, VQVAE)
    return model, result


def train_reconstruction(
    task_class: type[ImageReconstructionTask],
    train_images: np.ndarray,
    val_images: np.ndarray,
    preset_name: str,
    train_config: TrainConfig,
    model_overrides: Mapping[str, object] | None,
    resume: bool,
    run_record: dict[str, Any] | None,
) -> tuple[nn.Module, TrainResult]:
    """The recipe of every image-reconstruction family (`task_class.family`): its model from a preset (the run's
    saved config on resume), trained by the shared Trainer."""
    family = task_class.family
    saved = saved_run(family, train_config) if resume else None
    model_config = run_model_config(family, preset_name, saved, model_overrides)
    task = task_class(model_config, train_images, val_images, train_config.batch_size)
    model = new_model(family, model_config, train_config.seed)
    result = Trainer(task, model, train_config, run_record=run_record).fit(resume=resume)
    return model, result
