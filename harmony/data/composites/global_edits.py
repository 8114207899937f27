"""Whole-photo edits that make two renditions of one scene: an expert's retouch and a change of light.

iHarmony4's HAdobe5k composites paste a region of one expert's retouch of a raw photo into another
version of the same photo, and Hday2night ones paste a region of a photo of the same scene taken at
another time of day (Cong et al. 2020, Sec. 3). :func:`random_retouch` and :func:`random_illumination`
draw such renditions: each returns an edit, a function of ``N×3`` ``float32`` RGB pixels in ``[0, 1]``,
that is applied to a whole photo (to make the real image) or to the foreground's pixels (to make the
composite's foreground), so both sides of a composite are one scene seen two ways.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import numpy as np

Edit = Callable[[np.ndarray], np.ndarray]
"""A global edit of ``N×3`` ``float32`` RGB pixels in ``[0, 1]``."""

_LUMA: Final = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_DISPLAY_GAMMA: Final = 2.2


def _to_linear(pixels: np.ndarray) -> np.ndarray:
    return np.power(np.clip(pixels, 0.0, 1.0), _DISPLAY_GAMMA)


def _to_display(linear: np.ndarray) -> np.ndarray:
    return np.power(np.clip(linear, 0.0, 1.0), 1.0 / _DISPLAY_GAMMA)


def _white_balance_gains(temperature: float, tint: float) -> np.ndarray:
    # Warmer raises red and lowers blue; tint trades green against magenta.
    return np.exp(np.array([temperature, tint, -temperature], dtype=np.float32))


def _tone_curve(values: np.ndarray, contrast: float, shadows: float, highlights: float) -> np.ndarray:
    # A contrast S-curve through mid-grey, then shadows lifted and highlights pulled in, as the
    # sliders of a raw developer move them.
    curved = values + contrast * values * (1.0 - values) * (2.0 * values - 1.0) * 2.0
    curved = curved + shadows * (1.0 - curved) ** 3 - highlights * curved**3
    return np.clip(curved, 0.0, 1.0)


def _saturate(pixels: np.ndarray, factor: float) -> np.ndarray:
    luma = pixels @ _LUMA
    return np.clip(luma[:, None] + factor * (pixels - luma[:, None]), 0.0, 1.0)


def random_retouch(rng: np.random.Generator) -> Edit:
    """An expert's global retouch of a photo, as in MIT-Adobe FiveK (iHarmony4's HAdobe5k subset).

    Exposure (±0.7 stop) and white balance (temperature ±0.25, tint ±0.08) in linear light, then a
    contrast S-curve, shadow and highlight recovery, a gamma of ``e^{±0.25}`` and saturation
    ``e^{[−0.45, 0.35]}`` in display space. Every parameter is drawn here, in a fixed order.

    Args:
        rng: Draws the retouch.

    Returns:
        The retouch, applicable to any number of pixels.
    """
    exposure = 2.0 ** rng.uniform(-0.7, 0.7)
    gains = _white_balance_gains(rng.uniform(-0.25, 0.25), rng.uniform(-0.08, 0.08)) * exposure
    contrast = rng.uniform(-0.35, 0.45)
    shadows, highlights = rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.2)
    gamma = math.exp(rng.uniform(-0.25, 0.25))
    saturation = math.exp(rng.uniform(-0.45, 0.35))

    def retouch(pixels: np.ndarray) -> np.ndarray:
        display = _to_display(_to_linear(pixels) * gains)
        toned = _tone_curve(display, contrast, shadows, highlights) ** gamma
        return _saturate(toned, saturation).astype(np.float32)

    return retouch


_HAZE_LEVEL: Final = 0.18
_ILLUMINATIONS: Final = ("day", "overcast", "dusk", "night")
_ILLUMINATION_PROBABILITIES: Final = (0.3, 0.2, 0.25, 0.25)


def random_illumination(rng: np.random.Generator) -> Edit:
    """The scene under another light: day, overcast, dusk or night (iHarmony4's Hday2night subset).

    In linear light the photo is multiplied by an exposure (day ``2^{±0.3}``, overcast ``2^{[−1.2,
    −0.3]}``, dusk ``2^{[−2.5, −1]}``, night ``2^{[−4, −2.2]}``) and the light's colour (dusk warm,
    night mostly blue or sodium-orange), flattened towards mid-grey by haze (overcast) and given a small
    ambient floor at night, so dark scenes keep their blacks lifted as street lighting does.

    Args:
        rng: Draws the light.

    Returns:
        The relighting, applicable to any number of pixels.
    """
    kind = _ILLUMINATIONS[rng.choice(len(_ILLUMINATIONS), p=_ILLUMINATION_PROBABILITIES)]
    if kind == "day":
        stops, temperature, haze, ambient = rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.1), 0.0, 0.0
    elif kind == "overcast":
        stops, temperature = rng.uniform(-1.2, -0.3), rng.uniform(-0.2, 0.0)
        haze, ambient = rng.uniform(0.1, 0.4), 0.0
    elif kind == "dusk":
        stops, temperature = rng.uniform(-2.5, -1.0), rng.uniform(0.05, 0.4)
        haze, ambient = rng.uniform(0.0, 0.2), rng.uniform(0.0, 0.005)
    else:
        stops = rng.uniform(-4.0, -2.2)
        temperature = rng.uniform(-0.45, -0.1) if rng.random() < 0.6 else rng.uniform(0.2, 0.5)
        haze, ambient = rng.uniform(0.0, 0.3), rng.uniform(0.001, 0.01)
    gains = _white_balance_gains(temperature, rng.uniform(-0.05, 0.05)) * 2.0**stops

    def relight(pixels: np.ndarray) -> np.ndarray:
        linear = _to_linear(pixels)
        # Towards a fixed mid-grey, not the pixels' own mean: the edit must not depend on which pixels
        # (the whole photo or only its foreground) it is given.
        linear = (1.0 - haze) * linear + haze * _HAZE_LEVEL
        return _to_display(linear * gains + ambient).astype(np.float32)

    return relight
