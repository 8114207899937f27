from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from harmony.data import types as keys
from harmony.data.composites import (
    blend,
    bounding_box,
    fit_into_box,
    random_shading,
    reinhard_transfer,
)
from harmony.methods.base import blend_full_resolution
from harmony.methods.baselines import ReinhardLabTransfer


def lab_statistics(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = color.rgb2lab(pixels[None])[0]
    return lab.mean(axis=0), lab.std(axis=0)


@pytest.fixture
def colours() -> tuple[np.ndarray, np.ndarray]:
    """A bluish set of pixels and a warmer reference, both well inside the RGB gamut."""
    rng = np.random.default_rng(0)
    pixels = (rng.uniform(0.3, 0.6, (500, 3)) * [0.8, 0.9, 1.1]).astype(np.float32)
    reference = (rng.uniform(0.35, 0.55, (700, 3)) * [1.1, 1.0, 0.8]).astype(np.float32)
    return pixels, reference


def test_reinhard_strength_zero_keeps_the_pixels(colours: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, reference = colours
    kept = reinhard_transfer(pixels, reference, strength=0.0)
    assert kept.dtype == np.float32 and kept.shape == pixels.shape
    np.testing.assert_allclose(kept, pixels, atol=1e-4)


def test_reinhard_full_strength_matches_the_reference_lab_statistics(
    colours: tuple[np.ndarray, np.ndarray],
) -> None:
    pixels, reference = colours
    matched_mean, matched_std = lab_statistics(reinhard_transfer(pixels, reference))
    reference_mean, reference_std = lab_statistics(reference)
    np.testing.assert_allclose(matched_mean, reference_mean, atol=0.05)
    np.testing.assert_allclose(matched_std, reference_std, rtol=0.01)


def test_reinhard_std_ratio_limits_bound_the_scaling(colours: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, reference = colours
    mean, std = lab_statistics(reinhard_transfer(pixels, reference * 0.5 + 0.25, std_ratio_limits=(1, 1)))
    np.testing.assert_allclose(std, lab_statistics(pixels)[1], rtol=0.01)
    np.testing.assert_allclose(mean, lab_statistics(reference * 0.5 + 0.25)[0], atol=0.05)


def test_random_shading_is_seeded_and_stays_in_range(colours: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, reference = colours
    mask = np.zeros((30, 25), dtype=bool)
    mask.flat[60:560] = True  # one pixel per colour, in row-major order
    edits = {
        "shading": lambda rng: random_shading(pixels, mask, rng),
    }
    for name, edit in edits.items():
        first, again = edit(np.random.default_rng(3)), edit(np.random.default_rng(3))
        np.testing.assert_array_equal(first, again, err_msg=name)
        assert first.shape == pixels.shape and 0 <= first.min() and first.max() <= 1, name
        assert not np.allclose(first, pixels), name
    gain = random_shading(pixels, mask, np.random.default_rng(1)) / pixels
    assert 0.7 - 1e-6 <= gain.min() and gain.max() <= 1.3 + 1e-6


def test_blend_pastes_with_the_soft_mask_rounding_half_up() -> None:
    foreground = np.full((1, 4, 3), 10, dtype=np.uint8)
    background = np.array([[[21] * 3, [21] * 3, [255] * 3, [200] * 3]], dtype=np.uint8)
    foreground[0, 2] = 0
    mask = np.array([[0.0, 1.0, 0.5, 0.5]], dtype=np.float32)
    blended = blend(foreground, background, mask)
    assert blended.dtype == np.uint8
    # 0 keeps the background, 1 takes the foreground, 0.5 is the mean rounded half up (127.5 -> 128).
    np.testing.assert_array_equal(blended[0, :, 0], [21, 10, 128, 105])


def test_blend_full_resolution_keeps_the_composite_where_the_mask_is_zero() -> None:
    rng = np.random.default_rng(0)
    prediction = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    composite = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    mask = np.zeros((16, 12), dtype=np.float32)
    mask[4:12, 3:9] = 1.0
    mask[4, 3] = 0.5
    output = blend_full_resolution(prediction, composite, mask)
    assert output.shape == composite.shape
    np.testing.assert_array_equal(output[mask == 0], composite[mask == 0])
    resized = np.asarray(Image.fromarray(prediction).resize((12, 16), Image.BILINEAR))
    np.testing.assert_array_equal(output[mask == 1], resized[mask == 1])
    np.testing.assert_array_equal(output[4, 3], blend(resized, composite, mask)[4, 3])


def test_fit_into_box_places_the_object_inside_the_box() -> None:
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[5:15, 40:60] = 1.0
    assert bounding_box(np.zeros_like(mask)) is None
    assert bounding_box(mask) == (40, 5, 59, 14)
    ys, xs = np.nonzero(mask)
    pixels = np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    box = (10, 20, 29, 49)
    # The map is checked on the pixel coordinates themselves: warping with OpenCV here would start its
    # thread pool, which DataLoader workers forked later in the same test run can deadlock on.
    for angle in (0.0, 15.0):
        x, y = fit_into_box(mask, box, angle) @ pixels
        assert box[0] - 0.5 <= x.min() and x.max() <= box[2] + 0.5
        assert box[1] - 0.5 <= y.min() and y.max() <= box[3] + 0.5
    # Unrotated, the 20x10 object is scaled to the 20-px-wide box and centred in its height.
    x, y = fit_into_box(mask, box, 0.0) @ pixels
    np.testing.assert_allclose([x.min(), x.max(), (y.min() + y.max()) / 2], [10.0, 29.0, 34.5], atol=0.5)


def test_reinhard_baseline_transfers_each_foreground_to_its_own_background() -> None:
    rng = np.random.default_rng(1)
    composite = torch.from_numpy(rng.uniform(0.2, 0.7, (3, 3, 16, 16)).astype(np.float32))
    composite[0, :, 8:] *= torch.tensor([1.3, 1.0, 0.6])[:, None, None]
    mask = torch.zeros(3, 1, 16, 16)
    mask[0, :, 8:] = 1.0
    mask[0, :, 7] = 0.4  # soft and below 0.5: background
    mask[2] = 1.0  # no background: nothing to match
    output = ReinhardLabTransfer().harmonize({keys.COMPOSITE: composite, keys.MASK: mask})
    image = composite[0].permute(1, 2, 0).numpy()
    region = mask[0, 0].numpy() >= 0.5
    expected = image.copy()
    expected[region] = reinhard_transfer(image[region], image[~region])
    np.testing.assert_array_equal(output[0].permute(1, 2, 0).numpy(), expected)
    torch.testing.assert_close(output[1:], composite[1:], rtol=0, atol=0)
