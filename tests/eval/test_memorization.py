import numpy as np
import pytest

from genloom.data.builtin_images import digit_images
from genloom.errors import GenloomError
from genloom.eval.memorization import format_memorization_report, memorization_report, nearest_distances


@pytest.fixture(scope="module")
def splits():
    images = digit_images(16).images[np.random.default_rng(0).permutation(1797)]
    return images[:1200], images[1200:1500], images[1500:]  # train, test, fresh real images


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    r = rng.integers(0, 256, (300, 4, 4, 3), dtype=np.uint8)
    dist, idx = nearest_distances(q, r)
    full = np.sqrt((((q[:, None] / 255.0 - r[None] / 255.0) ** 2).reshape(7, 300, -1)).mean(axis=-1))  # (7, 300)
    assert np.array_equal(idx, full.argmin(axis=1))
    assert dist == pytest.approx(full.min(axis=1))


def test_copies_noise_and_real_images(splits):
    train, test, fresh = splits
    copies = memorization_report(train[::4], train, test)
    assert copies["copy_rate"] == 1.0 and copies["generated_median"] == pytest.approx(0.0, abs=1e-6)
    noise = np.random.default_rng(2).integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
    fresh_noise = memorization_report(noise, train, test)
    assert fresh_noise["copy_rate"] == 0.0 and fresh_noise["generated_mean"] > 2 * fresh_noise["test_mean"]
    # The test set against its own threshold copies at the percentile's rate; fresh real images about so.
    assert memorization_report(test, train, test)["copy_rate"] == pytest.approx(0.05, abs=0.01)
    assert 0.01 <= memorization_report(fresh, train, test)["copy_rate"] <= 0.12


def test_report_and_errors(splits):
    train, test, _ = splits
    report = memorization_report(train[:10], train, test)
    assert report["generated"] == 10 and report["train"] == len(train) and report["test"] == len(test)
    text = format_memorization_report(report)
    assert "copy rate    100.00%" in text and "percentile 5" in text
    with pytest.raises(GenloomError, match="resize them"):
        memorization_report(np.zeros((2, 8, 8, 3), np.uint8), train, test)
    with pytest.raises(GenloomError, match="percentile"):
        memorization_report(train[:2], train, test, percentile=0)
