"""Image-tokenizer training: the VQ-VAE reconstruction task for the shared Trainer, and its recipe.

The task reads uint8 RGB arrays (N, H, W, 3), the `images` of a `genloom.data.images.ImageCaptionSet`;
captions play no part in learning the image tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genloom.config import config_from_dict
from genloom.errors import GenloomError
from genloom.models.vqvae import VQVAE, VQConfig, preset
from genloom.train.checkpoint import CheckpointManager, read_checkpoint_config
from genloom.train.config import TrainConfig
from genloom.train.trainer import Batch, Trainer, TrainResult

FAMILY = "vqvae"


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W); kept as bytes until a batch is drawn (4x less memory)."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def to_unit_range(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] -> float (B, 3, H, W) in [-1, 1], the VQ-VAE's input range."""
    return images.float() / 127.5 - 1.0


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


class ImageTokenizerTask:
    """Random batches of whole images; loss is pixel MSE of the reconstruction plus the VQ commitment loss.

    Every micro-batch is `batch_size` images drawn uniformly (with replacement) by the trainer's generator,
    so the data position is the generator state alone and a resumed run continues exactly.
    """

    family = FAMILY
    tokenizer = None  # images in, codes out: no text tokenizer to save

    def __init__(
        self, model_config: VQConfig, train_images: np.ndarray, val_images: np.ndarray, batch_size: int
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

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        (images,) = batch
        reconstruction, vq_loss, _ = model(images)
        return F.mse_loss(reconstruction.float(), images) + vq_loss

    def count_tokens(self, batch: Batch) -> int:
        """Images, so the trainer's tokens/s reads as images per second."""
        return len(batch[0])

    @torch.no_grad()
    def validation_metrics(self, model: nn.Module) -> dict[str, float]:
        """Over the whole validation set: psnr (dB, [0, 1] scale) and val_mse (reconstruction MSE, [-1, 1]
        scale, without the commitment term); over the training steps since the last validation:
        codebook_usage (fraction of codes assigned at least once) and codebook_perplexity. Reading the usage
        resets it.
        """
        assert isinstance(model, VQVAE)
        device = next(model.parameters()).device
        psnr_sum, sq_err_sum, pixels = 0.0, 0.0, 0
        for chunk in self._val_chunks():
            images = to_unit_range(chunk.to(device))
            reconstruction = model(images)[0].float().clamp(-1.0, 1.0)  # clamped as `decode` does
            psnr_sum += float(psnr(images, reconstruction).sum())
            sq_err_sum += float((reconstruction - images).pow(2).sum())
            pixels += images.numel()
        stats = model.quantizer.codebook_stats(reset=True)
        metrics = {
            "psnr": psnr_sum / len(self.val),
            "val_mse": sq_err_sum / pixels,
            "codebook_usage": stats.used_fraction,
            "codebook_perplexity": stats.perplexity,
        }
        if model.colour_quantizer is not None:  # factorised tokens: codebook_* are the shape codes'
            colour = model.colour_quantizer.codebook_stats(reset=True)
            metrics |= {"colour_codebook_usage": colour.used_fraction, "colour_perplexity": colour.perplexity}
        return metrics


def build_model_config(preset_name: str, **overrides: object) -> VQConfig:
    """Preset + explicit settings (None means keep the preset's value)."""
    return preset(preset_name, **{k: v for k, v in overrides.items() if v is not None})


def train_image_tokenizer(
    train_images: np.ndarray,
    val_images: np.ndarray,
    preset_name: str,
    train_config: TrainConfig,
    model_overrides: dict[str, object] | None = None,
    resume: bool = False,
) -> tuple[VQVAE, TrainResult]:
    """Build a VQ-VAE from a preset and train it with the shared Trainer on uint8 (N, H, W, 3) images.

    `train_config.batch_size` counts images. On resume the run's saved model config wins.
    """
    if resume:
        latest = CheckpointManager(Path(train_config.out_dir)).latest()
        raw = read_checkpoint_config(latest)
        if raw["family"] != FAMILY:
            raise GenloomError(f"--resume: {latest} holds a {raw['family']} model, not an image tokenizer ({FAMILY})")
        model_config = config_from_dict(VQConfig, raw["model"])
    else:
        model_config = build_model_config(preset_name, **(model_overrides or {}))
    task = ImageTokenizerTask(model_config, train_images, val_images, train_config.batch_size)
    torch.manual_seed(train_config.seed)  # the same initial weights on every process and every rerun
    model = VQVAE(model_config)
    result = Trainer(task, model, train_config).fit(resume=resume)
    return model, result
