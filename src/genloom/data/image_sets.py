"""Image sets by name, and the one way every command splits them.

`--data` names a built-in set (`builtin:shapes`, `builtin:digits`, `builtin:emoji`) or a folder of captioned
images. Every command cuts it with `split_images` (`ImageCaptionSet.split(val_fraction, seed=SPLIT_SEED)`), so
training and evaluation agree on which images were trained on; on builtin:shapes the held-out (colour, shape)
combinations go to the test split, never to train or validation.
"""

from __future__ import annotations

from genloom.data.builtin_images import builtin_images
from genloom.data.images import ImageCaptionSet, load_image_folder
from genloom.errors import GenloomError

SPLIT_SEED = 0  # ImageCaptionSet.split seed shared by training and evaluation
IMAGE_DATA_HELP = "builtin:shapes | builtin:digits | builtin:emoji | a folder of images with captions"


def load_images(spec: str, resolution: int | None, limit: int | None = None) -> ImageCaptionSet:
    """builtin:NAME or a folder at `resolution` (None: the set's default), cut to its first `limit` images.

    A folder's unreadable images are left out and counted in the set's `skipped`.
    """
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name == "shapes" and limit is not None:
            return builtin_images(name, resolution, n=limit)  # draws exactly `limit` scenes
        data = builtin_images(name, resolution)
    else:
        if resolution is None:
            raise GenloomError(f"--resolution is needed to load the folder {spec}")
        data = load_image_folder(spec, resolution)
    if limit is not None and limit < len(data):
        skipped = data.skipped
        data = data.subset(range(limit))
        data.skipped = skipped
    return data


def split_images(data: ImageCaptionSet, val_fraction: float) -> tuple[ImageCaptionSet, ImageCaptionSet,
                                                                      ImageCaptionSet]:
    """(train, val, test) as every command cuts them; held-out shapes are only ever in test."""
    train, val, test = data.split(val_fraction, 0.0, seed=SPLIT_SEED)
    # The composition test depends on it: no held-out (colour, shape) pair is ever trained on.
    assert train.held_out is None or not train.held_out.any(), "held-out images in the training split"
    return train, val, test
