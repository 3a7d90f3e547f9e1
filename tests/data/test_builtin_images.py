"""Built-in image sets: generated shapes scenes, scikit-learn digits, OpenMoji emoji."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from genloom.data.builtin_images import (
    BACKGROUNDS,
    COLOURS,
    DIGIT_WORDS,
    HELD_OUT,
    OPENMOJI_ATTRIBUTION,
    SHAPES,
    builtin_images,
    describe_scene,
    draw_scene,
    parse_caption,
    shapes_scenes,
)
from genloom.data.images import ImageCaptionSet
from genloom.errors import GenloomError

# ---- shapes --------------------------------------------------------------------------------------------


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _shape_from_mask(mask: np.ndarray) -> str:
    # Share of the bounding box the shape fills: square 1, circle ~pi/4, triangle ~1/2.
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"


def test_shapes_are_deterministic() -> None:
    a = builtin_images("shapes", n=50, seed=1)
    b = builtin_images("shapes", n=50, seed=1)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert np.array_equal(a.held_out, b.held_out)  # type: ignore[arg-type]
    c = builtin_images("shapes", n=50, seed=2)
    assert c.captions != a.captions
    assert a.images.shape == (50, 32, 32, 3) and a.name == "builtin:shapes"


def test_shapes_captions_match_the_pixels() -> None:
    # Read each image back by exact colour, as an evaluator would, and compare with its caption.
    data = builtin_images("shapes", n=120, seed=0, p_single=0.25)
    n_single = 0
    for image, caption in zip(data.images, data.captions, strict=True):
        objects, relation = parse_caption(caption)
        n_single += relation is None
        masks = []
        for colour, shape in objects:
            mask = (image == COLOURS[colour]).all(axis=-1)
            assert mask.sum() >= 8, caption
            assert _shape_from_mask(mask) == shape, caption
            masks.append(mask)
        # Everything else is background: flat colours, no anti-aliasing.
        assert (image[~np.logical_or.reduce(masks)] == BACKGROUNDS["black"]).all(), caption
        if relation is not None:
            (ax, ay), (bx, by) = _centroid(masks[0]), _centroid(masks[1])
            expected = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}
            assert expected[relation] > 2 and expected[relation] == max(expected.values()), caption
    assert 10 <= n_single <= 50  # ~25% of 120


def test_scenes_describe_the_drawing() -> None:
    scenes = shapes_scenes(n=30, resolution=48, seed=5)
    data = builtin_images("shapes", resolution=48, n=30, seed=5, background="white")
    assert data.captions == [describe_scene(s) for s in scenes]
    for scene, image in zip(scenes, data.images, strict=True):
        assert np.array_equal(image, draw_scene(scene, 48, "white"))
        for obj in scene.objects:
            x, y = obj.centre
            assert tuple(image[round(y), round(x)]) == COLOURS[obj.colour]
            # The object stays inside its square.
            mask = (image == COLOURS[obj.colour]).all(axis=-1)
            ys, xs = np.nonzero(mask)
            assert obj.left <= xs.min() and xs.max() < obj.left + obj.size
            assert obj.top <= ys.min() and ys.max() < obj.top + obj.size
    assert (data.images[:, 0, 0] == BACKGROUNDS["white"]).any()


def test_objects_sit_on_the_lattice() -> None:
    aligned = [o for s in shapes_scenes(n=200, resolution=32, seed=1) for o in s.objects]
    assert all(o.left % 4 == 0 and o.top % 4 == 0 for o in aligned)
    assert {o.size for o in aligned} == {8, 12}  # 25-40 % of 32, in multiples of 4
    free = [o for s in shapes_scenes(n=200, resolution=32, seed=1, lattice=1) for o in s.objects]
    assert {o.size for o in free} == set(range(8, 14)) and any(o.left % 4 for o in free)
    with pytest.raises(GenloomError, match="lattice"):
        shapes_scenes(n=2, lattice=0)
    with pytest.raises(GenloomError, match="at most resolution / 4"):
        shapes_scenes(n=2, resolution=32, lattice=9)


def test_held_out_combinations_never_in_train() -> None:
    data = builtin_images("shapes", n=400, seed=0)
    assert data.held_out is not None
    for caption, held in zip(data.captions, data.held_out, strict=True):
        objects, _ = parse_caption(caption)
        assert held == any(pair in HELD_OUT for pair in objects), caption
    assert 0.15 < data.held_out.mean() < 0.45
    train, val, _ = data.split(val_fraction=0.1, seed=0)
    seen = {pair for caption in train.captions + val.captions for pair in parse_caption(caption)[0]}
    assert not seen & set(HELD_OUT)
    # Every colour and every shape still appears in training, in other pairs.
    assert {c for c, _ in seen} == set(COLOURS) and {s for _, s in seen} == set(SHAPES)


def test_parse_caption_inverts_describe() -> None:
    assert parse_caption("a red circle above a blue square") == ([("red", "circle"), ("blue", "square")], "above")
    assert parse_caption("a green triangle") == ([("green", "triangle")], None)
    with pytest.raises(GenloomError, match="not a shapes caption"):
        parse_caption("a purple circle")


# ---- digits --------------------------------------------------------------------------------------------


def test_digits() -> None:
    data = builtin_images("digits")
    assert data.images.shape == (1797, 16, 16, 3) and data.name == "builtin:digits"
    assert set(data.captions) == {f"the digit {w}" for w in DIGIT_WORDS}
    assert data.captions[7] == "the digit seven"  # load_digits() is ordered 0..9, 0..9, ...
    assert (data.images[..., 0] == data.images[..., 2]).all()  # grey
    assert data.images[:, 0, 0].min() == 255  # the corners are blank paper
    assert data.images.min() == 0  # full ink is black
    small = builtin_images("digits", resolution=8)
    # Nearest upscaling by 2 repeats each original pixel.
    assert np.array_equal(data.images, small.images.repeat(2, axis=1).repeat(2, axis=2))
    smooth = builtin_images("digits", resolution=24, resample="bilinear")
    assert smooth.images.shape[1:] == (24, 24, 3) and len(np.unique(smooth.images)) > 17


# ---- emoji ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji_set() -> ImageCaptionSet:
    return builtin_images("emoji")


def test_emoji_render_in_colour(emoji_set: ImageCaptionSet) -> None:
    images = emoji_set.images.astype(np.int16)
    assert images.shape[1:] == (32, 32, 3) and len(emoji_set) >= 500
    assert len(set(emoji_set.captions)) == len(emoji_set)
    ink = (images.min(axis=-1) < 240).mean(axis=(1, 2))  # share of non-white pixels per image
    assert ink.min() > 0.005
    assert (images[:, 0, 0] == 255).all()  # white background
    chroma = (images.max(axis=-1) - images.min(axis=-1)).max(axis=(1, 2))
    assert (chroma > 60).mean() > 0.6  # colour glyphs, not a black-only fallback font
    # The set credits OpenMoji (CC BY-SA), and so does every subset and split of it.
    assert emoji_set.attribution == emoji_set.split(0.1)[0].attribution == OPENMOJI_ATTRIBUTION


def test_emoji_names_from_unicodedata(emoji_set: ImageCaptionSet) -> None:
    names = {unicodedata.name(chr(cp)).lower() for cp in range(0x20000) if unicodedata.name(chr(cp), "")}
    assert set(emoji_set.captions) <= names
    apple = emoji_set.images[emoji_set.captions.index("red apple")].astype(np.int16)
    r, g, b = apple[..., 0], apple[..., 1], apple[..., 2]
    assert ((r > 150) & (g < 100) & (b < 100)).mean() > 0.1  # mostly red
    assert "cat face" in emoji_set.captions and "emoji modifier fitzpatrick type-4" not in emoji_set.captions


def test_emoji_cldr_names() -> None:
    data = builtin_images("emoji", resolution=16, names="cldr")
    assert data.images.shape[1:] == (16, 16, 3)
    assert "red apple" in data.captions and "red heart" in data.captions


# ---- registry ------------------------------------------------------------------------------------------


def test_builtin_errors() -> None:
    with pytest.raises(GenloomError, match="unknown built-in image set 'cifar'; choose from: shapes, digits, emoji"):
        builtin_images("cifar")
    with pytest.raises(GenloomError, match="has no option 'colour'; options: n, seed, p_single, background"):
        builtin_images("shapes", colour="red")
    with pytest.raises(GenloomError, match="unknown background 'pink'; choose from: black, white"):
        builtin_images("shapes", n=2, background="pink")
    with pytest.raises(GenloomError, match=r"resolution \(8\) must be an integer >= 16"):
        builtin_images("shapes", resolution=8, n=2)
    with pytest.raises(GenloomError, match=r"n \(0\) must be"):
        builtin_images("shapes", n=0)
    with pytest.raises(GenloomError, match="unknown resample 'area'; choose from: nearest, bilinear, bicubic"):
        builtin_images("digits", resample="area")
    with pytest.raises(GenloomError, match="unknown emoji names 'ja'; choose from: unicode, cldr"):
        builtin_images("emoji", names="ja")
