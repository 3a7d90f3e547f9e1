"""Text -> image with a DALL-E style model: sample image tokens, decode them with the VQ model, save PNGs.

Sampling is KV-cached: the caption is prefilled once, then each of the grid_size**2 image tokens costs one
single-position step. Classifier-free guidance (Ho & Salimans 2022; used for autoregressive image models by
Gafni et al. 2022, "Make-A-Scene") runs each image's conditional row and its unconditional row (the empty
caption the model saw through caption dropout) in one batch and samples from
    uncond + scale * (cond - uncond):
scale 1 is plain conditional sampling (the unconditional rows are then skipped), scale 0 ignores the prompt.

Image i of a call (prompt-major: all images of prompt 0, then of prompt 1, ...) samples with its own generator
seeded `seed + i`, so it is the same image whether made alone (with seed + i) or in a batch. Saving the images
(PNGs with their parameters, sidecars, a grid) is `genloom.generate.image_io`'s, for any image method.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from genloom.data.captions import CaptionCodec
from genloom.data.images import check_resolution, from_unit_range, images_to_tensor, to_unit_range
from genloom.diffusion.guidance import guide
from genloom.errors import GenloomError
from genloom.generate.image_token_batch import ImageTokenBatch
from genloom.generate.sampling import SamplingConfig, choose_tokens
from genloom.models.caption_image import check_image_tokenizer
from genloom.models.dalle import Dalle
from genloom.models.vqvae import VQVAE
from genloom.tokenizers import Tokenizer


@torch.no_grad()
def encode_images(vq: VQVAE, images: np.ndarray, batch_size: int = 256, device: torch.device | None = None) -> Tensor:
    """Codes (N, grid**2) long, raster order, of uint8 images (N, H, W, 3), on the CPU; `vq` is left as it was."""
    check_resolution(images, vq.config.resolution, "the VQ image tokenizer")
    device = device or next(vq.parameters()).device
    was_training = vq.training
    vq.eval()  # encode never updates the codebook, but eval also fixes GroupNorm/any dropout behaviour
    try:
        pixels = images_to_tensor(images)  # (N, 3, H, W) uint8
        chunks = [
            vq.encode(to_unit_range(pixels[i : i + batch_size].to(device))).flatten(1).cpu()  # (b, h*w)
            for i in range(0, len(pixels), batch_size)
        ]
    finally:
        vq.train(was_training)
    return torch.cat(chunks)


def decode_to_images(decode: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) of what an image model's `decode` turns into pixels in [-1, 1], in batches."""
    with torch.inference_mode():
        return np.concatenate([from_unit_range(decode(inputs[i : i + batch_size]))
                               for i in range(0, len(inputs), batch_size)])


def codes_to_images(vq: VQVAE, codes: Tensor, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) of codes (N, g, g)."""
    return decode_to_images(vq.decode, codes.to(next(vq.parameters()).device), batch_size)


def encode_image_prompts(tokenizer: Tokenizer, text_len: int, prompts: Sequence[str], n_images: int,
                         guidance_scale: float, negative_prompts: Sequence[str] | None) -> tuple[Tensor, Tensor]:
    """What either image method conditions on, after the checks both make: the captions (N, Lt), each prompt
    repeated n_images times (prompt-major), and the unconditional caption of guidance, the empty one (Lt,) or the
    negative prompts (N, Lt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise GenloomError("no prompts to imagine")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise GenloomError(f"n_images ({n_images!r}) must be an integer >= 1")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise GenloomError(f"guidance scale ({guidance_scale}) must be >= 0")
    codec = CaptionCodec(tokenizer, text_len)
    text = codec.encode(list(prompts)).repeat_interleave(n_images, dim=0)  # (N, Lt), prompt-major
    unconditional = codec.empty()[0]  # (Lt,)
    if negative_prompts is not None:
        if len(negative_prompts) != len(prompts):
            raise GenloomError(f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        unconditional = codec.encode(list(negative_prompts)).repeat_interleave(n_images, dim=0)  # (N, Lt)
    return text, unconditional


def row_generators(n: int, seed: int | None, row_seeds: Sequence[int] | None, device: torch.device
                   ) -> list[torch.Generator] | None:
    """One generator per image, seeded row_seeds[i] or seed + i, so an image does not depend on its batch; None
    (torch's global RNG) without seeds."""
    if row_seeds is not None:
        if len(row_seeds) != n:
            raise GenloomError(f"{len(row_seeds)} seeds for {n} images")
        return [torch.Generator(device=device).manual_seed(s) for s in row_seeds]
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(seed + i) for i in range(n)]


@torch.inference_mode()
def sample_image_tokens(
    model: Dalle,
    text: Tensor,
    sampling: SamplingConfig,
    guidance_scale: float = 1.0,
    empty_caption: Tensor | None = None,
    progress: bool = False,
    use_cache: bool = True,
    row_seeds: Sequence[int] | None = None,
) -> Tensor:
    """Image tokens (B, grid**2) for captions text (B, Lt); row i samples with seed sampling.seed + i, or with
    row_seeds[i] when given (a batch that joins several requests, each with its own seed).

    empty_caption (Lt,) or (B, Lt): the unconditional caption (a negative prompt replaces it), needed when
    guidance_scale != 1. With the cache this is `ImageTokenBatch` with one group; use_cache=False recomputes the
    whole prefix at every token instead (the reference the cached path is tested against).
    """
    batch = text.shape[0]
    device = model.text_embedding.weight.device
    generators = row_generators(batch, sampling.seed, row_seeds, device)
    steps = tqdm(total=model.config.image_len, desc="imagine", unit="tok", disable=not progress, leave=False)
    if use_cache:
        engine = ImageTokenBatch(model, capacity=batch)
        group = engine.add(text, sampling, guidance_scale, empty_caption, generators)
        steps.update()
        while not group.done:
            engine.step()
            steps.update()
        steps.close()
        return group.sample
    guided = guidance_scale != 1.0
    if guided:
        if empty_caption is None:
            raise GenloomError("classifier-free guidance needs the empty caption")
        text = torch.cat([text, empty_caption.expand(batch, -1)])  # (2B, Lt): conditional rows, then unconditional
    text = text.to(device)
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)  # (B, t) sampled so far
    for _ in range(model.config.image_len):
        logits = model.next_image_logits(text, torch.cat([tokens, tokens]) if guided else tokens).float()
        if guided:
            logits = guide(logits[:batch], logits[batch:], guidance_scale)
        chosen = choose_tokens(logits, sampling, generators)  # (B,)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        steps.update()
    steps.close()
    return tokens


def imagine(
    model: Dalle,
    text_tokenizer: Tokenizer,
    vq_model: VQVAE,
    prompts: Sequence[str],
    n_images: int = 1,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
    negative_prompts: Sequence[str] | None = None,
    image_seeds: Sequence[int] | None = None,
) -> tuple[np.ndarray, Tensor]:
    """`n_images` images per prompt: uint8 RGB (P * n_images, H, W, 3) prompt-major, and their codes (N, g, g).

    temperature 0 is greedy; top_k / top_p filter as for text. guidance_scale: 1 = conditional, 0 =
    unconditional, > 1 = follow the prompt more closely. seed: image i uses seed + i (None: torch's global RNG);
    image_seeds: one seed per image instead. negative_prompts: one per prompt, guided away from (it replaces the
    empty caption; "" is the empty caption).
    """
    cfg = model.config
    text, unconditional = encode_image_prompts(text_tokenizer, cfg.text_len, prompts, n_images, guidance_scale,
                                               negative_prompts)
    check_image_tokenizer(vq_model.config, cfg, "the VQ model", "the model")
    sampling = SamplingConfig(
        max_new_tokens=cfg.image_len, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    was_training = model.training
    model.eval()
    try:
        tokens = sample_image_tokens(
            model, text, sampling, guidance_scale, unconditional, progress=progress, use_cache=use_cache,
            row_seeds=image_seeds,
        )
    finally:
        model.train(was_training)
    codes = tokens.view(-1, cfg.grid_size, cfg.grid_size).cpu()  # (N, g, g)
    return codes_to_images(vq_model, codes), codes
