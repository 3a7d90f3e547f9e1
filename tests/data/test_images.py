"""Image–caption sets: folders (metadata.jsonl, .txt sidecars), RGB conversion, resize/crop, splits, tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genloom.data.image_sets import load_images
from genloom.data.images import ImageCaptionSet, check_resolution, load_image_folder, mirror_caption, with_mirrors
from genloom.errors import GenloomError
from genloom.eval.shapes import check_shapes_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _png(path: Path, size: tuple[int, int] = (12, 12), colour: tuple[int, ...] = RED, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def _write_metadata(folder: Path, rows: list[dict[str, str]]) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _set(n: int, held_out: list[bool] | None = None) -> ImageCaptionSet:
    images = np.arange(n * 2 * 2 * 3, dtype=np.int64).reshape(n, 2, 2, 3).astype(np.uint8)
    return ImageCaptionSet(images, [f"image {i}" for i in range(n)], "test",
                           None if held_out is None else np.array(held_out, dtype=bool))


# ---- folders -------------------------------------------------------------------------------------------


def test_folder_with_metadata_jsonl(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", colour=RED)
    _png(tmp_path / "sub" / "b.jpg", size=(20, 10), colour=BLUE)
    _png(tmp_path / "c.png", colour=(0, 0, 0, 0), mode="RGBA")  # fully transparent -> white
    _png(tmp_path / "d.png", colour=128, mode="L")
    _write_metadata(tmp_path, [
        {"file_name": "sub/b.jpg", "text": "a blue box"},
        {"file_name": "a.png", "text": "a red box"},
        {"file_name": "c.png", "text": "nothing"},
        {"file_name": "d.png", "text": "grey"},
    ])
    data = load_image_folder(tmp_path, 8)
    assert data.images.shape == (4, 8, 8, 3) and data.images.dtype == np.uint8
    assert data.captions == ["a blue box", "a red box", "nothing", "grey"]  # metadata line order
    assert data.skipped == 0 and data.name == str(tmp_path) and data.held_out is None
    assert np.abs(data.images[0].astype(int) - BLUE).max() <= 2  # JPEG is lossy
    assert (data.images[1] == RED).all()
    assert (data.images[2] == WHITE).all()
    assert (data.images[3] == 128).all()


def test_folder_with_txt_sidecars(tmp_path: Path) -> None:
    _png(tmp_path / "cat.png", colour=RED)
    (tmp_path / "cat.txt").write_text("a red cat\n", encoding="utf-8")
    _png(tmp_path / "deep" / "dog.png", colour=GREEN)
    (tmp_path / "deep" / "dog.txt").write_text("a green dog", encoding="utf-8")
    _png(tmp_path / ".hidden" / "x.png")  # hidden folders are not read (and need no caption)
    data = load_image_folder(tmp_path, 4)
    assert data.captions == ["a red cat", "a green dog"]
    assert (data.images[1] == GREEN).all()


def test_metadata_and_sidecars_mix(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("from the sidecar", encoding="utf-8")
    _write_metadata(tmp_path, [{"file_name": "a.png", "text": "from metadata"}])
    assert load_image_folder(tmp_path, 4).captions == ["from metadata", "from the sidecar"]


def test_corrupt_images_are_skipped_and_counted(tmp_path: Path) -> None:
    _png(tmp_path / "good.png")
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    truncated = _png(tmp_path / "truncated.png", size=(64, 64), colour=BLUE).read_bytes()
    (tmp_path / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    for stem in ("good", "garbage", "truncated"):
        (tmp_path / f"{stem}.txt").write_text(stem, encoding="utf-8")
    data = load_image_folder(tmp_path, 4)
    assert data.captions == ["good"] and data.skipped == 2


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(GenloomError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 8)
    with pytest.raises(GenloomError, match="no images"):
        load_image_folder(tmp_path, 8)
    _png(tmp_path / "lonely.png")
    with pytest.raises(GenloomError, match=r"no caption for .*lonely\.png"):
        load_image_folder(tmp_path, 8)
    _write_metadata(tmp_path, [{"file_name": "lonely.png", "text": "ok"}, {"file_name": "gone.png", "text": "x"}])
    with pytest.raises(GenloomError, match=r"metadata\.jsonl:2: no image file 'gone\.png'"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "lonely.png"}\n', encoding="utf-8")
    with pytest.raises(GenloomError, match=r"metadata\.jsonl:1: expected"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "lonely.txt").write_text("caption", encoding="utf-8")
    with pytest.raises(GenloomError, match="resolution"):
        load_image_folder(tmp_path, 0)
    (tmp_path / "lonely.png").write_bytes(b"broken")
    with pytest.raises(GenloomError, match="none of the 1 images"):
        load_image_folder(tmp_path, 8)


def test_resize_short_side_then_centre_crop(tmp_path: Path) -> None:
    # A wide image in three vertical bands and a tall one in three horizontal bands: only the middle survives.
    wide = Image.new("RGB", (60, 20), RED)
    wide.paste(GREEN, (20, 0, 40, 20))
    wide.paste(BLUE, (40, 0, 60, 20))
    wide.save(tmp_path / "wide.png")
    tall = Image.new("RGB", (20, 60), RED)
    tall.paste(BLUE, (0, 20, 20, 40))
    tall.save(tmp_path / "tall.png")
    # Four quadrants survive downscaling 40 -> 4 in place.
    quads = Image.new("RGB", (40, 40), RED)
    quads.paste(GREEN, (20, 0, 40, 20))
    quads.paste(BLUE, (0, 20, 20, 40))
    quads.save(tmp_path / "quads.png")
    for stem in ("wide", "tall", "quads"):
        (tmp_path / f"{stem}.txt").write_text(stem, encoding="utf-8")
    data = load_image_folder(tmp_path, 4)
    by_caption = dict(zip(data.captions, data.images, strict=True))
    assert (by_caption["wide"] == GREEN).all()  # no red or blue bleeds in from the cropped-off sides
    assert (by_caption["tall"] == BLUE).all()
    q = by_caption["quads"]
    assert (q[0, 0] == RED).all() and (q[0, 3] == GREEN).all() and (q[3, 0] == BLUE).all() and (q[3, 3] == RED).all()


# ---- the container -------------------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete() -> None:
    data = _set(100)
    train, val, test = data.split(val_fraction=0.1, test_fraction=0.2, seed=3)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    names = [set(s.captions) for s in (train, val, test)]
    assert not names[0] & names[1] and not names[0] & names[2] and not names[1] & names[2]
    assert names[0] | names[1] | names[2] == set(data.captions)
    again = data.split(val_fraction=0.1, test_fraction=0.2, seed=3)
    assert [s.captions for s in again] == [s.captions for s in (train, val, test)]
    assert all(np.array_equal(a.images, b.images) for a, b in zip(again, (train, val, test), strict=True))
    assert data.split(val_fraction=0.1, test_fraction=0.2, seed=4)[1].captions != val.captions
    # Images stay paired with their captions.
    i = data.captions.index(val.captions[0])
    assert np.array_equal(val.images[0], data.images[i])


def test_split_keeps_held_out_images_in_test() -> None:
    held = [i % 5 == 0 for i in range(50)]  # 10 held out
    train, val, test = _set(50, held).split(val_fraction=0.1, seed=0)
    assert (len(train), len(val), len(test)) == (36, 4, 10)
    assert test.held_out is not None and test.held_out.all()
    assert train.held_out is not None and not train.held_out.any()
    assert set(test.captions) == {f"image {i}" for i in range(0, 50, 5)}


def test_split_errors() -> None:
    with pytest.raises(GenloomError, match="val_fraction"):
        _set(10).split(val_fraction=1.0)
    with pytest.raises(GenloomError, match="must be below 1"):
        _set(10).split(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(GenloomError, match="too few"):
        _set(2).split(val_fraction=0.5, test_fraction=0.4)


def test_to_tensor_range_shape_and_indices() -> None:
    images = np.zeros((3, 2, 4, 3), dtype=np.uint8)
    images[1] = 255
    images[2, 0, 1] = (255, 0, 0)
    data = ImageCaptionSet(images, ["a", "b", "c"], "t")
    x = data.to_tensor()
    assert x.shape == (3, 3, 2, 4) and x.dtype.is_floating_point
    assert x[0].eq(-1).all() and x[1].eq(1).all()
    assert x[2, :, 0, 1].tolist() == [1.0, -1.0, -1.0]  # channels first
    assert data.to_tensor([2, 1]).equal(x[[2, 1]])
    assert data.resolution == (2, 4) and len(data) == 3


def test_check_resolution_and_validation() -> None:
    data = _set(2)
    check_resolution(data, 2)
    with pytest.raises(GenloomError, match=r"test: images are 2x2 but the model expects 32x32"):
        check_resolution(data, 32)
    with pytest.raises(GenloomError, match="2 images but 1 captions"):
        ImageCaptionSet(data.images, ["one"], "bad")
    with pytest.raises(GenloomError, match="uint8"):
        ImageCaptionSet(data.images.astype(np.float32), ["a", "b"], "bad")
    with pytest.raises(GenloomError, match="held_out"):
        ImageCaptionSet(data.images, ["a", "b"], "bad", held_out=np.array([True]))


def test_sixteen_bit_grey_and_palette_transparency(tmp_path: Path) -> None:
    # A 16-bit grey PNG is rescaled to 8 bits, not clipped; a palette image's transparent index becomes white.
    Image.fromarray(np.full((6, 6), 65535 // 2, dtype=np.uint16)).save(tmp_path / "deep.png")
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "pal.png", transparency=0)
    _write_metadata(tmp_path, [{"file_name": "deep.png", "text": "grey"}, {"file_name": "pal.png", "text": "blue"}])
    deep, pal = load_image_folder(tmp_path, 6).images
    assert (deep == 127).all()
    assert (pal[0, 0] == WHITE).all() and (pal[1:, 1:] == BLUE).all()


def test_mirror_caption_swaps_whole_words_left_and_right() -> None:
    assert mirror_caption("a red circle left of a blue square") == "a red circle right of a blue square"
    assert mirror_caption("Right, LEFT and left") == "Left, RIGHT and right"
    assert mirror_caption("a bright leftover copyright") == "a bright leftover copyright"  # not inside words


def test_with_mirrors_appends_each_image_mirrored_with_its_caption_mirrored() -> None:
    data = load_images("builtin:shapes", 32, 120)
    both = with_mirrors(data)
    n = len(data)
    assert len(both) == 2 * n and both.held_out is not None and data.held_out is not None
    np.testing.assert_array_equal(both.images[:n], data.images)
    np.testing.assert_array_equal(both.images[n:], data.images[:, :, ::-1])
    assert both.captions[n:] == [mirror_caption(c) for c in data.captions]
    np.testing.assert_array_equal(both.held_out, np.concatenate([data.held_out, data.held_out]))
    # A mirrored shapes scene is a true scene of its mirrored caption, as the originals are of theirs.
    assert sum("left of" in c or "right of" in c for c in data.captions) > 20
    assert all(check_shapes_image(image, caption).all_correct for image, caption in zip(both.images, both.captions,
                                                                                         strict=True))
