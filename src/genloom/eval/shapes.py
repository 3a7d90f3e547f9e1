"""Caption alignment on the built-in shapes set: a small GenEval (Ghosh et al., 2023) without a detector.

The shapes palette is pure RGB colours on black or white, so objects are found by colour segmentation instead
of a learned detector: every pixel goes to the nearest palette colour (or to the background, or to nothing when
it is far from all of them), connected pixels of one colour form an object, and the object's shape comes from
how it fills its bounding box. Each image is then checked against its caption, as GenEval checks its prompts:
are the named colours, shapes and colour-shape pairs there, are there as many objects as named, and does the
stated relation hold. Scores are reported for seen and for held-out (colour, shape) combinations separately,
since the held-out ones measure compositional generalisation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from genloom.data.builtin_images import BACKGROUNDS, COLOURS, HELD_OUT, parse_caption
from genloom.errors import GenloomError

# Palette first, then backgrounds: a pixel's label is its index here, or -1 when it is near none of them.
_NAMES = (*COLOURS, *(f"background:{b}" for b in BACKGROUNDS))
_RGB = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # (K, 3)
# 8-connectivity: a triangle's one-pixel apex row stays attached to its body.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectedObject:
    """One connected region of a single palette colour."""

    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES, judged from the region's outline
    centre: tuple[float, float]  # (x, y) mean pixel position, pixels from the top-left corner
    area: int  # pixels in the region
    box: tuple[int, int, int, int]  # (left, top, right, bottom), inclusive pixel bounds


def _classify_shape(mask: np.ndarray, fill: float) -> str:
    """circle, square or triangle from a region's (h, w) bool mask and the share of its box it covers.

    Calibrated on `draw_scene` renders from 16x16 to 64x64: a square fills its box (1.0), a circle about pi/4
    (0.67-0.84 after aliasing), a triangle about half. Only a triangle has most of its pixels in one half of
    the box (|asymmetry| 0.4-0.5, against 0 for the symmetric shapes), which separates it from a small circle
    whose aliased fill can drop to triangle-like values.
    """
    h, _ = mask.shape
    rows = mask.sum(axis=1)  # (h,) pixels per row
    y = np.arange(h) - (h - 1) / 2  # row offset from the box's middle
    asymmetry = (rows[y > 0].sum() - rows[y < 0].sum()) / rows.sum()
    if abs(asymmetry) > 0.2:  # pointing up or (in a generated image) down
        return "triangle"
    return "square" if fill > 0.9 else "circle"


def parse_shapes_image(
    image: np.ndarray, tolerance: float = 120.0, min_area_fraction: float = 0.01
) -> list[DetectedObject]:
    """The objects in a (H, W, 3) uint8 shapes image, largest first.

    A pixel belongs to its nearest palette or background colour when it is within `tolerance` (Euclidean, in
    0..255 RGB units) of it and is ignored otherwise (blurry edges of a generated image). Regions smaller than
    `min_area_fraction` of the image are noise and dropped; the smallest built-in shape is about 3% of it.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        raise GenloomError(f"a shapes image must be (H, W, 3), got {tuple(image.shape)}")
    h, w = image.shape[:2]
    pixels = image.astype(np.float32)  # (H, W, 3)
    dist = np.linalg.norm(pixels[:, :, None, :] - _RGB, axis=-1)  # (H, W, K)
    labels = dist.argmin(axis=-1)  # (H, W)
    labels[dist.min(axis=-1) > tolerance] = -1
    # The background is whichever of black and white more pixels are nearest to.
    n_colours = len(COLOURS)
    background = _RGB[n_colours + np.bincount(labels[labels >= n_colours] - n_colours, minlength=2).argmax()]
    min_area = max(2, round(min_area_fraction * h * w))
    found = []
    for k, colour in enumerate(COLOURS):
        # Soft coverage: how far each pixel has moved from the background towards this colour, 0..1. Blur keeps
        # its sum over an object, so the fill it gives survives the blurry edges the hard mask loses.
        towards = _RGB[k] - background  # (3,)
        coverage = np.clip((pixels - background) @ towards / (towards @ towards), 0.0, 1.0)  # (H, W)
        regions, _ = ndimage.label(labels == k, structure=_EIGHT)
        for i, box in enumerate(ndimage.find_objects(regions), start=1):
            mask = regions[box] == i  # (h_box, w_box)
            area = int(mask.sum())
            if area < min_area:
                continue
            ys, xs = np.nonzero(mask)
            top, left = box[0].start, box[1].start
            # The region grown by a pixel (its blurred rim), less any pixel of another colour.
            rim = ndimage.binary_dilation(regions == i, structure=_EIGHT) & ((labels == k) | (labels < 0)
                                                                             | (labels >= n_colours))
            ry, rx = np.nonzero(rim & (coverage >= 0.5))  # the edge sits where coverage crosses one half
            if len(ry) == 0:  # an odd background (neither black nor white): fall back to the hard mask
                ry, rx = ys + top, xs + left
            box_area = (ry.max() - ry.min() + 1) * (rx.max() - rx.min() + 1)
            found.append(DetectedObject(
                colour=colour,
                shape=_classify_shape(mask, float(coverage[rim].sum() / box_area)),
                centre=(float(left + xs.mean()), float(top + ys.mean())),
                area=area,
                box=(left, top, box[1].stop - 1, box[0].stop - 1),
            ))
    return sorted(found, key=lambda o: -o.area)


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    """Whether centre `a` is `relation` ("above", "left of", ...) centre `b`: the offset is mostly along that way.

    Requiring the offset along the relation's axis to exceed the one across it makes the four relations
    mutually exclusive (the built-in scenes satisfy it with a factor of two to spare).
    """
    dx, dy = a[0] - b[0], a[1] - b[1]  # image y grows downwards
    along, across = {"above": (-dy, dx), "below": (dy, dx), "left of": (-dx, dy), "right of": (dx, dy)}[relation]
    return along > abs(across)


@dataclass(frozen=True)
class ShapesCheck:
    """How one image matches its caption."""

    colour: bool  # every colour the caption names is present
    shape: bool  # every shape the caption names is present (as many times as named), whatever its colour
    binding: bool  # every (colour, shape) pair the caption names is one object
    count: bool  # as many objects as the caption names
    relation: bool | None  # the stated relation holds between the two named objects; None for one object
    held_out: bool  # the caption names a HELD_OUT (colour, shape) pair

    @property
    def all_correct(self) -> bool:
        return self.binding and self.count and self.relation is not False


def check_shapes_image(image: np.ndarray, caption: str, objects: list[DetectedObject] | None = None) -> ShapesCheck:
    """Check one image against its shapes caption (`objects`: its `parse_shapes_image` result, if already known)."""
    wanted, relation = parse_caption(caption)
    found = parse_shapes_image(image) if objects is None else objects
    colours = {o.colour for o in found}
    shapes = Counter(o.shape for o in found)
    # The largest object of each (colour, shape) pair stands for it: a stray speck never decides the relation.
    pairs: dict[tuple[str, str], DetectedObject] = {}
    for o in found:
        pairs.setdefault((o.colour, o.shape), o)
    binding = all(p in pairs for p in wanted)
    holds = None
    if relation is not None:
        holds = binding and relation_holds(pairs[wanted[0]].centre, pairs[wanted[1]].centre, relation)
    return ShapesCheck(
        colour=all(c in colours for c, _ in wanted),
        shape=all(shapes[s] >= n for s, n in Counter(s for _, s in wanted).items()),
        binding=binding,
        count=len(found) == len(wanted),
        relation=holds,
        held_out=any(p in HELD_OUT for p in wanted),
    )


@dataclass
class ShapesAccuracy:
    """Shares of images (0..1) passing each check; NaN where no image applies."""

    images: int
    colour: float
    shape: float
    binding: float  # colour and shape on the same object
    count: float
    relation: float  # over the two-object captions only
    relation_images: int  # how many captions state a relation
    all_correct: float  # binding, count and (where stated) relation


def _accuracy(checks: Sequence[ShapesCheck]) -> ShapesAccuracy:
    def share(values: list[bool]) -> float:
        return float(np.mean(values)) if values else float("nan")

    relations = [c.relation for c in checks if c.relation is not None]
    return ShapesAccuracy(
        images=len(checks),
        colour=share([c.colour for c in checks]),
        shape=share([c.shape for c in checks]),
        binding=share([c.binding for c in checks]),
        count=share([c.count for c in checks]),
        relation=share(relations),
        relation_images=len(relations),
        all_correct=share([c.all_correct for c in checks]),
    )


@dataclass
class ShapesScore:
    """Caption alignment over all images, and over seen and held-out combinations separately."""

    overall: ShapesAccuracy
    seen: ShapesAccuracy  # captions whose (colour, shape) pairs all appear in training
    held_out: ShapesAccuracy  # captions naming at least one HELD_OUT pair
    checks: list[ShapesCheck]  # one per image, in order

    def format_report(self) -> str:
        """A few aligned lines for a terminal or a log: one column per group, percentages."""
        groups = (("all", self.overall), ("seen", self.seen), ("held-out", self.held_out))
        lines = ["shapes alignment " + "".join(f"{name:>10}" for name, _ in groups)]
        lines.append("  images         " + "".join(f"{g.images:>10}" for _, g in groups))
        for label, attr in (("colour", "colour"), ("shape", "shape"), ("colour+shape", "binding"),
                            ("count", "count"), ("relation", "relation"), ("all correct", "all_correct")):
            cells = "".join(f"{_percent(getattr(g, attr)):>10}" for _, g in groups)
            lines.append(f"  {label:<15}{cells}")
        return "\n".join(lines)


def _percent(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.1f}%"


def score_shapes(images: np.ndarray, captions: Sequence[str]) -> ShapesScore:
    """Check (N, H, W, 3) uint8 images against their shapes captions, e.g. "a red circle above a blue square"."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GenloomError(f"images must be (N, H, W, 3), got {tuple(images.shape)}")
    if len(images) != len(captions):
        raise GenloomError(f"{len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise GenloomError("no images to score")
    checks = [check_shapes_image(img, cap) for img, cap in zip(images, captions, strict=True)]
    return ShapesScore(
        overall=_accuracy(checks),
        seen=_accuracy([c for c in checks if not c.held_out]),
        held_out=_accuracy([c for c in checks if c.held_out]),
        checks=checks,
    )
