"""Placing a pasted object: its bounding box, and the affine map that fits it into another box."""

from __future__ import annotations

import cv2
import numpy as np


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` (inclusive) of ``mask >= 0.5``, or ``None`` when it is empty."""
    ys, xs = np.nonzero(mask >= 0.5)
    if xs.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def fit_into_box(mask: np.ndarray, box: tuple[int, int, int, int], angle: float) -> np.ndarray:
    """The ``2×3`` affine map placing an object as large as possible inside ``box``, rotated by ``angle``.

    The object is rotated about its centre, then scaled and translated so that its rotated bounding
    box is contained in ``box`` and centred in it.

    Args:
        mask: The object's ``H×W`` mask.
        box: ``(x0, y0, x1, y1)`` to fit into.
        angle: Counter-clockwise rotation in degrees.
    """
    ys, xs = np.nonzero(mask >= 0.5)
    centre = ((xs.min() + xs.max()) / 2.0, (ys.min() + ys.max()) / 2.0)
    rotation = cv2.getRotationMatrix2D(centre, angle, 1.0)
    points = rotation @ np.stack([xs, ys, np.ones_like(xs)]).astype(np.float64)
    low, high = points.min(axis=1), points.max(axis=1)
    extent = high - low + 1.0
    x0, y0, x1, y1 = box
    scale = min((x1 - x0 + 1) / extent[0], (y1 - y0 + 1) / extent[1])
    source_centre = (low + high) / 2.0
    target_centre = np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0])
    affine = np.empty((2, 3))
    affine[:, :2] = scale * rotation[:, :2]
    affine[:, 2] = scale * (rotation[:, 2] - source_centre) + target_centre
    return affine
