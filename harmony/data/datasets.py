"""The one Dataset every file-based data set goes through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from harmony.data import types as keys
from harmony.data.io import binarize, check_same_size, read_mask, read_rgb, to_chw_tensor
from harmony.data.records import TripletRecord
from harmony.metrics.protocol import PROTOCOLS, resize_image, resize_mask

PairedTransform = Callable[
    [np.ndarray, np.ndarray, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, "np.ndarray | None"]
]


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size×size`` exactly as the default evaluation protocol resizes files."""
    return resize_image(image, size, PROTOCOLS["iharmony4"].resample)


class TripletDataset(Dataset):
    """Composite / mask / target triplets read from files, in harmony's batch format.

    Every image goes through :mod:`harmony.data.io` (EXIF orientation, RGBA, 16-bit, CMYK); a mask
    whose size differs from its composite is an error naming both files.

    Args:
        records: The samples.
        image_size: Side length of the working images (``composite``/``mask``/``target``).
        eval_size: When set, also return ``eval_*`` copies at this size prepared as the evaluator's
            protocol prescribes (for ``val``/``test``).
        transform: Paired augmentation for training; ``None`` resizes with PIL bilinear like the
            evaluator, so test-time inputs match the scored files exactly.
    """

    def __init__(
        self,
        records: Sequence[TripletRecord],
        image_size: int,
        eval_size: int | None = None,
        transform: PairedTransform | None = None,
    ) -> None:
        self.records = list(records)
        self.image_size = image_size
        self.eval_size = eval_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Read one record's composite (``uint8``), soft mask and target (``uint8`` or ``None``)."""
        record = self.records[index]
        composite = read_rgb(record.composite)
        mask = read_mask(record.mask)
        check_same_size(record.composite, composite, record.mask, mask)
        target = None
        if record.target is not None:
            target = read_rgb(record.target)
            check_same_size(record.target, target, record.mask, mask)
        return composite, mask, target

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        composite, mask, target = self.load(index)
        sample: dict[str, Any] = {
            keys.NAME: record.name,
            keys.SUBSET: record.subset,
            keys.COMPOSITE_PATH: str(record.composite),
            keys.MASK_PATH: str(record.mask),
            keys.ORIGINAL_SIZE: torch.tensor(composite.shape[:2]),
        }
        if record.target is not None:
            sample[keys.TARGET_PATH] = str(record.target)
        if self.eval_size is not None and target is not None:
            sample[keys.EVAL_COMPOSITE] = to_chw_tensor(resize_rgb(composite, self.eval_size))
            sample[keys.EVAL_TARGET] = to_chw_tensor(resize_rgb(target, self.eval_size))
            sample[keys.EVAL_MASK] = torch.from_numpy(resize_mask(mask, self.eval_size))[None]
        if self.transform is not None:
            composite, mask, target = self.transform(composite, mask, target)
            mask = binarize(mask)
        else:
            composite = resize_rgb(composite, self.image_size)
            target = None if target is None else resize_rgb(target, self.image_size)
            mask = resize_mask(mask, self.image_size)
        sample[keys.COMPOSITE] = to_chw_tensor(composite).float().div(255)
        sample[keys.MASK] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        if target is not None:
            sample[keys.TARGET] = to_chw_tensor(target).float().div(255)
        return sample
