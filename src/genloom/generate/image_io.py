"""Saving generated images, whatever made them: PNGs carrying their prompt and parameters, JSON sidecars, a grid.

Every PNG holds its record in text chunks (`prompt`, `attribution`, and every parameter as one JSON
`parameters` chunk), and a sidecar `NNN-slug.json` holds the same record, so an image found on its own still
says how to make it again: with a `seed`, each image also records its own `image_seed` (seed + i), which
redraws it alone. The output folder is replaced as a whole, and only when it holds nothing but the files an
earlier call wrote (see `genloom.outputs`).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import genloom
from genloom.checkpoint import atomic_directory
from genloom.errors import GenloomError

GRID_FILE = "grid.png"
_IMAGE_FILE = re.compile(r"^\d{3,}-[a-z0-9-]+\.(png|json)$")
_PREVIEW_FILE = re.compile(r"^preview-step-\d{3,}\.png$")


def preview_file(step: int) -> str:
    """The name of the grid of predicted clean images after sampling step `step`."""
    return f"preview-step-{step:03d}.png"


def is_image_folder(path: Path) -> bool:
    """Whether `path` holds only what `save_images` writes (NNN-slug.png / .json, grid.png, previews)."""
    return all(p.is_file() and (p.name == GRID_FILE or _IMAGE_FILE.match(p.name) or _PREVIEW_FILE.match(p.name))
               for p in path.iterdir())


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


def image_record(prompt: str, parameters: dict[str, Any], data_name: str | None = None,
                 attribution: str | None = None) -> dict[str, Any]:
    """What one image's PNG and sidecar carry: its prompt, its parameters (with the data the model learnt
    from), and the credit the data's licence asks for."""
    record: dict[str, Any] = {"prompt": prompt, "parameters": dict(parameters)}
    if data_name is not None:
        record["parameters"].setdefault("data", data_name)
    if attribution is not None:
        record["attribution"] = attribution
    return record


def png_bytes(image: np.ndarray, record: dict[str, Any]) -> bytes:
    """One uint8 RGB image (H, W, 3) as PNG bytes carrying `record` (see `image_record`), as `save_images`
    writes it to disk: what the HTTP server returns."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", pnginfo=_png_info(record))
    return buffer.getvalue()


def read_png_metadata(path: Path | io.BytesIO) -> dict[str, Any]:
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
    previews: dict[int, np.ndarray] | None = None,
) -> SavedImages:
    """One PNG + JSON sidecar per image and a `grid.png` in `out_dir`, each carrying the prompt and parameters.

    prompts: one per image, or one per prompt of a prompt-major batch (each then covers N / P images).
    params: sampling settings (temperature, top_k, top_p, guidance_scale, seed, model, ...); when `seed` is set
    each image also records its own `image_seed` = seed + i, which reproduces it alone. `data_name` (the data the
    model learnt from) is recorded as a parameter; `attribution`, the credit the data's licence asks for, goes
    into every file. image_params: one dict per image that goes on top of `params` (e.g. the `image_seed` and
    `clip_score` of a reranked image). previews: step -> the images as the sampler predicted them after that
    step, saved as grids `preview-step-NNN.png` (diffusion's --preview-every).

    `out_dir` may be new, empty or an earlier output of this function, which is replaced as a whole.
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
    seed = params.get("seed")
    stems = [f"{i:03d}-{_slug(prompt)}" for i, prompt in enumerate(per_image)]

    def write(folder: Path) -> None:
        for i, (image, prompt) in enumerate(zip(images, per_image, strict=True)):
            parameters = {**params, **({"image_seed": seed + i} if isinstance(seed, int) else {}), "index": i,
                          **(image_params[i] if image_params is not None else {})}
            record = image_record(prompt, parameters, data_name, attribution)
            png = folder / f"{stems[i]}.png"
            Image.fromarray(image, "RGB").save(png, pnginfo=_png_info(record))
            sidecar = json.dumps({**record, "file": png.name}, indent=2, ensure_ascii=False) + "\n"
            (folder / f"{stems[i]}.json").write_text(sidecar, encoding="utf-8")
        grid_record: dict[str, Any] = {"prompts": per_image, "parameters": dict(params)}
        if data_name is not None:
            grid_record["parameters"].setdefault("data", data_name)
        if attribution is not None:
            grid_record["attribution"] = attribution
        # One row per prompt when there are several prompts with several images each.
        grid_columns = columns or (per_prompt if len(prompts) > 1 and per_prompt > 1 else None)
        Image.fromarray(image_grid(images, grid_columns), "RGB").save(folder / GRID_FILE,
                                                                       pnginfo=_png_info(grid_record))
        for step, predicted in (previews or {}).items():
            Image.fromarray(image_grid(predicted, grid_columns), "RGB").save(
                folder / preview_file(step), pnginfo=_png_info({**grid_record, "preview_step": step}))

    out_dir = Path(out_dir)
    atomic_directory(out_dir, write, is_image_folder, "a folder of images genloom generated", "images to")
    return SavedImages([out_dir / f"{s}.png" for s in stems], [out_dir / f"{s}.json" for s in stems],
                       out_dir / GRID_FILE)
