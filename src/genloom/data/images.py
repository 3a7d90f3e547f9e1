"""Image–caption sets: the shared container, deterministic splits, tensors, and the user's image folders.

A folder is read the way Hugging Face's `imagefolder` reads it: captions come from `metadata.jsonl` lines
(`{"file_name": "cat.png", "text": "a cat"}`, file names relative to that metadata file's folder), or from a
`.txt` file with the same stem next to each image. Every image becomes RGB (alpha composited on white),
resized so its short side equals the resolution and centre-cropped to a square.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from genloom.data.text import read_jsonl_records
from genloom.errors import GenloomError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
METADATA_FILE = "metadata.jsonl"


@dataclass
class ImageCaptionSet:
    """Images with one caption each, all the same size."""

    images: np.ndarray  # (N, H, W, 3) uint8 RGB, all the same size
    captions: list[str]  # N captions, one per image
    name: str  # e.g. "builtin:shapes", or the folder path
    # (N,) bool: True for images whose caption combination is held out of training (shapes only).
    held_out: np.ndarray | None = None
    skipped: int = 0  # unreadable image files left out while loading a folder; 0 elsewhere

    def __post_init__(self) -> None:
        images = self.images
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise GenloomError(f"{self.name}: images must be a (N, H, W, 3) uint8 array, got {images.dtype} "
                               f"{tuple(images.shape)}")
        if len(self.captions) != len(images):
            raise GenloomError(f"{self.name}: {len(images)} images but {len(self.captions)} captions")
        if self.held_out is not None and (self.held_out.shape != (len(images),) or self.held_out.dtype != bool):
            raise GenloomError(f"{self.name}: held_out must be a ({len(images)},) bool array, got "
                               f"{self.held_out.dtype} {tuple(self.held_out.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageCaptionSet:
        """The images at `indices`, in that order, with their captions and held-out flags."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageCaptionSet(
            images=self.images[idx],
            captions=[self.captions[i] for i in idx.tolist()],
            name=self.name,
            held_out=None if self.held_out is None else self.held_out[idx],
        )

    def split(
        self, val_fraction: float = 0.05, test_fraction: float = 0.0, seed: int = 0
    ) -> tuple[ImageCaptionSet, ImageCaptionSet, ImageCaptionSet]:
        """(train, val, test), disjoint and the same for the same seed.

        Images flagged `held_out` always go to test and never to train or val: they measure generalisation to
        unseen combinations. The others are shuffled and `val_fraction` / `test_fraction` of them go to val / test.
        """
        for what, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= f < 1.0:
                raise GenloomError(f"{what} ({f}) must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise GenloomError(f"val_fraction + test_fraction ({val_fraction + test_fraction}) must be below 1")
        held = np.zeros(len(self), dtype=bool) if self.held_out is None else self.held_out
        rest = np.flatnonzero(~held)
        rest = rest[np.random.default_rng(seed).permutation(len(rest))]
        n_val = round(len(rest) * val_fraction)
        n_test = round(len(rest) * test_fraction)
        if n_val + n_test >= len(rest):
            raise GenloomError(f"{self.name}: {len(rest)} trainable images are too few to split off "
                               f"{n_val} for validation and {n_test} for test")
        val, test = np.sort(rest[:n_val]), rest[n_val : n_val + n_test]
        # Sorted indices keep each split in the set's own order (stable captions order, readable listings).
        test = np.sort(np.concatenate([test, np.flatnonzero(held)]))
        return self.subset(np.sort(rest[n_val + n_test :])), self.subset(val), self.subset(test)

    def to_tensor(self, indices: Sequence[int] | np.ndarray | None = None) -> Tensor:
        """Images as float32 (N, 3, H, W) in [-1, 1] (all of them, or those at `indices`)."""
        images = self.images if indices is None else self.images[np.asarray(indices, dtype=np.int64)]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
        return x.float() / 127.5 - 1.0


def check_resolution(data: ImageCaptionSet | np.ndarray, resolution: int, expected_by: str = "the model") -> None:
    """Raise a one-line GenloomError unless the images are `resolution` x `resolution`."""
    images = data.images if isinstance(data, ImageCaptionSet) else data
    name = data.name if isinstance(data, ImageCaptionSet) else "images"
    h, w = int(images.shape[1]), int(images.shape[2])  # (N, H, W, 3)
    if (h, w) != (resolution, resolution):
        raise GenloomError(
            f"{name}: images are {h}x{w} but {expected_by} expects {resolution}x{resolution}; "
            f"load them at resolution {resolution}"
        )


# ---- folders -------------------------------------------------------------------------------------------


def _read_metadata(path: Path) -> list[tuple[Path, str]]:
    """(image path, caption) for each line of a metadata.jsonl; file names are relative to its folder."""
    entries = []
    for n, record in read_jsonl_records(path, ("file_name", "text")):
        image = path.parent / record["file_name"]
        if not image.is_file():
            raise GenloomError(f"{path}:{n}: no image file {record['file_name']!r}")
        if not record["text"].strip():
            raise GenloomError(f"{path}:{n}: empty caption for {record['file_name']!r}")
        entries.append((image, record["text"]))
    return entries


def _sidecar_caption(image: Path) -> str:
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        raise GenloomError(f"no caption for {image}: add it to {METADATA_FILE} or write {sidecar.name}")
    try:
        caption = sidecar.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise GenloomError(f"{sidecar} is not UTF-8 text") from None
    if not caption:
        raise GenloomError(f"empty caption in {sidecar}")
    return caption


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greys (e.g. 16-bit PNG): Pillow's convert("L") clips at 255 instead of rescaling.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(grey, 0, 255).round().astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: Path, resolution: int) -> np.ndarray:
    """One image as (resolution, resolution, 3) uint8: RGB, short side resized to `resolution`, centre-cropped.

    Raises OSError (or ValueError) for an unreadable or corrupt file.
    """
    with Image.open(path) as file:
        file.load()  # decodes the whole file here, so truncated data fails inside this function
        img = _to_rgb(ImageOps.exif_transpose(file))  # phone photos store their rotation in EXIF
    w, h = img.size
    side = min(w, h)
    # Cropping the centred square then resizing it is resizing the short side then cropping the centre. (Not
    # resize(box=...): its filter reads pixels outside the box, so the cropped-off border would bleed in.)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def load_image_folder(path: str | Path, resolution: int) -> ImageCaptionSet:
    """Every image under `path` (hidden files skipped) with its caption, at `resolution` x `resolution`.

    Images listed in a `metadata.jsonl` come in its line order, then the others sorted by path, each with the
    caption of its `.txt` sidecar. Unreadable images are left out and counted in `skipped`.
    """
    source = Path(path)
    if not source.exists():
        raise GenloomError(f"image folder {source} does not exist")
    if not source.is_dir():
        raise GenloomError(f"{source} is not a folder; pass a folder of images with captions")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise GenloomError(f"resolution ({resolution!r}) must be a positive integer")
    files = sorted(
        p for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )
    entries: list[tuple[Path, str]] = []
    for meta in (p for p in files if p.name == METADATA_FILE):
        entries.extend(_read_metadata(meta))
    listed = {image.resolve() for image, _ in entries}
    for image in files:
        if image.suffix.lower() in IMAGE_SUFFIXES and image.resolve() not in listed:
            entries.append((image, _sidecar_caption(image)))
    if not entries:
        raise GenloomError(f"folder {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images, captions, skipped = [], [], 0
    for image, caption in entries:
        try:
            images.append(load_image(image, resolution))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            # Corrupt, truncated or not an image at all (Pillow raises SyntaxError for some broken headers).
            skipped += 1
            continue
        captions.append(caption)
    if not images:
        raise GenloomError(f"none of the {skipped} images in {source} could be read")
    return ImageCaptionSet(np.stack(images), captions, name=str(source), skipped=skipped)
