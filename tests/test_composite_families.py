from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import color, data

from harmony.data.composites import (
    random_illumination,
    random_retouch,
    segment_mask,
    transfer_distribution,
    transfer_histograms,
    transfer_lab_moments,
    transfer_rgb_covariance,
)


@pytest.fixture
def clouds() -> tuple[np.ndarray, np.ndarray]:
    """Two correlated colour clouds well inside the gamut: a bluish source and a warm reference."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4000, 3))
    source = 0.45 + base @ np.array([[0.08, 0.02, 0.0], [0.0, 0.06, 0.02], [0.0, 0.0, 0.07]]) * [
        0.8,
        0.9,
        1.2,
    ]
    other = rng.normal(size=(5000, 3))
    reference = 0.5 + other @ np.array([[0.05, 0.03, 0.01], [0.0, 0.07, -0.02], [0.0, 0.0, 0.04]])
    reference = reference * [1.15, 1.0, 0.8]
    return np.clip(source, 0, 1).astype(np.float32), np.clip(reference, 0, 1).astype(np.float32)


def test_lab_moments_match_the_reference_lab_mean_and_std(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    source, reference = clouds
    changed = color.rgb2lab(transfer_lab_moments(source, reference)[None])[0]
    target = color.rgb2lab(reference[None])[0]
    np.testing.assert_allclose(changed.mean(axis=0), target.mean(axis=0), atol=0.5)
    np.testing.assert_allclose(changed.std(axis=0), target.std(axis=0), rtol=0.05)


def test_rgb_covariance_matches_mean_and_full_covariance(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    source, reference = clouds
    changed = transfer_rgb_covariance(source, reference)
    np.testing.assert_allclose(changed.mean(axis=0), reference.mean(axis=0), atol=2e-3)
    np.testing.assert_allclose(np.cov(changed.T), np.cov(reference.T), atol=2e-4)
    # The decorrelated Lab transfer does not reproduce the cross-channel covariance.
    assert np.abs(np.cov(transfer_lab_moments(source, reference).T) - np.cov(reference.T)).max() > 5e-4


def test_histograms_match_each_channel_quantiles(clouds: tuple[np.ndarray, np.ndarray]) -> None:
    source, reference = clouds
    changed = transfer_histograms(source, reference)
    quantiles = np.linspace(0.05, 0.95, 19)
    for channel in range(3):
        np.testing.assert_allclose(
            np.quantile(changed[:, channel], quantiles),
            np.quantile(reference[:, channel], quantiles),
            atol=4e-3,
        )
    # Each channel is a monotone map of itself: ranks are kept.
    order = np.argsort(source[:, 0])
    assert np.all(np.diff(changed[order, 0]) >= -1e-6)


def _sliced_distance(first: np.ndarray, second: np.ndarray, rng: np.random.Generator) -> float:
    directions = rng.normal(size=(64, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    quantiles = np.linspace(0.01, 0.99, 99)
    return float(
        np.mean(
            [
                np.abs(np.quantile(first @ d, quantiles) - np.quantile(second @ d, quantiles)).mean()
                for d in directions
            ]
        )
    )


def test_distribution_transfer_matches_the_joint_distribution_best(
    clouds: tuple[np.ndarray, np.ndarray],
) -> None:
    source, reference = clouds
    changed = transfer_distribution(source, reference, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    distance = _sliced_distance(changed, reference, rng)
    assert distance < 0.2 * _sliced_distance(source, reference, rng)
    assert distance < _sliced_distance(transfer_histograms(source, reference), reference, rng)
    again = transfer_distribution(source, reference, np.random.default_rng(1))
    np.testing.assert_array_equal(changed, again)


@pytest.mark.parametrize("draw", [random_retouch, random_illumination])
def test_global_edits_act_per_pixel(draw) -> None:
    # A whole photo's edit restricted to a region equals the edit of the region's pixels alone, so the
    # real image and the composite's foreground are renditions of one scene.
    photo = data.astronaut()[::4, ::4].reshape(-1, 3).astype(np.float32) / 255.0
    for seed in range(6):
        edit = draw(np.random.default_rng(seed))
        whole = edit(photo)
        assert whole.shape == photo.shape and whole.dtype == np.float32
        assert 0.0 <= whole.min() and whole.max() <= 1.0
        np.testing.assert_array_equal(edit(photo[::7]), whole[::7])


def test_illumination_spans_night_and_day() -> None:
    photo = data.astronaut()[::4, ::4].reshape(-1, 3).astype(np.float32) / 255.0
    means = [random_illumination(np.random.default_rng(seed))(photo).mean() for seed in range(40)]
    assert min(means) < 0.45 * photo.mean() and max(means) > 0.9 * photo.mean()


def test_segment_masks_follow_the_photo_and_have_the_asked_size() -> None:
    photo = data.astronaut()[::2, ::2]
    grown, on_edges = 0, 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        ratio = rng.uniform(0.02, 0.3)
        mask = segment_mask(photo, ratio, rng)
        if mask is None:
            continue
        grown += 1
        assert mask.shape == photo.shape[:2] and mask.dtype == bool
        assert ratio / 1.6 <= mask.mean() <= ratio * 1.6
        assert ndimage.label(mask)[1] == 1
        np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)
        # An edge-following region: its outline mostly sits on image edges, where gradients are strong.
        gradient = ndimage.sobel(photo.mean(axis=2), 0) ** 2 + ndimage.sobel(photo.mean(axis=2), 1) ** 2
        outline = mask ^ ndimage.binary_erosion(mask)
        on_edges += bool(np.median(gradient[outline]) > 5 * np.median(gradient))
    assert grown >= 6 and on_edges >= grown - 1
