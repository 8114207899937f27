"""Random Poisson Blending (R2R, Zhang et al. 2025): relight a foreground from a region of another photo.

The foreground of a real photo is Poisson-blended (Pérez et al. 2003) into a randomly placed region of a
reference photo. The Poisson solution keeps the foreground's own gradients but takes its boundary values
from the reference, so its colour and light drift towards those of that region, and unevenly so, unlike
a global colour transfer. The blended foreground, mixed with the original one, goes back into the photo.
:mod:`harmony.commands.build_rpharmony` builds RPHarmony-style data sets with it.
"""

from __future__ import annotations

import cv2
import numpy as np

from harmony.data.composites.placement import bounding_box
from harmony.errors import HarmonyInputError

DEFAULT_ALPHA = 0.75
"""Share of the Poisson-blended foreground in the result (the value of the official code's helper)."""

# The foreground's box sits this far inside the source patch: the 3×3 dilation adds one ring and OpenCV
# clears the patch's outermost ring of the clone mask, so two pixels keep the foreground intact.
_MARGIN = 2


def _check_photo(array: np.ndarray, role: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        described = (
            f"shape {array.shape}, dtype {array.dtype}" if isinstance(array, np.ndarray) else type(array)
        )
        raise HarmonyInputError(None, f"the {role} must be an H×W×3 uint8 array, got {described}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise HarmonyInputError(None, f"the {role} is empty ({array.shape[1]}x{array.shape[0]})")


def _binary_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask >= 0.5`` as ``bool``, for a ``bool``, ``uint8`` (0–255) or float (0–1) mask."""
    if mask.shape != shape:
        raise HarmonyInputError(
            None, f"the mask's shape {mask.shape} differs from the image's {shape} (an H×W mask is needed)"
        )
    if mask.dtype == bool:
        return mask
    if mask.dtype == np.uint8:
        # 127 of 255 is background and 128 foreground, as harmony.data.io.binarize reads mask files.
        return mask >= 128
    if np.issubdtype(mask.dtype, np.floating):
        if not (np.nanmin(mask) >= 0.0 and np.nanmax(mask) <= 1.0):
            raise HarmonyInputError(None, "a float mask must lie in [0, 1] (use uint8 for 0–255 masks)")
        return mask >= 0.5
    raise HarmonyInputError(None, f"the mask must be bool, uint8 (0–255) or float (0–1), got {mask.dtype}")


def _source_patch(
    image: np.ndarray, foreground: np.ndarray, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground on a solid patch of its mean colour, and the 3×3-dilated clone mask.

    The solid surround (as in the official code's helper) means the one-pixel ring the dilation adds
    carries no gradient from the photo's own background into the blend, and the patch is built from the
    foreground alone, so a foreground that touches the photo's border needs no special case.
    """
    x0, y0, x1, y1 = box
    inside = foreground[y0 : y1 + 1, x0 : x1 + 1]
    pixels = image[y0 : y1 + 1, x0 : x1 + 1]
    mean = np.round(pixels[inside].mean(axis=0)).astype(np.uint8)
    height, width = inside.shape
    patch = np.empty((height + 2 * _MARGIN, width + 2 * _MARGIN, 3), np.uint8)
    patch[:] = mean
    core = patch[_MARGIN : _MARGIN + height, _MARGIN : _MARGIN + width]
    core[inside] = pixels[inside]
    clone_mask = np.zeros(patch.shape[:2], np.uint8)
    clone_mask[_MARGIN : _MARGIN + height, _MARGIN : _MARGIN + width] = inside * np.uint8(255)
    return patch, cv2.dilate(clone_mask, np.ones((3, 3), np.uint8))


def _fit_reference(
    reference: np.ndarray, image_shape: tuple[int, int], region: tuple[int, int]
) -> np.ndarray:
    """The reference brought to the photo's scale, and enlarged further if ``region`` (h, w) does not fit.

    Matching the shorter sides makes a region of the reference cover about as much of its scene as the
    foreground covers of the photo, whatever the two photos' resolutions.
    """
    ref_height, ref_width = reference.shape[:2]
    scale = min(image_shape) / min(ref_height, ref_width)
    scale = max(scale, region[0] / ref_height, region[1] / ref_width)
    size = (max(region[1], round(ref_width * scale)), max(region[0], round(ref_height * scale)))
    if size == (ref_width, ref_height):
        return reference
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(reference, size, interpolation=interpolation)


def _poisson_clone(
    source: np.ndarray, clone_mask: np.ndarray, destination: np.ndarray, top: int, left: int
) -> np.ndarray:
    """``cv2.seamlessClone`` (``NORMAL_CLONE``) with the clone mask's box placed at ``(top, left)``."""
    # OpenCV centres the clone mask's bounding box on the given point (rounding the half sizes down);
    # this is the point that puts the box's top-left corner at (top, left).
    _, _, width, height = cv2.boundingRect(clone_mask)
    centre = (left + width // 2, top + height // 2)
    return cv2.seamlessClone(source, np.ascontiguousarray(destination), clone_mask, centre, cv2.NORMAL_CLONE)


def random_poisson_blending(
    image: np.ndarray,
    mask: np.ndarray,
    reference: np.ndarray,
    rng: np.random.Generator,
    alpha: float = DEFAULT_ALPHA,
) -> np.ndarray:
    """Make a composite by Random Poisson Blending (R2R, Zhang et al. 2025).

    The steps follow the paper: (1) the foreground ``F_t`` is taken from ``image``; (2) it is Poisson-blended
    (OpenCV's ``seamlessClone``, ``NORMAL_CLONE``) into a region of ``reference`` at a random position;
    (3) the blended foreground ``F_p`` is cut out where it was placed and mixed as
    ``alpha·F_p + (1 − alpha)·F_t``; (4) the mix is pasted back inside the mask. The paper leaves its
    "additional operations" to a supplement that is not public; the choices here are:

    - The foreground is blended from a patch holding only the foreground on a solid background of its
      mean colour, with the mask dilated by 3×3, as the official repository's (unused) helper does.
    - The reference is resized so that its shorter side equals the image's (a region then covers about
      as much of its scene as the foreground of its own), and enlarged further when the foreground's
      box does not fit; the position is uniform over all positions where the box fits.
    - The mask is binarised at 0.5 and the result is pasted with the hard mask, so every pixel outside it
      is ``image``'s own value, bit for bit.

    The paper's ``alpha`` is given only in its supplement; the default 0.75 is the value of the official
    code's helper. ``alpha = 0`` returns the image unchanged, ``alpha = 1`` the pure Poisson blend.

    Args:
        image: The real photo ``I_t``, ``H×W×3`` ``uint8``.
        mask: Its ``H×W`` foreground mask: ``bool``, ``uint8`` (0–255, foreground from 128) or float in
            ``[0, 1]`` (foreground from 0.5).
        reference: The reference photo ``I_r``, ``h×w×3`` ``uint8``, any size.
        rng: Draws the blending position; the result depends on nothing else random.
        alpha: Share of the Poisson-blended foreground, in ``[0, 1]``.

    Returns:
        The composite ``Ĩ_t``, ``H×W×3`` ``uint8``.

    Raises:
        HarmonyInputError: An array has the wrong shape or dtype, the mask's size differs from the
            image's, the mask is empty, or ``alpha`` is outside ``[0, 1]``.
    """
    _check_photo(image, "image")
    _check_photo(reference, "reference")
    if not 0.0 <= alpha <= 1.0:
        raise HarmonyInputError(None, f"alpha must lie in [0, 1], got {alpha}")
    foreground = _binary_mask(np.asarray(mask), image.shape[:2])
    box = bounding_box(foreground)
    if box is None:
        raise HarmonyInputError(None, "the mask is empty (no pixel >= 0.5)")
    x0, y0, x1, y1 = box
    height, width = y1 - y0 + 1, x1 - x0 + 1
    source, clone_mask = _source_patch(image, foreground, box)
    # The clone region is the foreground's box plus the dilation's one-pixel ring.
    destination = _fit_reference(reference, image.shape[:2], (height + 2, width + 2))
    top = int(rng.integers(0, destination.shape[0] - (height + 2) + 1))
    left = int(rng.integers(0, destination.shape[1] - (width + 2) + 1))
    blended = _poisson_clone(source, clone_mask, destination, top, left)
    poisson_foreground = blended[top + 1 : top + 1 + height, left + 1 : left + 1 + width]
    original = image[y0 : y1 + 1, x0 : x1 + 1]
    mixed = alpha * poisson_foreground.astype(np.float32) + (1.0 - alpha) * original.astype(np.float32)
    mixed = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
    composite = image.copy()
    inside = foreground[y0 : y1 + 1, x0 : x1 + 1]
    composite[y0 : y1 + 1, x0 : x1 + 1][inside] = mixed[inside]
    return composite
