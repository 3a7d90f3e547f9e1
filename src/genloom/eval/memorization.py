"""Memorisation: do generated images copy training images?

Each generated image's nearest training image (root-mean-square pixel distance, pixels in [0, 1]) is compared
with how near real unseen (test) images come to the training set. A generated image nearer to the training set
than nearly all test images are (below the 5th percentile of their nearest distances) is counted as a copy, in
the spirit of Carlini et al. (2023), "Extracting Training Data from Diffusion Models". Fresh samples of the
data distribution should copy at the test set's own rate, 5%; a memorising model scores far above it.
"""

from __future__ import annotations

import numpy as np

from genloom.errors import GenloomError

# Rows of the distance matrix computed at once: bounds memory at (chunk x train) floats.
_CHUNK = 256


def _flatten(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim < 2 or len(images) == 0:
        raise GenloomError(f"{name} must be a non-empty (N, H, W, C) image array, got shape {tuple(images.shape)}")
    return images.reshape(len(images), -1).astype(np.float64) / 255.0  # (N, D) in [0, 1]


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (N, ...) uint8 query, the RMS pixel distance (0..1) to its nearest reference and that one's index."""
    q, r = _flatten(queries, "queries"), _flatten(references, "references")
    if q.shape[1] != r.shape[1]:
        raise GenloomError(f"queries have {q.shape[1]} values per image but references {r.shape[1]}; "
                           "resize them to one resolution first")
    r_sq = (r * r).sum(axis=1)  # (M,)
    dist, index = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), _CHUNK):
        chunk = q[start : start + _CHUNK]  # (n, D)
        # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b; clipped because rounding can dip below 0 for equal images.
        sq = (chunk * chunk).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * chunk @ r.T  # (n, M)
        best = sq.argmin(axis=1)
        index[start : start + len(chunk)] = best
        dist[start : start + len(chunk)] = np.sqrt(np.maximum(sq[np.arange(len(chunk)), best], 0.0) / q.shape[1])
    return dist, index


def memorization_report(
    generated: np.ndarray, train: np.ndarray, test: np.ndarray, percentile: float = 5.0
) -> dict[str, float]:
    """Nearest-training-image distances of `generated` against those of `test` images (all (N, H, W, 3) uint8).

    Keys: generated / train / test (image counts); generated_mean, generated_median, test_mean, test_median
    (RMS pixel distances to the nearest training image, 0..1); percentile, and threshold (that percentile of
    the test distances); copy_rate (share of generated images at or below it, 0..1; about percentile / 100
    for fresh real images).
    """
    if not 0.0 < percentile < 100.0:
        raise GenloomError(f"percentile ({percentile}) must be between 0 and 100")
    gen_dist, _ = nearest_distances(generated, train)
    test_dist, _ = nearest_distances(test, train)
    threshold = float(np.percentile(test_dist, percentile))
    return {
        "generated": float(len(generated)),
        "train": float(len(train)),
        "test": float(len(test)),
        "generated_mean": float(gen_dist.mean()),
        "generated_median": float(np.median(gen_dist)),
        "test_mean": float(test_dist.mean()),
        "test_median": float(np.median(test_dist)),
        "percentile": percentile,
        "threshold": threshold,
        "copy_rate": float(np.mean(gen_dist <= threshold)),
    }


def format_memorization_report(report: dict[str, float]) -> str:
    """A few aligned lines for a terminal or a log, from a `memorization_report` result."""
    return "\n".join([
        f"nearest training image (RMS pixel distance, {int(report['train'])} training images)",
        f"  generated  mean {report['generated_mean']:.4f}  median {report['generated_median']:.4f}"
        f"   ({int(report['generated'])} images)",
        f"  test       mean {report['test_mean']:.4f}  median {report['test_median']:.4f}"
        f"   ({int(report['test'])} images)",
        f"copy rate    {100 * report['copy_rate']:6.2f}%   (at or below {report['threshold']:.4f}, "
        f"percentile {report['percentile']:g} of the test distances)",
    ])
