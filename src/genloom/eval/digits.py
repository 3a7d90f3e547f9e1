"""Digit images judged by an independent classifier: caption accuracy and a Fréchet distance (an FID for digits).

The classifier is a small MLP trained on scikit-learn's real 8x8 digits, never on a model's output, so it plays
the part Inception-v3 plays for FID (Heusel et al., 2017) and for the Inception score: accuracy is the share of
generated images it reads as the digit their caption names, and the Fréchet distance compares Gaussians fitted
to its hidden-layer activations. Generated images go back to the classifier's input by undoing the built-in
set's transform: grey, area-averaged down to 8x8, ink 0..16.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import linalg

from genloom.data.builtin_images import DIGIT_WORDS
from genloom.errors import GenloomError

_WORD_TO_DIGIT = {word: d for d, word in enumerate(DIGIT_WORDS)}


def digits_to_features(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 black-on-white digits -> (N, 64) ink in 0..16, the classifier's (and sklearn's) input.

    The inverse of `digit_images`: there 16 ink became black (0) and 0 ink white (255), then the 8x8 image was
    upscaled. Area-averaging back to 8x8 undoes a nearest-neighbour upscale exactly and any upscale nearly.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise GenloomError(f"digit images must be (N, H, W, 3), got {tuple(images.shape)}")
    grey = images.astype(np.float32).mean(axis=-1)  # (N, H, W), 0 black .. 255 white
    n, h, w = grey.shape
    if h % 8 == 0 and w % 8 == 0:
        small = grey.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4))  # (N, 8, 8) block means
    else:
        small = np.stack([np.asarray(Image.fromarray(g, "F").resize((8, 8), Image.Resampling.BOX)) for g in grey])
    ink = (255.0 - small) * (16.0 / 255.0)
    return np.clip(ink, 0.0, 16.0).reshape(n, 64)


def caption_digits(captions: Sequence[str]) -> np.ndarray:
    """(N,) int digits named by captions like "the digit seven" (the last word names the digit)."""
    digits = []
    for caption in captions:
        words = caption.split()
        if not words or words[-1] not in _WORD_TO_DIGIT:
            raise GenloomError(f"not a digits caption: {caption!r} (expected e.g. 'the digit seven')")
        digits.append(_WORD_TO_DIGIT[words[-1]])
    return np.array(digits, dtype=np.int64)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) between two Gaussians, as the FID reference code computes it.

    As in pytorch-fid: when the product is singular (fewer samples than features, dead units) its square root is
    not finite and `eps` is added to both diagonals; tiny imaginary parts from numerical error are dropped.
    """
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # pytorch-fid's disp=False: a singular product is expected (dead ReLUs on noise) and handled below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # pytorch-fid raises above 1e-3; near-singular covariances of small sets exceed that harmlessly, and
        # the real part is still the best estimate of the trace.
        covmean = covmean.real
    distance = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(distance, 0.0)  # rounding can leave a tiny negative for identical sets


@dataclass
class DigitsScore:
    """How well generated digits match their captions and the real digits."""

    images: int
    accuracy: float  # share classified as the caption's digit, 0..1
    frechet: float | None  # Fréchet distance to the reference images in classifier features; None without them
    classifier_accuracy: float  # the classifier's accuracy on held-out real digits, 0..1: the ceiling

    def format_report(self) -> str:
        """A few aligned lines for a terminal or a log."""
        lines = [
            f"images              {self.images}",
            f"digit accuracy      {100 * self.accuracy:6.2f}%   (classifier on real held-out digits: "
            f"{100 * self.classifier_accuracy:.2f}%)",
        ]
        if self.frechet is not None:
            lines.append(f"Fréchet distance    {self.frechet:8.3f}   (classifier features, vs real digits)")
        return "\n".join(lines)


class DigitsEvaluator:
    """An MLP digit classifier trained on real scikit-learn digits, with accuracy and Fréchet distance on top.

    `test_fraction` of the real digits (shuffled with `seed`) are held out of training; `test_accuracy` is
    the classifier's accuracy on them and `test_indices` says which they are, in `digit_images()` order.
    Training takes about a second on one CPU core.
    """

    def __init__(self, test_fraction: float = 0.2, seed: int = 0) -> None:
        from sklearn.datasets import load_digits
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        if not 0.0 < test_fraction < 1.0:
            raise GenloomError(f"test_fraction ({test_fraction}) must be between 0 and 1")
        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        n_test = round(len(order) * test_fraction)
        self.test_indices = np.sort(order[:n_test])  # (n_test,) positions in digit_images() / load_digits()
        train = np.sort(order[n_test:])
        # One hidden layer of 64 ReLUs reaches about 99% on held-out digits; its activations are the features.
        self.classifier = MLPClassifier(hidden_layer_sizes=(64,), alpha=1e-2, max_iter=500, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(digits.data[train] / 16.0, digits.target[train])
        self.test_accuracy = float(self.classifier.score(digits.data[self.test_indices] / 16.0,
                                                         digits.target[self.test_indices]))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N,) int digits the classifier reads in (N, H, W, 3) uint8 black-on-white images."""
        return np.asarray(self.classifier.predict(digits_to_features(images) / 16.0), dtype=np.int64)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 64) hidden-layer activations: the classifier's view of each image, for Fréchet distances."""
        x = digits_to_features(images) / 16.0  # (N, 64)
        hidden = x @ self.classifier.coefs_[0] + self.classifier.intercepts_[0]  # (N, hidden)
        return np.maximum(hidden, 0.0)  # the MLP's ReLU

    def accuracy(self, images: np.ndarray, captions: Sequence[str]) -> float:
        """Share (0..1) of images classified as the digit their caption names ("the digit seven")."""
        if len(images) != len(captions):
            raise GenloomError(f"{len(images)} images but {len(captions)} captions")
        if len(images) == 0:
            raise GenloomError("no images to score")
        return float(np.mean(self.predict(images) == caption_digits(captions)))

    def frechet_distance(self, images_a: np.ndarray, images_b: np.ndarray) -> float:
        """Fréchet distance between two image sets in classifier features; 0 for identical sets."""
        for name, images in (("images_a", images_a), ("images_b", images_b)):
            if len(images) < 2:
                raise GenloomError(f"{name} has {len(images)} images; a Fréchet distance needs at least 2")
        fa, fb = self.features(images_a), self.features(images_b)
        return frechet_distance(fa.mean(axis=0), np.cov(fa, rowvar=False), fb.mean(axis=0), np.cov(fb, rowvar=False))

    def score(
        self, images: np.ndarray, captions: Sequence[str], reference: np.ndarray | None = None
    ) -> DigitsScore:
        """Accuracy of `images` against `captions`, and their Fréchet distance to `reference` images if given."""
        return DigitsScore(
            images=len(images),
            accuracy=self.accuracy(images, captions),
            frechet=None if reference is None else self.frechet_distance(images, reference),
            classifier_accuracy=self.test_accuracy,
        )
