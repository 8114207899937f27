"""Paired augmentation: the same geometric transform for composite, mask and target."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from harmony.data.io import binarize


class PairedTrainTransform:
    """Random-resized crop (retried while the foreground is too small), horizontal flip, scene colour.

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
        scene_color_jitter: Strength (0 = off, 1 = strong) of one random colour change — brightness,
            gamma, saturation, hue rotation and, half of the time, a swap of the RGB channels — applied
            alike to the composite and its real image. Every part is a per-pixel map, so the two
            backgrounds stay identical and the real foreground still matches the changed background;
            the scene colours are no longer those of the training photos, so a model learns to match
            foreground to background instead of memorising a few photos. Not in any paper; off by default.
        seed: Seed of the augmentation's own random state (see :meth:`reseed`); ``None`` draws one.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_foreground: float = 0.01,
        max_tries: int = 5,
        hflip: bool = True,
        scene_color_jitter: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= scene_color_jitter <= 1.0:
            raise ValueError(f"scene_color_jitter must be in [0, 1], got {scene_color_jitter}")
        targets = {"target": "image"}
        self.crop = A.Compose(
            [A.RandomResizedCrop(size=(size, size), scale=scale, ratio=ratio)], additional_targets=targets
        )
        self.resize = A.Compose(
            [A.Resize(size, size, interpolation=cv2.INTER_AREA)], additional_targets=targets
        )
        self.flip = A.Compose([A.HorizontalFlip(p=0.5 if hflip else 0.0)], additional_targets=targets)
        strength = scene_color_jitter
        self.scene_color = (
            A.Compose(
                [
                    # Only per-pixel operations: an image-dependent one (ColorJitter's contrast pivots on
                    # the image mean) would change the two backgrounds differently.
                    A.ColorJitter(
                        brightness=0.4 * strength,
                        contrast=0.0,
                        saturation=0.6 * strength,
                        hue=0.3 * strength,
                        p=1.0,
                    ),
                    A.RandomGamma(gamma_limit=(100 - 40 * strength, 100 + 60 * strength), p=1.0),
                    A.ChannelShuffle(p=0.5),
                ],
                additional_targets=targets,
            )
            if strength > 0
            else None
        )
        self.min_foreground = min_foreground
        self.max_tries = max_tries
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random state; albumentations keeps its own, which global seeding does not reach.

        A DataLoader worker calls this with its torch seed (see
        :func:`harmony.data.datamodules.seed_worker`), so a seeded run draws the same augmentations again.
        """
        for index, compose in enumerate((self.crop, self.resize, self.flip, self.scene_color)):
            if compose is not None:
                compose.set_random_seed(None if seed is None else seed + index)

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
        if self.scene_color is not None:
            out.update(self.scene_color(**{k: out[k] for k in inputs if k != "mask"}))
        return out["image"], out["mask"], out.get("target")
