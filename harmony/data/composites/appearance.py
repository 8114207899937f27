"""Changes of a foreground's appearance: Reinhard colour transfer in Lab and a random shading field.

Every function takes and returns the foreground as a list of pixels, an ``N×3`` ``float32`` RGB array in
``[0, 1]``. :func:`reinhard_transfer` is split into :func:`reinhard_statistics` and
:func:`apply_reinhard`, so the statistics of a small copy can be applied to a full-resolution image.
:func:`random_shading` draws its field from the given :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import cv2
import numpy as np
from skimage import color


class ReinhardStatistics(NamedTuple):
    """What a Reinhard transfer needs: the per-channel CIELAB mean and std of the source and reference.

    Each std has 1e-3 added, so flat regions stay finite. Each field is a ``3``-vector (L, a, b).
    """

    source_mean: np.ndarray
    source_std: np.ndarray
    reference_mean: np.ndarray
    reference_std: np.ndarray


def _lab_moments(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lab.mean(axis=0), lab.std(axis=0) + 1e-3


def reinhard_statistics(pixels: np.ndarray, reference: np.ndarray) -> ReinhardStatistics:
    """The Lab statistics :func:`apply_reinhard` moves ``pixels`` by (scikit-image's sRGB/D65 Lab).

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``: the pixels whose statistics are changed.
        reference: ``M×3`` ``float32`` RGB in ``[0, 1]`` whose statistics are matched.
    """
    source_lab, reference_lab = color.rgb2lab(pixels[None])[0], color.rgb2lab(reference[None])[0]
    return ReinhardStatistics(*_lab_moments(source_lab), *_lab_moments(reference_lab))


def apply_reinhard(
    pixels: np.ndarray,
    statistics: ReinhardStatistics,
    strength: float = 1.0,
    std_ratio_limits: tuple[float, float] | None = None,
    clip_lightness: bool = False,
) -> np.ndarray:
    """Shift and scale each CIELAB channel of ``pixels`` as :func:`reinhard_transfer` describes.

    The pixels need not be those the statistics were measured on: a transfer estimated on a
    downsampled image applies to its full-resolution pixels.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``: the pixels to change.
        statistics: From :func:`reinhard_statistics`.
        strength: See :func:`reinhard_transfer`.
        std_ratio_limits: See :func:`reinhard_transfer`.
        clip_lightness: See :func:`reinhard_transfer`.

    Returns:
        The changed ``N×3`` ``float32`` pixels.
    """
    return _shift_lab(color.rgb2lab(pixels[None])[0], statistics, strength, std_ratio_limits, clip_lightness)


def _shift_lab(
    lab: np.ndarray,
    statistics: ReinhardStatistics,
    strength: float,
    std_ratio_limits: tuple[float, float] | None,
    clip_lightness: bool,
) -> np.ndarray:
    source_mean, source_std, reference_mean, reference_std = statistics
    ratio = reference_std / source_std
    if std_ratio_limits is not None:
        ratio = np.clip(ratio, *std_ratio_limits)
    mean = source_mean + strength * (reference_mean - source_mean)
    lab = (lab - source_mean) * ratio**strength + mean
    if clip_lightness:
        lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-gamut Lab is clipped by lab2rgb, which is what we want
        return np.clip(color.lab2rgb(lab[None])[0], 0.0, 1.0).astype(np.float32)


def reinhard_transfer(
    pixels: np.ndarray,
    reference: np.ndarray,
    strength: float = 1.0,
    std_ratio_limits: tuple[float, float] | None = None,
    clip_lightness: bool = False,
) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer: move the pixels' Lab mean and std towards the reference's.

    Each CIELAB channel (scikit-image's sRGB/D65 conversion) is shifted and scaled as
    ``(x − μ_s)·r^strength + μ_s + strength·(μ_r − μ_s)`` with ``r = σ_r / σ_s``, where each std has
    1e-3 added so flat regions stay finite. Colours outside the RGB gamut are clipped to ``[0, 1]``.
    This is :func:`apply_reinhard` of the pixels' own :func:`reinhard_statistics`.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``: the pixels to change.
        reference: ``M×3`` ``float32`` RGB in ``[0, 1]`` whose statistics are matched.
        strength: 1 matches the reference's statistics, 0 keeps the pixels' own; in between is a partial
            transfer.
        std_ratio_limits: ``(low, high)`` bounds on the std ratio ``r`` before ``strength`` applies;
            ``None`` leaves it unbounded.
        clip_lightness: Clip the new lightness to ``[0, 100]`` before converting back, so a pixel pushed
            past white keeps its hue at full saturation; otherwise the RGB clipping alone bounds it, which
            moves such pixels towards white (or black).

    Returns:
        The changed ``N×3`` ``float32`` pixels.
    """
    # The pixels' Lab is both measured and changed: convert them once.
    source_lab, reference_lab = color.rgb2lab(pixels[None])[0], color.rgb2lab(reference[None])[0]
    statistics = ReinhardStatistics(*_lab_moments(source_lab), *_lab_moments(reference_lab))
    return _shift_lab(source_lab, statistics, strength, std_ratio_limits, clip_lightness)


def random_shading(pixels: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random low-frequency multiplicative light change over the foreground, a gain in ``[0.7, 1.3]``.

    The gain field spans the mask's bounding box: a linear ramp in a random direction or a smooth
    upsampled 3×3 grid (each with probability 1/2), scaled to a random amplitude in ``[0.1, 0.3]``.

    Args:
        pixels: The ``N×3`` ``float32`` RGB foreground pixels, ``image[mask]`` in row-major order.
        mask: The ``H×W`` boolean foreground mask the pixels were taken from (``N`` pixels set).
        rng: Draws the field.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        field = (
            math.cos(angle) * np.linspace(-1, 1, width)[None, :]
            + math.sin(angle) * np.linspace(-1, 1, height)[:, None]
        )
    else:
        grid = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
        field = cv2.resize(grid, (int(width), int(height)), interpolation=cv2.INTER_CUBIC)
    field = field / max(float(np.abs(field).max()), 1e-6)
    gain = 1.0 + rng.uniform(0.1, 0.3) * field
    inside = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.clip(pixels * gain[inside][:, None].astype(np.float32), 0.0, 1.0)
