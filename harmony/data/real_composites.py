"""Training data of the dual-stream method (Wang et al. 2023, Sec. 3.2).

Stream 2, real composites without ground truth, from a folder of photos with one object mask each::

    <root>/images/<stem>.<jpg|png|…>     the photos I_i
    <root>/masks/<stem><suffix>.png       their foreground masks M_i (white = object)

Each photo's background is inpainted once where its dilated mask was (OpenCV by default, LaMa when a
TorchScript model is given) and cached on disk. A sample pastes the object of another photo j into
that background, rotated and translated to sit inside object i's bounding box (Eq. 5) — and scaled,
as the official code does, since rotation and translation alone cannot always make it fit; its "real"
counterpart for the discriminator pastes object i back onto its own inpainted background (Eq. 6).

Stream 1 retouch pairs, before/after photos retouched by an artist with a mask of the object::

    <root>[/<split>]/before/<stem>.<ext>   unedited photo I
    <root>[/<split>]/after/<stem>.<ext>    retouched photo O
    <root>[/<split>]/masks/<stem>.png      object mask M

Each pair gives two composites: foreground retouched ``M·O + (1−M)·I`` with target ``I``, and background
retouched ``M·I + (1−M)·O`` with target ``O``.

The inpainting, placement and blending these use are those of :mod:`harmony.data.composites`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import Dataset
from tqdm import tqdm

from harmony.data import types as keys
from harmony.data.composites import (
    Inpainter,
    LamaInpainter,
    OpenCVInpainter,
    blend,
    bounding_box,
    dilate,
    fit_into_box,
)
from harmony.data.datamodules import HarmonyDataModule, Split, TripletFoldersDataModule
from harmony.data.datasets import TripletDataset
from harmony.data.io import binarize, check_same_size, read_mask, read_rgb, save_rgb, to_chw_tensor
from harmony.data.records import TripletRecord, list_matched_folders
from harmony.data.types import BACKGROUND, REAL
from harmony.errors import HarmonyInputError

SUPERVISED: Final = "supervised"
"""Key of the supervised stream in a dual-stream training batch."""
UNSUPERVISED: Final = "unsupervised"
"""Key of the unsupervised (real composite) stream in a dual-stream training batch."""

REAL_COMPOSITES_SUBSET: Final = "real-composites"
RETOUCHED_FOREGROUND: Final = "retouch-fg"
RETOUCHED_BACKGROUND: Final = "retouch-bg"


def _file_signature(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


class RealCompositeDataset(Dataset):
    """Unpaired real composites (Eq. 5) with their discriminator "real" class (Eq. 6).

    Images and masks are resized to ``image_size×image_size``; dilation, inpainting and pasting happen
    at that size. The partner photo ``j`` and the rotation are drawn from torch's global generator,
    which Lightning seeds per worker and epoch.

    Args:
        records: The photos (``composite`` = photo, ``mask`` = its object mask).
        image_size: Working side length.
        inpainter: Fills the dilated object region of each photo.
        cache_dir: Where inpainted backgrounds are kept, keyed by file, size, dilation and inpainter.
        dilation: Mask dilation before inpainting, in pixels at ``image_size`` (30 in the paper).
        max_rotation: Largest rotation of the pasted object, in degrees.
    """

    def __init__(
        self,
        records: list[TripletRecord],
        image_size: int,
        inpainter: Inpainter,
        cache_dir: str | Path,
        dilation: int = 30,
        max_rotation: float = 10.0,
    ) -> None:
        if not records:
            raise HarmonyInputError(cache_dir, "no real-composite photos")
        self.records = records
        self.image_size = image_size
        self.inpainter = inpainter
        self.cache_dir = Path(cache_dir)
        self.dilation = dilation
        self.max_rotation = max_rotation

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One photo (``uint8``) and its soft mask at the working size."""
        record = self.records[index]
        image, mask = read_rgb(record.composite), read_mask(record.mask)
        check_same_size(record.composite, image, record.mask, mask)
        size = (self.image_size, self.image_size)
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), cv2.resize(
            mask, size, interpolation=cv2.INTER_AREA
        )

    def cache_path(self, index: int) -> Path:
        """Where photo ``index``'s inpainted background is cached."""
        record = self.records[index]
        signature = _file_signature(record.composite) + _file_signature(record.mask)
        signature += [self.image_size, self.dilation, self.inpainter.cache_key]
        digest = hashlib.sha1(json.dumps(signature).encode()).hexdigest()[:16]
        return self.cache_dir / f"{record.name}-{digest}.png"

    def inpainted_background(
        self, index: int, loaded: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """inpaint(B_i, M_i): photo ``index`` with its dilated object region filled (cached)."""
        path = self.cache_path(index)
        if path.is_file():
            return read_rgb(path)
        image, mask = self.load(index) if loaded is None else loaded
        background = self.inpainter(image, dilate(mask, self.dilation))
        save_rgb(path, background)
        return background

    def prepare(self) -> None:
        """Inpaint and cache every background that is not cached yet."""
        missing = [i for i in range(len(self)) if not self.cache_path(i).is_file()]
        for index in tqdm(missing, desc="inpainting backgrounds", disable=not missing):
            self.inpainted_background(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_i, mask_i = self.load(index)
        background = self.inpainted_background(index, (image_i, mask_i))
        partner = index
        if len(self) > 1:
            partner = (index + 1 + int(torch.randint(len(self) - 1, ()))) % len(self)
        image_j, mask_j = self.load(partner)
        angle = float(torch.empty(()).uniform_(-self.max_rotation, self.max_rotation))
        box = bounding_box(mask_i) or (0, 0, self.image_size - 1, self.image_size - 1)
        size = (self.image_size, self.image_size)
        if bounding_box(mask_j) is None:
            pasted_mask = np.zeros_like(mask_j)
            pasted_image = image_j
        else:
            affine = fit_into_box(mask_j, box, angle)
            pasted_image = cv2.warpAffine(
                image_j, affine, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
            pasted_mask = cv2.warpAffine(mask_j, affine, size, flags=cv2.INTER_LINEAR, borderValue=0)
        composite = blend(pasted_image, background, pasted_mask)  # Eq. 5
        real = blend(image_i, background, mask_i)  # Eq. 6
        return {
            keys.COMPOSITE: to_chw_tensor(composite).float().div(255),
            keys.MASK: torch.from_numpy(binarize(pasted_mask))[None],
            BACKGROUND: to_chw_tensor(background).float().div(255),
            REAL: to_chw_tensor(real).float().div(255),
            keys.NAME: f"{self.records[partner].name}_on_{self.records[index].name}",
            keys.SUBSET: REAL_COMPOSITES_SUBSET,
        }


class RetouchPairsDataset(TripletDataset):
    """Retouch pairs (before, after, mask) as the two composites of Sec. 3.2 each.

    Sample ``2k`` is pair ``k`` with only the foreground retouched (target: before), sample ``2k + 1``
    with only the background retouched (target: after). Subsets ``retouch-fg``/``retouch-bg`` keep the
    two kinds apart in reports.

    Args:
        records: The pairs (``composite`` = before, ``target`` = after).
        image_size: Side length of the working images.
        eval_size: When set, also return the evaluator's protocol-size copies.
        transform: Paired augmentation for training.
    """

    def __init__(
        self,
        records: list[TripletRecord],
        image_size: int,
        eval_size: int | None = None,
        transform: Any = None,
    ) -> None:
        expanded = []
        for record in records:
            if record.target is None:
                raise HarmonyInputError(
                    record.composite, "a retouch pair needs its retouched ('after') image"
                )
            expanded.append(
                dataclasses.replace(record, name=f"{record.name}_fg", subset=RETOUCHED_FOREGROUND)
            )
            expanded.append(
                dataclasses.replace(record, name=f"{record.name}_bg", subset=RETOUCHED_BACKGROUND)
            )
        super().__init__(expanded, image_size, eval_size=eval_size, transform=transform)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Build composite and target of sample ``index`` from its before/after photos."""
        before, mask, after = super().load(index)
        if self.records[index].subset == RETOUCHED_FOREGROUND:
            return blend(after, before, mask), mask, before
        return blend(before, after, mask), mask, after


class RetouchPairsDataModule(TripletFoldersDataModule):
    """Artist retouch pairs for the supervised stream (the paper's *Artist-Retouched* format).

    ``<root>/<split>/{before,after,masks}`` (or those folders directly under ``<root>``, with a
    held-out validation part); see :mod:`harmony.data.real_composites`. The before photos take the
    place of composites and the after photos that of targets; results are reported under subsets
    ``retouch-fg`` and ``retouch-bg``.

    Args:
        root: The data set root.
        before_dir: Folder of unedited photos.
        after_dir: Folder of retouched photos.
        image_size: Side length the model sees.
        **kwargs: See :class:`~harmony.data.datamodules.TripletFoldersDataModule` (``mask_dir``,
            ``mask_suffix``, ``val_fraction``) and :class:`~harmony.data.datamodules.HarmonyDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        before_dir: str = "before",
        after_dir: str = "after",
        image_size: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            composite_dir=before_dir,
            target_dir=after_dir,
            subset="retouch",
            image_size=image_size,
            **kwargs,
        )

    def list_records(self, split: Split) -> list[TripletRecord]:
        """List the split's pairs; prediction needs composite files, which pairs do not have."""
        if split == "predict":
            raise HarmonyInputError(self.root, "retouch pairs have no composite files to predict; use `test`")
        return super().list_records(split)

    def make_dataset(self, split: Split) -> Dataset:
        """Build the split's dataset of retouched composites."""
        triplets = super().make_dataset(split)
        return RetouchPairsDataset(
            triplets.records, triplets.image_size, triplets.eval_size, triplets.transform
        )


class DualStreamDataModule(HarmonyDataModule):
    """Both training streams of Sec. 3.2: any paired DataModule plus real composites from a folder.

    Training batches are ``{"supervised": batch, "unsupervised": batch}`` (a
    :class:`~lightning.pytorch.utilities.CombinedLoader` cycling the shorter stream); validation, test
    and prediction are the supervised DataModule's. This DataModule takes every shared option
    (:meth:`~harmony.data.datamodules.HarmonyDataModule.shared_options`) from the supervised one, so the
    real-composite stream has its image size, batch size and workers.

    Args:
        supervised: The paired data (e.g. :class:`RetouchPairsDataModule`, iHarmony4).
        real_composites: Folder with ``images/`` and ``masks/`` (see :mod:`harmony.data.real_composites`).
        mask_suffix: Extra text after the stem in the real-composite mask names.
        lama_model: LaMa TorchScript model for inpainting; ``None`` uses OpenCV's Telea inpainting.
        inpaint_device: Device LaMa runs on.
        dilation: Mask dilation before inpainting, in pixels at the working size (30 in the paper).
        max_rotation: Largest rotation of a pasted object, in degrees.
        cache_dir: Where inpainted backgrounds are cached (default ``<real_composites>/.inpainted``).
    """

    def __init__(
        self,
        supervised: HarmonyDataModule,
        real_composites: str | Path,
        mask_suffix: str = "",
        lama_model: str | Path | None = None,
        inpaint_device: str = "cpu",
        dilation: int = 30,
        max_rotation: float = 10.0,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(**supervised.shared_options())
        self.supervised = supervised
        self.real_composites = Path(real_composites)
        self.mask_suffix = mask_suffix
        self.lama_model = None if lama_model is None else Path(lama_model)
        self.inpaint_device = inpaint_device
        self.dilation = dilation
        self.max_rotation = max_rotation
        self.cache_dir = self.real_composites / ".inpainted" if cache_dir is None else Path(cache_dir)
        self.real_dataset: RealCompositeDataset | None = None

    def list_records(self, split: Split) -> list[TripletRecord]:
        """The supervised DataModule's records."""
        return self.supervised.list_records(split)

    def make_real_dataset(self) -> RealCompositeDataset:
        """The unsupervised stream's dataset."""
        records = list_matched_folders(
            self.real_composites / "images",
            self.real_composites / "masks",
            None,
            REAL_COMPOSITES_SUBSET,
            self.mask_suffix,
        )
        inpainter: Inpainter = (
            OpenCVInpainter()
            if self.lama_model is None
            else LamaInpainter(self.lama_model, self.inpaint_device)
        )
        return RealCompositeDataset(
            records, self.image_size, inpainter, self.cache_dir, self.dilation, self.max_rotation
        )

    def prepare_data(self) -> None:
        """Prepare the supervised data and inpaint (once, cached) every real-composite background."""
        self.supervised.prepare_data()
        self.make_real_dataset().prepare()

    def setup(self, stage: str) -> None:
        """Set up the supervised DataModule, and the real composites for ``fit``."""
        # Its evaluation loaders ask the Trainer how many processes share the data (unpadded_sampler).
        self.supervised.trainer = self.trainer
        self.supervised.setup(stage)
        if stage == "fit" and self.real_dataset is None:
            self.real_dataset = self.make_real_dataset()

    def train_dataloader(self) -> CombinedLoader:
        """Both streams, one batch of each per step."""
        assert self.real_dataset is not None, "setup('fit') first"
        real = self.make_dataloader(self.real_dataset, shuffle=True)
        return CombinedLoader(
            {SUPERVISED: self.supervised.train_dataloader(), UNSUPERVISED: real}, mode="max_size_cycle"
        )

    def val_dataloader(self) -> Any:
        """The supervised DataModule's validation batches."""
        return self.supervised.val_dataloader()

    def test_dataloader(self) -> Any:
        """The supervised DataModule's test batches."""
        return self.supervised.test_dataloader()

    def predict_dataloader(self) -> Any:
        """The supervised DataModule's prediction batches."""
        return self.supervised.predict_dataloader()
