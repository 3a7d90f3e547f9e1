"""Either text-to-image method behind one call: `draw_images` hands the method's own options to `imagine` (image
tokens) or `diffuse` (latent diffusion), so `genloom imagine`, the evaluation, the reranker and the server need
not know which one a checkpoint holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from genloom.generate.diffuse import diffuse
from genloom.generate.imagine import imagine
from genloom.models.vae import VAE
from genloom.models.vqvae import VQVAE
from genloom.registry import LoadedLatentDiffusion, LoadedTextToImage

ImageGenerator = LoadedTextToImage | LoadedLatentDiffusion


def draw_images(generator: ImageGenerator, prompts: Sequence[str], n_images: int = 1, seed: int | None = None,
                **options: Any) -> tuple[np.ndarray, Tensor | None]:
    """`n_images` per prompt, prompt-major, image i with seed + i: uint8 images (N, H, W, 3) and, for the token
    method, their codes (N, g, g) (None for diffusion). `options`: the method's keyword arguments (tokens:
    temperature, top_k, top_p, use_cache; diffusion: sampling, init_images, strength, preview_every, on_preview;
    both: guidance_scale, negative_prompts, image_seeds, progress)."""
    if isinstance(generator, LoadedLatentDiffusion):
        images, _ = diffuse(generator.model, generator.tokenizer, generator.vae, prompts, n_images, seed=seed,
                            **options)
        return images, None
    return imagine(generator.model, generator.tokenizer, generator.vq, prompts, n_images, seed=seed, **options)


def method_of(generator: ImageGenerator) -> str:
    """"diffusion" or "tokens", as `genloom train text-to-image --method` names them."""
    return "diffusion" if isinstance(generator, LoadedLatentDiffusion) else "tokens"


def pixel_model(generator: ImageGenerator) -> VAE | VQVAE:
    """The model that turns the generator's output into pixels: its VAE or its VQ image tokenizer."""
    return generator.vae if isinstance(generator, LoadedLatentDiffusion) else generator.vq


def image_resolution(generator: ImageGenerator) -> int:
    """The side of the images the generator makes (and an init image must have)."""
    return pixel_model(generator).config.resolution
