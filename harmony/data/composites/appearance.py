"""Changes of a foreground's appearance: Reinhard colour transfer and random tone, colour and light edits.

Every function takes and returns the foreground as a list of pixels, an ``N×3`` ``float32`` RGB array in
``[0, 1]``. The ``random_*`` edits are the ones the SyntheticHarmony generator makes composites with
(the global per-channel changes iHarmony4 composites were made with, plus a mild shading field); they
draw their parameters from the given :class:`numpy.random.Generator` in a fixed order, so the same
generator state always gives the same edit.
"""

from __future__ import annotations

import math
import warnings
from typing import Final

import cv2
import numpy as np
from skimage import color

_RGB_TO_YIQ: Final = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=np.float32,
)
_YIQ_TO_RGB: Final = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)

_REINHARD_STRENGTH: Final = (0.3, 0.9)
_REINHARD_STD_RATIO_LIMITS: Final = (0.6, 1.6)


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
    source_lab, reference_lab = color.rgb2lab(pixels[None])[0], color.rgb2lab(reference[None])[0]
    source_mean, source_std = source_lab.mean(axis=0), source_lab.std(axis=0) + 1e-3
    reference_mean, reference_std = reference_lab.mean(axis=0), reference_lab.std(axis=0) + 1e-3
    ratio = reference_std / source_std
    if std_ratio_limits is not None:
        ratio = np.clip(ratio, *std_ratio_limits)
    mean = source_mean + strength * (reference_mean - source_mean)
    lab = (source_lab - source_mean) * ratio**strength + mean
    if clip_lightness:
        lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # out-of-gamut Lab is clipped by lab2rgb, which is what we want
        return np.clip(color.lab2rgb(lab[None])[0], 0.0, 1.0).astype(np.float32)


def random_reinhard_transfer(
    pixels: np.ndarray, reference: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A partial :func:`reinhard_transfer` towards ``reference``, of random strength in ``[0.3, 0.9]``.

    The std ratio is bounded to ``[0.6, 1.6]`` and the lightness clipped: a partial, bounded transfer
    keeps most composites plausible rather than swapping the colours wholesale.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``.
        reference: ``M×3`` ``float32`` RGB in ``[0, 1]`` whose statistics are moved towards.
        rng: Draws the strength.
    """
    strength = rng.uniform(*_REINHARD_STRENGTH)
    return reinhard_transfer(pixels, reference, strength, _REINHARD_STD_RATIO_LIMITS, clip_lightness=True)


def _monotone_curve(rng: np.random.Generator, knots: int) -> np.ndarray:
    steps = rng.dirichlet(np.full(knots - 1, 3.0))
    return np.concatenate([[0.0], np.cumsum(steps)])


def random_tone_curves(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random monotone tone curves per channel: a shared curve plus a per-channel colour cast.

    The curves, on 9 knots, are mixed towards the identity, raised to a random gamma, and then either
    compress the tonal range (a faded look) or stretch it (a punchy one), each with probability 1/2.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``.
        rng: Draws the curves.
    """
    knots = np.linspace(0.0, 1.0, 9)
    shared = _monotone_curve(rng, len(knots))
    gamma = math.exp(rng.uniform(-0.45, 0.45))
    black, white = rng.uniform(0.0, 0.08), rng.uniform(0.9, 1.0)
    # Either compress the tonal range (faded) or stretch it (punchy), so no direction is a giveaway.
    compress = rng.random() < 0.5
    out = np.empty_like(pixels)
    for channel in range(3):
        # A shared curve plus a per-channel one: a tone change with a colour cast, both monotone.
        own = rng.uniform(0.0, 0.6)
        curve = (1 - own) * shared + own * _monotone_curve(rng, len(knots))
        curve = knots + rng.uniform(0.3, 0.8) * (curve - knots)
        curve = curve**gamma
        curve = black + (white - black) * curve if compress else (curve - black) / (white - black)
        out[:, channel] = np.interp(pixels[:, channel], knots, curve)
    return np.clip(out, 0.0, 1.0)


def random_color_adjustment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast, saturation and hue changes in YIQ.

    Each of the four is applied with probability 0.6, and at least one always is.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``.
        rng: Draws which changes apply and how strong they are.
    """
    yiq = pixels @ _RGB_TO_YIQ.T
    applied = rng.random(4) < 0.6
    if not applied.any():
        applied[rng.integers(4)] = True
    brightness, contrast, saturation, hue = applied
    if brightness:
        yiq[:, 0] *= math.exp(rng.uniform(-0.35, 0.3))
    if contrast:
        luma = yiq[:, 0]
        yiq[:, 0] = luma.mean() + math.exp(rng.uniform(-0.35, 0.35)) * (luma - luma.mean())
    if saturation:
        yiq[:, 1:] *= math.exp(rng.uniform(-0.7, 0.5))
    if hue:
        angle = rng.uniform(-0.45, 0.45)
        cos, sin = math.cos(angle), math.sin(angle)
        yiq[:, 1:] = yiq[:, 1:] @ np.array([[cos, sin], [-sin, cos]], dtype=np.float32)
    return np.clip(yiq @ _YIQ_TO_RGB.T, 0.0, 1.0)


def random_white_balance(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random white balance (colour temperature and tint) and exposure change: per-channel gains.

    Args:
        pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``.
        rng: Draws temperature, tint and exposure.
    """
    temperature, tint = rng.uniform(-0.3, 0.3), rng.uniform(-0.12, 0.12)
    exposure = rng.uniform(-0.3, 0.25)
    gains = np.exp(np.array([temperature, tint, -temperature]) + exposure).astype(np.float32)
    return np.clip(pixels * gains, 0.0, 1.0)


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
