"""Best-of-N sampling: draw N candidate images per caption and keep those a CLIP-style model scores highest.

DALL-E (Ramesh et al. 2021, §2.5) reranks 512 samples per caption with CLIP; here N is small and the
reranker is a `genloom.models.clip.Clip` trained on the same data (`genloom train clip`). It reads image
tokens: a token-method model's own codes, which it must read as the model meant them (both runs carry the same
VQ model), or, for a diffusion model, the codes the reranker's VQ model gives its images.

Seeds: candidate j of prompt p is sampled with seed + p * N + j, as `imagine` would make image p * N + j of an
N-per-prompt call, and the kept images report those seeds, so any of them can be redrawn alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genloom.data.captions import CaptionCodec
from genloom.errors import GenloomError
from genloom.generate.imagine import encode_images
from genloom.generate.text_to_image import ImageGenerator, draw_images
from genloom.models.vqvae import VQVAE
from genloom.registry import LoadedClip, LoadedTextToImage


def check_same_image_tokenizer(a: VQVAE, b: VQVAE, a_name: str, b_name: str) -> None:
    """A one-line GenloomError unless the two VQ models are the same (same config and weights)."""
    same = a.config == b.config
    if same:
        theirs = b.state_dict()
        same = all(torch.equal(v.cpu(), theirs[k].cpu()) for k, v in a.state_dict().items())
    if not same:
        raise GenloomError(f"{a_name} and {b_name} use different VQ image tokenizers; train the reranker with "
                           "--image-tokenizer set to the text-to-image run's image_tokenizer/")


@torch.inference_mode()
def clip_scores(clip: LoadedClip, prompts: Sequence[str], codes: Tensor, batch_size: int = 256) -> Tensor:
    """(P, N) cosines of each prompt with its N candidates; codes (P * N, g, g) prompt-major."""
    if len(codes) % len(prompts):
        raise GenloomError(f"{len(prompts)} prompts do not divide {len(codes)} candidates")
    n = len(codes) // len(prompts)
    device = next(clip.model.parameters()).device
    text = CaptionCodec(clip.tokenizer, clip.model.config.text_len).encode(list(prompts))  # (P, Lt)
    was_training = clip.model.training
    clip.model.eval()
    try:
        text_embeddings = clip.model.encode_text(text.to(device)).repeat_interleave(n, dim=0)  # (P * N, E)
        image_embeddings = torch.cat([
            clip.model.encode_image(codes[i : i + batch_size].to(device)) for i in range(0, len(codes), batch_size)
        ])
    finally:
        clip.model.train(was_training)
    return (text_embeddings * image_embeddings).sum(-1).float().cpu().view(len(prompts), n)


@dataclass
class Reranked:
    images: np.ndarray  # (P * keep, H, W, 3) uint8, prompt-major, each prompt's best first
    codes: Tensor  # (P * keep, g, g)
    seeds: list[int] | None  # the seed that redraws each kept image alone; None without a seed
    scores: Tensor  # (P * keep,) the reranker's cosine of each kept image with its prompt


def imagine_best_of(
    generator: ImageGenerator,
    reranker: LoadedClip,
    prompts: Sequence[str],
    n_images: int,
    candidates: int,
    seed: int | None = None,
    **sampling: Any,
) -> Reranked:
    """`n_images` per prompt: the highest-scoring of `candidates` drawn per prompt by `draw_images` (with the
    method's `sampling` options)."""
    if candidates < n_images:
        raise GenloomError(f"reranking keeps {n_images} images of {candidates} candidates; draw at least as many")
    if isinstance(generator, LoadedTextToImage):
        check_same_image_tokenizer(generator.vq, reranker.vq, str(generator.path), str(reranker.path))
    images, drawn = draw_images(generator, prompts, candidates, seed=seed, **sampling)
    return keep_best(reranker, prompts, images, drawn, n_images, seed)


def keep_best(reranker: LoadedClip, prompts: Sequence[str], images: np.ndarray, codes: Tensor | None,
              n_images: int, seed: int | None) -> Reranked:
    """The `n_images` of each prompt's candidates (images (P * N, H, W, 3), prompt-major, candidate j of prompt p
    drawn with seed + p * N + j) that the reranker scores highest. codes: the token method's own codes of the
    images; None (diffusion): the reranker's VQ model codes their pixels."""
    candidates = len(images) // len(prompts)
    if codes is None:
        codes = encode_images(reranker.vq, images)  # (P * N, g * g)
    codes = codes.view(len(images), reranker.vq.config.grid_size, reranker.vq.config.grid_size)
    scores = clip_scores(reranker, prompts, codes)  # (P, N)
    order = scores.argsort(dim=1, descending=True)[:, :n_images]  # (P, keep)
    kept = (order + torch.arange(len(prompts))[:, None] * candidates).flatten()  # indices into the P * N candidates
    return Reranked(
        images=images[kept.numpy()],
        codes=codes[kept],
        seeds=None if seed is None else [seed + int(i) for i in kept],
        scores=scores.flatten()[kept],
    )
