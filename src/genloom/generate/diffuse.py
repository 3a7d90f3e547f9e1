"""Text -> image by latent diffusion: denoise VAE latents with a DiT under classifier-free guidance, decode them.

The loop is diffusers' pipeline loop, with the process (`genloom.diffusion.process`) read from the checkpoint:

    latents = noise (or an init image's latent noised to the first level, for img2img)
    for each step:  output = guide(DiT(latents, t, caption), DiT(latents, t, negative), scale)
                    latents = sampler_step(latents, output, ...)

The captions are encoded once. With guidance the conditional and the unconditional (or negative-prompt) rows run
in one batch; scale 1 skips the unconditional rows. Image i of a call (prompt-major) draws its starting noise and
every later noise from its own generator, seeded `seed + i` (or `image_seeds[i]`), so it is the same image
whether made alone or in a batch. Latents are never clipped. The loop's step is `DiffusionBatch`'s
(generate/diffusion_batch.py) with one request in it: the server runs the same step over many requests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from genloom.data.images import images_to_tensor, to_unit_range
from genloom.errors import GenloomError
from genloom.generate.diffusion_batch import DiffusionBatch, DiffusionSampling
from genloom.generate.imagine import decode_to_images, encode_image_prompts, row_generators
from genloom.models.dit import DiT
from genloom.models.vae import VAE
from genloom.registry import check_latent_shape
from genloom.tokenizers import Tokenizer

# Called every `preview_every` steps with (step, the predicted clean images as uint8 (N, H, W, 3)).
PreviewCallback = Callable[[int, np.ndarray], None]


def latents_to_images(vae: VAE, latents: Tensor, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) of scaled latents (N, C, h, w)."""
    return decode_to_images(vae.from_latents, latents.float().to(next(vae.parameters()).device), batch_size)


def init_latents(vae: VAE, images: np.ndarray) -> Tensor:
    """Scaled posterior means (N, C, h, w) of uint8 init images (N, H, W, 3) at the autoencoder's resolution."""
    r = vae.config.resolution
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GenloomError(f"init images must be uint8 RGB arrays (N, H, W, 3), got shape {images.shape}")
    if images.shape[1:3] != (r, r):
        raise GenloomError(f"an init image must be {r}x{r} RGB, the autoencoder's resolution; got "
                           f"{images.shape[2]}x{images.shape[1]}")
    device = next(vae.parameters()).device
    with torch.inference_mode():
        mean, _ = vae.encode(to_unit_range(images_to_tensor(images).to(device)))
    return mean * vae.latent_scale


@torch.inference_mode()
def sample_latents(
    model: DiT,
    text: Tensor,
    sampling: DiffusionSampling,
    guidance_scale: float = 1.0,
    unconditional: Tensor | None = None,
    generators: list[torch.Generator] | None = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    on_step: Callable[[int, Tensor], None] | None = None,
    progress: bool = False,
) -> Tensor:
    """Scaled latents (B, C, h, w) for captions text (B, Lt). unconditional (B, Lt): the empty caption or the
    negative prompts, needed when guidance_scale != 1. init (B, C, h, w): img2img's starting latents, noised to
    `strength`. on_step(i, predicted x_0) after every step."""
    batch = DiffusionBatch(model, capacity=text.shape[0])
    group = batch.add(text, sampling, guidance_scale, unconditional, generators, init, strength)
    for i in tqdm(range(group.plan.steps), desc="diffuse", unit="step", disable=not progress, leave=False):
        batch.step()
        if on_step is not None:
            assert group.x0 is not None
            on_step(i, group.x0)
    return group.sample


def diffuse(
    model: DiT,
    text_tokenizer: Tokenizer,
    vae: VAE,
    prompts: Sequence[str],
    n_images: int = 1,
    sampling: DiffusionSampling | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    negative_prompts: Sequence[str] | None = None,
    image_seeds: Sequence[int] | None = None,
    init_images: np.ndarray | None = None,
    strength: float | None = None,
    preview_every: int = 0,
    on_preview: PreviewCallback | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, Tensor]:
    """`n_images` images per prompt: uint8 RGB (P * n_images, H, W, 3) prompt-major, and their latents.

    guidance_scale: 1 = conditional, 0 = unconditional, > 1 = follow the prompt more closely; negative_prompts
    (one per prompt) take the empty caption's place. init_images: one uint8 image (H, W, 3) for every output, or
    one per output image (N, H, W, 3), denoised from `strength` (default 0.8; 1: nothing of it survives).
    preview_every k > 0 calls on_preview with the predicted clean images after every k-th step.
    """
    sampling = sampling or DiffusionSampling()
    cfg = model.config
    text, unconditional = encode_image_prompts(text_tokenizer, cfg.text_len, prompts, n_images, guidance_scale,
                                               negative_prompts)
    check_latent_shape(vae.config, cfg, "the autoencoder", "the denoiser")
    n = len(text)
    init = None
    if init_images is not None:
        images = init_images[None] if init_images.ndim == 3 else init_images
        if len(images) not in (1, n):
            raise GenloomError(f"{len(images)} init images for {n} output images; give one, or one per image")
        init = init_latents(vae, images).expand(n, -1, -1, -1)
    elif strength is not None:
        raise GenloomError("a strength says how much of an init image to keep; give an init image too")
    device = model.positions.device
    generators = row_generators(n, seed, image_seeds, device)

    def preview(i: int, x0: Tensor) -> None:
        if on_preview is not None and preview_every > 0 and (i + 1) % preview_every == 0:
            on_preview(i + 1, latents_to_images(vae, x0))

    was_training = model.training
    model.eval()
    try:
        latents = sample_latents(model, text, sampling, guidance_scale, unconditional, generators, init,
                                 1.0 if init is None else 0.8 if strength is None else strength, preview, progress)
    finally:
        model.train(was_training)
    return latents_to_images(vae, latents), latents.cpu()
