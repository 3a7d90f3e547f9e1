"""Text -> image with a DALL-E style model: sample image tokens, decode them with the VQ model, save PNGs.

Sampling is KV-cached: the caption is prefilled once, then each of the grid_size**2 image tokens costs one
single-position step. Classifier-free guidance (Ho & Salimans 2022; used for autoregressive image models by
Gafni et al. 2022, "Make-A-Scene") runs each image's conditional row and its unconditional row (the empty
caption the model saw through caption dropout) in one batch and samples from
    uncond + scale * (cond - uncond):
scale 1 is plain conditional sampling (the unconditional rows are then skipped), scale 0 ignores the prompt.

Image i of a call (prompt-major: all images of prompt 0, then of prompt 1, ...) samples with its own generator
seeded `seed + i`, so it is the same image whether made alone (with seed + i) or in a batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from torch import Tensor
from tqdm import tqdm

import genloom
from genloom.data.builtin_images import OPENMOJI_ATTRIBUTION
from genloom.errors import GenloomError
from genloom.generate.sampling import SamplingConfig, choose_tokens
from genloom.models.dalle import Dalle, check_image_tokenizer
from genloom.models.vqvae import VQVAE
from genloom.tokenizers import Tokenizer
from genloom.train.text_to_image import CaptionCodec

EMOJI_DATA = "builtin:emoji"


def codes_to_images(vq: VQVAE, codes: Tensor, batch_size: int = 64) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3) of codes (N, g, g), decoded in batches."""
    device = next(vq.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(codes), batch_size):
            pixels = vq.decode(codes[i : i + batch_size].to(device)).float()  # (b, 3, H, W) in [-1, 1]
            pixels = ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
            out.append(pixels.permute(0, 2, 3, 1).cpu().numpy())  # (b, H, W, 3)
    return np.concatenate(out)


@torch.inference_mode()
def sample_image_tokens(
    model: Dalle,
    text: Tensor,
    sampling: SamplingConfig,
    guidance_scale: float = 1.0,
    empty_caption: Tensor | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> Tensor:
    """Image tokens (B, grid**2) for captions text (B, Lt); row i samples with seed sampling.seed + i.

    empty_caption (Lt,): the unconditional caption, needed when guidance_scale != 1.
    """
    cfg = model.config
    batch = text.shape[0]
    device = model.text_embedding.weight.device
    guided = guidance_scale != 1.0
    if guided:
        if empty_caption is None:
            raise GenloomError("classifier-free guidance needs the empty caption")
        text = torch.cat([text, empty_caption.expand(batch, -1)])  # (2B, Lt): conditional rows, then unconditional
    text = text.to(device)
    generators = None
    if sampling.seed is not None:
        generators = [torch.Generator(device=device).manual_seed(sampling.seed + row) for row in range(batch)]

    caches = model.make_kv_caches(text.shape[0]) if use_cache else None
    tokens = torch.zeros(batch, 0, dtype=torch.long, device=device)  # (B, t) sampled so far

    def next_logits() -> Tensor:
        fed = torch.cat([tokens, tokens]) if guided else tokens
        if caches is None:  # recompute the whole prefix, as a model without a cache must
            logits = model.next_image_logits(text, fed)
        elif tokens.shape[1] == 0:
            logits = model.next_image_logits(text, None, caches)  # prefill the caption
        else:
            logits = model.next_image_logits(None, fed[:, -1:], caches)
        logits = logits.float()  # (B or 2B, V)
        if not guided:
            return logits
        cond, uncond = logits[:batch], logits[batch:]
        return uncond + guidance_scale * (cond - uncond)

    for _ in tqdm(range(cfg.image_len), desc="imagine", unit="tok", disable=not progress, leave=False):
        chosen = choose_tokens(next_logits(), sampling, generators)  # (B,)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
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
) -> tuple[np.ndarray, Tensor]:
    """`n_images` images per prompt: uint8 RGB (P * n_images, H, W, 3) prompt-major, and their codes (N, g, g).

    temperature 0 is greedy; top_k / top_p filter as for text. guidance_scale: 1 = conditional, 0 =
    unconditional, > 1 = follow the prompt more closely. seed: image i uses seed + i (None: torch's global RNG).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise GenloomError("no prompts to imagine")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise GenloomError(f"n_images ({n_images!r}) must be an integer >= 1")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise GenloomError(f"guidance scale ({guidance_scale}) must be >= 0")
    cfg = model.config
    check_image_tokenizer(vq_model.config, cfg, "the VQ model", "the model")
    sampling = SamplingConfig(
        max_new_tokens=cfg.image_len, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed
    )
    codec = CaptionCodec(text_tokenizer, cfg.text_len)
    text = codec.encode(list(prompts)).repeat_interleave(n_images, dim=0)  # (N, Lt), prompt-major
    was_training = model.training
    model.eval()
    try:
        tokens = sample_image_tokens(
            model, text, sampling, guidance_scale, codec.empty()[0], progress=progress, use_cache=use_cache
        )
    finally:
        model.train(was_training)
    codes = tokens.view(-1, cfg.grid_size, cfg.grid_size).cpu()  # (N, g, g)
    return codes_to_images(vq_model, codes), codes


# ---- saving -------------------------------------------------------------------------------------------------


@dataclass
class SavedImages:
    images: list[Path]  # one PNG per image
    sidecars: list[Path]  # one JSON per image, next to its PNG
    grid: Path  # all images in one PNG


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "image"


def image_grid(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Images (N, H, W, 3) tiled row by row on white with `gap` pixels between them; columns default ~sqrt(N)."""
    n, h, w, _ = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return grid


def _png_info(record: dict[str, Any]) -> PngInfo:
    """Text chunks: prompt(s) and attribution as plain text, every parameter as one JSON `parameters` chunk."""
    info = PngInfo()
    for key in ("prompt", "attribution"):
        if record.get(key) is not None:
            info.add_text(key, record[key])  # Pillow switches to UTF-8 iTXt by itself when Latin-1 cannot encode it
    if "prompts" in record:
        info.add_text("prompts", json.dumps(record["prompts"], ensure_ascii=False))
    info.add_text("parameters", json.dumps(record["parameters"], ensure_ascii=False, sort_keys=True))
    info.add_text("Software", f"genloom {genloom.__version__}")
    return info


def read_png_metadata(path: Path) -> dict[str, Any]:
    """The record `save_images` wrote into a PNG: prompt (or prompts), attribution if any, parameters."""
    with Image.open(path) as img:
        text = dict(getattr(img, "text", {}))
    record: dict[str, Any] = {k: text[k] for k in ("prompt", "attribution") if k in text}
    if "prompts" in text:
        record["prompts"] = json.loads(text["prompts"])
    record["parameters"] = json.loads(text.get("parameters", "{}"))
    return record


def save_images(
    images: np.ndarray,
    out_dir: Path,
    prompts: Sequence[str],
    params: dict[str, Any],
    data_name: str | None = None,
    attribution: str | None = None,
    columns: int | None = None,
    image_params: Sequence[dict[str, Any]] | None = None,
) -> SavedImages:
    """One PNG + JSON sidecar per image and a `grid.png`, each carrying the prompt and the sampling parameters.

    prompts: one per image, or one per prompt of a prompt-major batch (each then covers N / P images).
    params: sampling settings (temperature, top_k, top_p, guidance_scale, seed, model, ...); when `seed` is set
    each image also records its own `image_seed` = seed + i, which reproduces it alone. The attribution (given,
    or OpenMoji's when `data_name` is builtin:emoji) goes into every file, as CC BY-SA requires.
    image_params: one dict per image that goes on top of `params` (e.g. the `image_seed` and `clip_score` of a
    reranked image).
    """
    n = len(images)
    if n == 0:
        raise GenloomError("no images to save")
    if not prompts or n % len(prompts):
        raise GenloomError(f"{len(prompts)} prompts do not divide {n} images")
    if image_params is not None and len(image_params) != n:
        raise GenloomError(f"{len(image_params)} sets of image parameters for {n} images")
    per_prompt = n // len(prompts)
    per_image = [prompts[i // per_prompt] for i in range(n)]
    if attribution is None and data_name == EMOJI_DATA:
        attribution = OPENMOJI_ATTRIBUTION
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = params.get("seed")
    pngs, sidecars = [], []
    for i, (image, prompt) in enumerate(zip(images, per_image, strict=True)):
        parameters = {**params, **({"image_seed": seed + i} if isinstance(seed, int) else {}), "index": i,
                      **(image_params[i] if image_params is not None else {})}
        record: dict[str, Any] = {"prompt": prompt, "parameters": parameters}
        if data_name is not None:
            parameters.setdefault("data", data_name)
        if attribution is not None:
            record["attribution"] = attribution
        stem = f"{i:03d}-{_slug(prompt)}"
        png, sidecar = out_dir / f"{stem}.png", out_dir / f"{stem}.json"
        Image.fromarray(image, "RGB").save(png, pnginfo=_png_info(record))
        sidecar.write_text(json.dumps({**record, "file": png.name}, indent=2, ensure_ascii=False) + "\n")
        pngs.append(png)
        sidecars.append(sidecar)
    grid_record: dict[str, Any] = {"prompts": per_image, "parameters": dict(params)}
    if data_name is not None:
        grid_record["parameters"].setdefault("data", data_name)
    if attribution is not None:
        grid_record["attribution"] = attribution
    grid = out_dir / "grid.png"
    # One row per prompt when there are several prompts with several images each.
    columns = columns or (per_prompt if len(prompts) > 1 and per_prompt > 1 else None)
    Image.fromarray(image_grid(images, columns), "RGB").save(grid, pnginfo=_png_info(grid_record))
    return SavedImages(pngs, sidecars, grid)
