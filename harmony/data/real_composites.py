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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Final, Protocol

import cv2
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from harmony.data import types as keys
from harmony.data.datamodules import HarmonyDataModule, Split, TripletFoldersDataModule, seed_worker
from harmony.data.datasets import TripletDataset
from harmony.data.io import binarize, check_same_size, read_mask, read_rgb, save_rgb
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


class Inpainter(Protocol):
    """Fills the masked pixels of an image."""

    cache_key: str

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` (``H×W×3`` ``uint8``) where ``hole`` (``H×W`` bool) is set."""


class OpenCVInpainter:
    """OpenCV's fast-marching (Telea) or Navier-Stokes inpainting: no weights needed.

    Args:
        radius: Neighbourhood radius in pixels.
        method: ``telea`` or ``ns``.
    """

    def __init__(self, radius: int = 5, method: str = "telea") -> None:
        self.radius = radius
        self.flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
        self.cache_key = f"opencv-{method}-r{radius}"

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` where ``hole`` is set."""
        return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, self.radius, self.flag)


class LamaInpainter:
    """LaMa (Suvorov et al. 2022), the paper's inpainter, from a TorchScript export.

    The model is called as ``model(image, mask)`` with ``1×3×H×W`` RGB in ``[0, 1]`` and a ``1×1×H×W``
    mask (1 = hole), sides padded to multiples of 8, and returns ``1×3×H×W`` RGB in ``[0, 1]`` — the
    interface of the widely shared ``big-lama.pt`` export. Loaded on first use.

    Args:
        model_path: The TorchScript file.
        device: Where to run it.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu") -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise HarmonyInputError(self.model_path, "LaMa TorchScript model not found")
        self.device = device
        stat = self.model_path.stat()
        self.cache_key = f"lama-{self.model_path.name}-{stat.st_size}-{stat.st_mtime_ns}"
        self._model: torch.jit.ScriptModule | None = None

    @torch.no_grad()
    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` where ``hole`` is set."""
        if self._model is None:
            self._model = torch.jit.load(str(self.model_path), map_location=self.device).eval()
        height, width = hole.shape
        pad_h, pad_w = -height % 8, -width % 8
        padded_image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        padded_hole = np.pad(hole, ((0, pad_h), (0, pad_w)), mode="symmetric")
        x = torch.from_numpy(padded_image).permute(2, 0, 1)[None].float().div(255).to(self.device)
        m = torch.from_numpy(padded_hole.astype(np.float32))[None, None].to(self.device)
        output = self._model(x, m)[0, :, :height, :width].permute(1, 2, 0).clamp(0, 1).mul(255).round()
        filled = output.byte().cpu().numpy()
        return np.where(hole[..., None], filled, image)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of ``mask >= 0.5`` by a disc of radius ``pixels``."""
    binary = (mask >= 0.5).astype(np.uint8)
    if pixels <= 0:
        return binary.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(binary, kernel).astype(bool)


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


def blend(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask·foreground + (1 − mask)·background`` for ``uint8`` images and a soft mask, as ``uint8``."""
    alpha = mask[..., None].astype(np.float32)
    mixed = foreground.astype(np.float32) * alpha + background.astype(np.float32) * (1 - alpha)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div(255)


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
            keys.COMPOSITE: _chw(composite),
            keys.MASK: torch.from_numpy(binarize(pasted_mask))[None],
            BACKGROUND: _chw(background),
            REAL: _chw(real),
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
    held-out validation part); see :mod:`harmony.data.real_composites`.

    Args:
        root: The data set root.
        before_dir: Folder of unedited photos.
        after_dir: Folder of retouched photos.
        mask_dir: Folder of object masks.
        mask_suffix: Extra text after the stem in mask names.
        val_fraction: Share of pairs held out for validation when there is no ``val`` folder.
        image_size: Side length the model sees.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        eval_size: Side length the evaluator scores at.
        augment: Random-resized crop and flip for training.
        min_foreground: Smallest foreground fraction a training crop may have.
        scene_color_jitter: Strength of a random colour change of the whole training scene (0 = off).
        eval_image_size: Side length of evaluation images, when it differs from ``image_size``.
    """

    def __init__(
        self,
        root: str | Path,
        before_dir: str = "before",
        after_dir: str = "after",
        mask_dir: str = "masks",
        mask_suffix: str = "",
        val_fraction: float = 0.01,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        eval_size: int = 256,
        augment: bool = True,
        min_foreground: float = 0.01,
        scene_color_jitter: float = 0.0,
        eval_image_size: int | None = None,
    ) -> None:
        super().__init__(
            root,
            before_dir,
            mask_dir,
            after_dir,
            mask_suffix,
            "retouch",
            val_fraction,
            image_size,
            batch_size,
            num_workers,
            eval_size,
            augment,
            min_foreground,
            scene_color_jitter,
            eval_image_size,
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
    and prediction are the supervised DataModule's. The real-composite stream uses the supervised
    DataModule's image size, batch size and workers.

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
        super().__init__(
            supervised.image_size,
            supervised.batch_size,
            supervised.num_workers,
            supervised.eval_size,
            supervised.augment,
            supervised.min_foreground,
            supervised.scene_color_jitter,
            supervised.eval_image_size,
        )
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
        self.supervised.setup(stage)
        if stage == "fit" and self.real_dataset is None:
            self.real_dataset = self.make_real_dataset()

    def train_dataloader(self) -> CombinedLoader:
        """Both streams, one batch of each per step."""
        assert self.real_dataset is not None, "setup('fit') first"
        real = DataLoader(
            self.real_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=len(self.real_dataset) > self.batch_size,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
        )
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
