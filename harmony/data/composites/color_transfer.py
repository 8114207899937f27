"""The four colour-transfer families iHarmony4's HCOCO and HFlickr composites were made with.

Cong et al. (2020, Sec. 3) changed a foreground by transferring the colour statistics of a reference
object from another photo, with one method from each cell of {parametric, non-parametric} ×
{correlated, decorrelated channels}:

============================  =======================================  ==================================
family                        method                                   function
============================  =======================================  ==================================
parametric, decorrelated      Reinhard et al. 2001: Lab mean and std   :func:`transfer_lab_moments`
parametric, correlated        Xiao & Ma 2006: RGB mean and covariance  :func:`transfer_rgb_covariance`
non-parametric, decorrelated  per-channel histogram matching           :func:`transfer_histograms`
non-parametric, correlated    Pitié et al. 2005: iterative 1-D         :func:`transfer_distribution`
                              distribution transfer in rotated bases
============================  =======================================  ==================================

Each takes the pixels to change and the reference pixels as ``N×3``/``M×3`` ``float32`` RGB arrays in
``[0, 1]`` and returns the changed pixels, clipped to ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
from scipy.stats import special_ortho_group

from harmony.data.composites.appearance import reinhard_transfer

_EPSILON: Final = 1e-6


def transfer_lab_moments(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Parametric, decorrelated: match each CIELAB channel's mean and std (Reinhard et al. 2001)."""
    return reinhard_transfer(pixels, reference)


def _symmetric_power(matrix: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.maximum(values, _EPSILON) ** power) @ vectors.T


def transfer_rgb_covariance(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Parametric, correlated: match the RGB mean and 3×3 covariance (Xiao & Ma 2006).

    The linear map is ``Σ_r^{1/2} Σ_s^{-1/2}``, the symmetric one of the maps that take the source
    covariance to the reference's; eigenvalues are floored at 1e-6 so flat regions stay finite.
    """
    source = pixels.astype(np.float64)
    target = reference.astype(np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    transform = _symmetric_power(np.cov(target.T), 0.5) @ _symmetric_power(np.cov(source.T), -0.5)
    changed = (source - source_mean) @ transform.T + target_mean
    return np.clip(changed, 0.0, 1.0).astype(np.float32)


def _match_1d(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map values onto the reference's quantiles at the same ranks (ties share a rank)."""
    quantiles = np.linspace(0.0, 1.0, 257)
    source_points = np.quantile(values, quantiles)
    target_points = np.quantile(reference, quantiles)
    # Strictly increasing abscissae: a flat run of the source (many equal values) gets its median rank.
    source_points = source_points + np.arange(source_points.size) * 1e-9
    return np.interp(values, source_points, target_points)


def transfer_histograms(pixels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Non-parametric, decorrelated: match each RGB channel's histogram to the reference's."""
    changed = np.stack([_match_1d(pixels[:, c], reference[:, c]) for c in range(3)], axis=1)
    return np.clip(changed, 0.0, 1.0).astype(np.float32)


def transfer_distribution(
    pixels: np.ndarray, reference: np.ndarray, rng: np.random.Generator, iterations: int = 10
) -> np.ndarray:
    """Non-parametric, correlated: Pitié et al. (2005) iterative distribution transfer.

    Each iteration rotates both colour clouds by a random rotation of RGB space, matches the three
    1-D marginals there and rotates back; the joint distribution converges to the reference's.

    Args:
        pixels: ``N×3`` RGB in ``[0, 1]``.
        reference: ``M×3`` RGB in ``[0, 1]``.
        rng: Draws the rotations.
        iterations: Rotations to apply.
    """
    source = pixels.astype(np.float64)
    target = reference.astype(np.float64)
    for _ in range(iterations):
        rotation = special_ortho_group.rvs(3, random_state=rng)
        rotated_source, rotated_target = source @ rotation, target @ rotation
        matched = np.stack([_match_1d(rotated_source[:, c], rotated_target[:, c]) for c in range(3)], axis=1)
        source = source + (matched - rotated_source) @ rotation.T
    return np.clip(source, 0.0, 1.0).astype(np.float32)


COLOR_TRANSFERS: Final[dict[str, Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]]] = {
    "lab_moments": lambda pixels, reference, rng: transfer_lab_moments(pixels, reference),
    "rgb_covariance": lambda pixels, reference, rng: transfer_rgb_covariance(pixels, reference),
    "histograms": lambda pixels, reference, rng: transfer_histograms(pixels, reference),
    "distribution": transfer_distribution,
}
"""The four iHarmony4 colour-transfer methods by name, with one signature ``(pixels, reference, rng)``."""
