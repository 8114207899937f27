"""Paired augmentation: the same geometric transform for composite, mask and target."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from harmony.data.io import binarize


class PairedTrainTransform:
    """Random-resized crop (retried while the foreground is too small) and horizontal flip.

    The crop follows the harmonization convention: scale ``[0.5, 1]`` of the area, aspect ``[3/4, 4/3]``,
    re-drawn up to ``max_tries`` times while the foreground covers less than ``min_foreground`` of the
    crop; if no draw qualifies the whole image is resized instead, so a sample always keeps its object.

    Args:
        size: Output side length.
        scale: Range of the crop's area relative to the image.
        ratio: Range of the crop's aspect ratio.
        min_foreground: Smallest acceptable foreground fraction of a crop.
        max_tries: Crops drawn before falling back to a plain resize.
        hflip: Flip horizontally with probability 0.5.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_foreground: float = 0.01,
        max_tries: int = 5,
        hflip: bool = True,
    ) -> None:
        targets = {"target": "image"}
        self.crop = A.Compose(
            [A.RandomResizedCrop(size=(size, size), scale=scale, ratio=ratio)], additional_targets=targets
        )
        self.resize = A.Compose(
            [A.Resize(size, size, interpolation=cv2.INTER_AREA)], additional_targets=targets
        )
        self.flip = A.Compose([A.HorizontalFlip(p=0.5 if hflip else 0.0)], additional_targets=targets)
        self.min_foreground = min_foreground
        self.max_tries = max_tries

    def __call__(
        self, composite: np.ndarray, mask: np.ndarray, target: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Transform one sample (``uint8`` images, soft ``float32`` mask) identically."""
        inputs = {"image": composite, "mask": mask}
        if target is not None:
            inputs["target"] = target
        out = None
        for _ in range(self.max_tries):
            candidate = self.crop(**inputs)
            if binarize(candidate["mask"]).mean() >= self.min_foreground:
                out = candidate
                break
        if out is None:
            out = self.resize(**inputs)
        out = self.flip(**{k: out[k] for k in inputs})
        return out["image"], out["mask"], out.get("target")
