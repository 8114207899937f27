"""Pasting one image onto another with a soft mask: ``uint8`` arrays (:func:`blend`) and tensors."""

from __future__ import annotations

import numpy as np
import torch


def blend(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Paste ``foreground`` onto ``background``: ``mask·foreground + (1 − mask)·background``.

    The sum is computed in ``float32`` and rounded half up to ``uint8``, so a pixel whose mask is 0 keeps
    the background's value and one whose mask is 1 the foreground's.

    Args:
        foreground: ``H×W×3`` ``uint8`` image shown where the mask is 1.
        background: ``H×W×3`` ``uint8`` image shown where the mask is 0.
        mask: ``H×W`` soft mask in ``[0, 1]``.

    Returns:
        The ``H×W×3`` ``uint8`` blend.
    """
    alpha = mask[..., None].astype(np.float32)
    mixed = foreground.astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def paste_background(prediction: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Keep ``prediction`` inside ``mask`` and the composite elsewhere (soft masks blend).

    Args:
        prediction: ``B×3×H×W`` images in ``[0, 1]``.
        composite: ``B×3×H×W`` composites in ``[0, 1]``.
        mask: ``B×1×H×W`` foreground mask in ``[0, 1]``.
    """
    return prediction * mask + composite * (1 - mask)
