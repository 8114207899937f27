"""Evaluation protocols: how predictions, ground truths and masks are brought to the scoring size.

Two protocols are offered:

``iharmony4`` (default)
    The DiffHarmony / R2R evaluation: PIL bilinear resize to 256×256 (PIL antialiases when it
    downscales), mask nearest then binarised, the prediction's background replaced by the composite's,
    PSNR with a fixed data range of 255.
``bcmi``
    The iHarmony4 repository's own script: PIL bicubic resize to 256×256, mask nearest then binarised,
    no background paste, PSNR data range = ``prediction.max() − prediction.min()`` per image.

The paste uses the *composite's* background so the ground truth is never touched. That background is
not bit-identical to the real one: it carries its own JPEG noise, and after resizing a 1–2 px band
next to the mask edge holds foreground blended in by the filter. Even a perfect prediction therefore
scores MSE > 0 (2.7 on average over 41 real iHarmony4 test samples: about 2.1 from JPEG noise,
0.6 from the band), whereas the DiffHarmony/R2R code (``use_gt_bg``) pastes the ground truth's
background and would score 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from harmony.data.io import binarize
from harmony.errors import HarmonyInputError


@dataclass(frozen=True, kw_only=True)
class EvaluationProtocol:
    """One fixed way of scoring harmonized images.

    Args:
        name: The protocol's name, printed in every report (``iharmony4``, ``bcmi``).
        size: Images and masks are scored at ``size×size``.
        resample: The PIL filter used to resize images (``Image.BILINEAR``, ``Image.BICUBIC``).
        paste_background: Replace the prediction's background by the composite's before scoring.
        psnr_range: ``"fixed"``: PSNR data range 255; ``"prediction"``: the prediction's own
            ``max − min`` per image.
    """

    name: str
    size: int = 256
    resample: int
    paste_background: bool
    psnr_range: Literal["fixed", "prediction"]


PROTOCOLS: dict[str, EvaluationProtocol] = {
    "iharmony4": EvaluationProtocol(
        name="iharmony4", resample=Image.BILINEAR, paste_background=True, psnr_range="fixed"
    ),
    "bcmi": EvaluationProtocol(
        name="bcmi", resample=Image.BICUBIC, paste_background=False, psnr_range="prediction"
    ),
}


def get_protocol(name: str | EvaluationProtocol, paste_background: bool | None = None) -> EvaluationProtocol:
    """Look up a protocol by name, optionally overriding whether the background is pasted.

    Args:
        name: A key of :data:`PROTOCOLS`, or a protocol (e.g. a variant at another size, for tests).
        paste_background: ``None`` keeps the protocol's own choice.

    Returns:
        The protocol.

    Raises:
        HarmonyInputError: ``name`` is not a known protocol.
    """
    if isinstance(name, EvaluationProtocol):
        protocol = name
    elif name in PROTOCOLS:
        protocol = PROTOCOLS[name]
    else:
        choices = ", ".join(PROTOCOLS)
        raise HarmonyInputError(None, f"unknown evaluation protocol {name!r} (choose from {choices})")
    if paste_background is not None and paste_background != protocol.paste_background:
        protocol = dataclasses.replace(protocol, paste_background=paste_background)
    return protocol


def resize_image(image: np.ndarray, size: int, resample: int) -> np.ndarray:
    """Resize an ``H×W×3`` ``uint8`` image to ``size×size`` with a PIL filter (no-op at that size).

    Args:
        image: The image.
        size: The side of the output.
        resample: The PIL filter, e.g. ``Image.BILINEAR``.

    Returns:
        The ``size×size×3`` ``uint8`` image.
    """
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a soft ``H×W`` mask in ``[0, 1]`` to ``size×size`` (nearest) and binarise it at 0.5.

    The mask is quantised to 0–255 first, as the reference code resizes 8-bit mask files; nearest
    neighbour then picks stored values only, so binarising after resizing equals binarising before.

    Args:
        mask: The soft mask.
        size: The side of the output.

    Returns:
        A ``size×size`` ``float32`` mask in ``{0, 1}``.
    """
    quantised = np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8)
    if quantised.shape != (size, size):
        quantised = np.asarray(Image.fromarray(quantised).resize((size, size), Image.NEAREST))
    return binarize(quantised.astype(np.float32) / 255.0)
