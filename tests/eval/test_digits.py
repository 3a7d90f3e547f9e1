import numpy as np
import pytest
from sklearn.datasets import load_digits

from genloom.data.builtin_images import digit_images
from genloom.errors import GenloomError
from genloom.eval.digits import DigitsEvaluator, caption_digits, digits_to_features, frechet_distance


@pytest.fixture(scope="module")
def evaluator():
    return DigitsEvaluator(seed=0)  # trains an MLP: about a second


@pytest.fixture(scope="module")
def real():
    return digit_images(16)


def test_features_undo_the_builtin_transform(real):
    # The builtin rounds ink*255/16 to a grey level, so the round trip is exact up to half a grey level.
    assert np.abs(digits_to_features(real.images) - load_digits().data).max() <= 16 / 255 / 2 + 1e-6
    assert np.abs(digits_to_features(digit_images(20).images) - load_digits().data).mean() < 1.0  # not a multiple of 8


def test_classifier_reads_held_out_real_digits(evaluator, real):
    assert evaluator.test_accuracy >= 0.97
    test = real.subset(evaluator.test_indices)
    assert evaluator.accuracy(test.images, test.captions) >= 0.97
    smooth = digit_images(32, "bilinear").subset(evaluator.test_indices)
    assert evaluator.accuracy(smooth.images, smooth.captions) >= 0.95
    # Captions naming the wrong digit are (nearly) never matched.
    shifted = [f"the digit {c.split()[-1]}" for c in test.captions[1:] + test.captions[:1]]
    assert evaluator.accuracy(test.images, shifted) < 0.2


def test_frechet_distance_separates_real_from_noise(evaluator, real):
    test = real.images[evaluator.test_indices]
    train = np.delete(real.images, evaluator.test_indices, axis=0)
    assert evaluator.frechet_distance(test, test) == pytest.approx(0.0, abs=1e-6)
    real_vs_real = evaluator.frechet_distance(test, train[:360])
    noise = np.random.default_rng(0).integers(0, 256, test.shape, dtype=np.uint8)
    real_vs_noise = evaluator.frechet_distance(test, noise)
    ones = real.images[caption_digits(real.captions) == 1]  # real digits, but one class: a mode collapse
    assert real_vs_real < 3.0 and real_vs_noise > 10 * real_vs_real
    assert evaluator.frechet_distance(test, ones) > 10 * real_vs_real


def test_frechet_formula_matches_the_closed_form():
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 over standard deviations s.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, 1.0])
    s1, s2 = np.array([1.0, 2.0]), np.array([2.0, 0.5])
    expected = 9.0 + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected)
    # A singular covariance (a constant feature) still gives a finite answer.
    assert np.isfinite(frechet_distance(mu1, np.diag([1.0, 0.0]), mu2, np.diag([0.0, 1.0])))


def test_score_report_and_errors(evaluator, real):
    test = real.subset(evaluator.test_indices[:50])
    score = evaluator.score(test.images, test.captions, reference=real.images[:200])
    assert score.images == 50 and score.frechet is not None
    report = score.format_report()
    assert "digit accuracy" in report and "Fréchet distance" in report
    assert "Fréchet" not in evaluator.score(test.images, test.captions).format_report()
    with pytest.raises(GenloomError, match="not a digits caption"):
        evaluator.accuracy(test.images[:1], ["a cat"])
    with pytest.raises(GenloomError, match="at least 2"):
        evaluator.frechet_distance(test.images[:1], test.images)
