import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from genloom.data.builtin_images import Scene, SceneObject, draw_scene, shapes_images, shapes_scenes
from genloom.errors import GenloomError
from genloom.eval.shapes import check_shapes_image, parse_shapes_image, relation_holds, score_shapes


@pytest.mark.parametrize("resolution,background", [(32, "black"), (32, "white"), (16, "black")])
def test_renders_of_the_builtin_set_score_all_correct(resolution, background):
    data = shapes_images(resolution=resolution, n=300, seed=3, background=background)
    score = score_shapes(data.images, data.captions)
    assert score.overall.all_correct >= 0.99
    assert score.seen.all_correct >= 0.99 and score.held_out.all_correct >= 0.99
    # Groups follow the data set's own held-out flags.
    assert score.held_out.images == int(data.held_out.sum()) > 0
    assert score.seen.images + score.held_out.images == score.overall.images == 300
    assert score.overall.relation_images == sum(" of " in c or " above " in c or " below " in c for c in data.captions)


def test_parser_finds_colour_shape_and_centre():
    scene = Scene((SceneObject("triangle", "green", 2, 3, 10), SceneObject("circle", "magenta", 18, 16, 12)), "left of")
    found = parse_shapes_image(draw_scene(scene, 32, "white"))
    assert sorted((o.colour, o.shape) for o in found) == [("green", "triangle"), ("magenta", "circle")]
    circle = next(o for o in found if o.shape == "circle")
    assert circle.centre == pytest.approx(scene.objects[1].centre, abs=0.5)
    assert circle.box == (18, 16, 29, 27)


def test_parser_tolerates_pixel_noise_and_drops_specks():
    rng = np.random.default_rng(0)
    data = shapes_images(resolution=32, n=100, seed=4)
    noisy = np.clip(data.images + rng.normal(0, 25, data.images.shape), 0, 255).astype(np.uint8)
    noisy[:, 0, 0] = (0, 0, 255)  # a one-pixel blue speck in every image is noise, not an object
    assert score_shapes(noisy, data.captions).overall.all_correct >= 0.95


@pytest.mark.parametrize("background", ["black", "white"])
def test_parser_tolerates_blur(background):
    # A generated image is soft-edged: a one-pixel Gaussian blur at 32x32 rounds a 8-pixel square's corners.
    data = shapes_images(resolution=32, n=150, seed=7, background=background)
    blurred = ndimage.gaussian_filter(data.images.astype(float), sigma=(0, 1, 1, 0)).round().astype(np.uint8)
    assert score_shapes(blurred, data.captions).overall.all_correct >= 0.97


def _two_object_scenes(n=200):
    return [s for s in shapes_scenes(n, 32, seed=5, p_single=0.0)]


def test_swapped_colours_fail_binding():
    scenes = _two_object_scenes()
    swapped = [Scene((dataclasses.replace(s.objects[0], colour=s.objects[1].colour),
                      dataclasses.replace(s.objects[1], colour=s.objects[0].colour)), s.relation) for s in scenes]
    images = np.stack([draw_scene(s) for s in swapped])
    score = score_shapes(images, [s.caption for s in scenes])
    assert score.overall.colour == score.overall.shape == score.overall.count == 1.0
    assert score.overall.all_correct == 0.0
    differ = [c for c, s in zip(score.checks, scenes, strict=True) if s.objects[0].shape != s.objects[1].shape]
    assert differ and not any(c.binding for c in differ)


def test_swapped_positions_fail_the_relation():
    scenes = _two_object_scenes()
    # Mirroring along the relation's axis swaps the objects' places and keeps their colours and shapes.
    images = np.stack([draw_scene(s)[::-1] if s.relation in ("above", "below") else draw_scene(s)[:, ::-1]
                       for s in scenes])
    score = score_shapes(images, [s.caption for s in scenes])
    assert score.overall.binding == 1.0  # a downward triangle is still a triangle
    assert score.overall.relation == 0.0 and score.overall.all_correct == 0.0


def test_wrong_shape_missing_object_and_extra_object_fail():
    a = SceneObject("square", "red", 2, 2, 10)
    b = SceneObject("circle", "cyan", 2, 20, 10)
    caption = "a red square above a cyan circle"
    assert check_shapes_image(draw_scene(Scene((a, b), "above")), caption).all_correct
    wrong_shape = check_shapes_image(draw_scene(Scene((a, dataclasses.replace(b, shape="triangle")), "above")), caption)
    assert not wrong_shape.shape and not wrong_shape.binding and wrong_shape.colour
    missing = check_shapes_image(draw_scene(Scene((a,))), caption)
    assert not missing.colour and not missing.count and missing.relation is False
    extra = check_shapes_image(draw_scene(Scene((a,))), "a red square")
    assert extra.all_correct and extra.relation is None
    extra = check_shapes_image(draw_scene(Scene((a, b), "above")), "a red square")
    assert extra.binding and not extra.count and not extra.all_correct


def test_relation_holds_is_exclusive():
    assert relation_holds((5, 0), (5, 10), "above") and relation_holds((5, 10), (5, 0), "below")
    assert relation_holds((0, 5), (10, 6), "left of") and not relation_holds((0, 5), (10, 6), "above")
    assert not relation_holds((0, 0), (10, 10), "left of")  # diagonal: neither way dominates


def test_report_and_errors():
    data = shapes_images(resolution=32, n=20, seed=6)
    report = score_shapes(data.images, data.captions).format_report()
    assert "held-out" in report and "all correct" in report and "100.0%" in report
    with pytest.raises(GenloomError, match="not a shapes caption"):
        score_shapes(data.images[:1], ["a purple circle"])
    with pytest.raises(GenloomError, match="2 images but 1 captions"):
        score_shapes(data.images[:2], data.captions[:1])
