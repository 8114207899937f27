"""LightningDataModules: one base, one small subclass per data set layout."""

from __future__ import annotations

import inspect
from abc import abstractmethod
from pathlib import Path
from typing import Any, Literal

import cv2
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, get_worker_info

from harmony.data.blending import blend_generated, check_blending_options
from harmony.data.datasets import TripletDataset
from harmony.data.records import TripletRecord, holdout, list_iharmony4, list_matched_folders
from harmony.data.transforms import PairedTrainTransform
from harmony.data.types import IHARMONY4_SUBSETS
from harmony.errors import HarmonyInputError

Split = Literal["train", "val", "test", "predict"]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a single-threaded OpenCV and a reseeded paired augmentation.

    Loader workers run beside the training process, so OpenCV's own thread pool would oversubscribe the
    cores (torch already uses one thread per worker). Albumentations keeps a random state of its own that
    ``seed_everything(workers=True)`` does not reach; seeding it from the worker's torch seed (derived
    from the run's seed) makes a seeded run draw the same augmentations again.
    """
    cv2.setNumThreads(1)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, PairedTrainTransform):
        transform.reseed(torch.initial_seed() % 2**31)


class HarmonyDataModule(LightningDataModule):
    """Base of every harmony DataModule: turns a per-split list of records into loaders.

    Subclasses implement :meth:`list_records`. Training samples get paired augmentation, evaluation
    samples are resized with PIL bilinear exactly as the evaluator resizes files, and carry the
    protocol-size copies the evaluator scores.

    The options below are keyword-only and shared by every DataModule. A subclass declares only the
    parameters that are new to it (or whose default it changes, or that it fixes) and hands the rest on
    with ``super().__init__(..., **kwargs)``; LightningCLI follows ``**kwargs`` into this signature, so
    the subclass's ``--data.help`` lists these options with the help texts below, less any it fixes.

    Args:
        image_size: Side length of the images the model sees.
        batch_size: Samples per batch (training and evaluation).
        num_workers: DataLoader worker processes.
        eval_size: Side length the evaluator scores at (256 in the iHarmony4 protocol).
        augment: Random-resized crop and horizontal flip for training.
        min_foreground: Smallest foreground fraction a training crop may have.
        scene_color_jitter: Strength in [0, 1] of a random colour change of the whole training scene,
            composite and real alike (see :class:`~harmony.data.transforms.PairedTrainTransform`); 0 is off.
        eval_image_size: Side length of the validation, test and prediction images the model sees, when it
            differs from the training size (e.g. DiffHarmony trains at 512 and infers at 1024: resizing
            the originals straight to 1024 keeps the detail a 512 copy would lose); ``None``: ``image_size``.
    """

    def __init__(
        self,
        *,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        eval_size: int = 256,
        augment: bool = True,
        min_foreground: float = 0.01,
        scene_color_jitter: float = 0.0,
        eval_image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.eval_size = eval_size
        self.augment = augment
        self.min_foreground = min_foreground
        self.scene_color_jitter = scene_color_jitter
        self.eval_image_size = eval_image_size
        self.datasets: dict[str, Dataset] = {}

    def shared_options(self) -> dict[str, Any]:
        """The values of this DataModule's :class:`HarmonyDataModule` options, by name.

        The names are read from :class:`HarmonyDataModule`'s own signature, so a DataModule that wraps
        another one (:class:`~harmony.data.real_composites.DualStreamDataModule`) is built with the same
        options by ``super().__init__(**wrapped.shared_options())``.
        """
        names = list(inspect.signature(HarmonyDataModule.__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}

    @abstractmethod
    def list_records(self, split: Split) -> list[TripletRecord]:
        """The samples of ``split`` (``predict`` defaults to the test samples)."""

    def make_dataset(self, split: Split) -> Dataset:
        """Build the Dataset of ``split``."""
        records = self.list_records(split)
        if split == "train":
            # Drawn from torch's generator, so a seeded run without workers is reproducible too.
            seed = int(torch.randint(2**31, ()).item())
            transform = (
                PairedTrainTransform(
                    self.image_size,
                    min_foreground=self.min_foreground,
                    scene_color_jitter=self.scene_color_jitter,
                    seed=seed,
                )
                if self.augment
                else None
            )
            return TripletDataset(records, self.image_size, transform=transform)
        return TripletDataset(
            records,
            self.eval_image_size or self.image_size,
            eval_size=None if split == "predict" else self.eval_size,
        )

    def setup(self, stage: str) -> None:
        """Build the datasets a Trainer stage needs."""
        splits: dict[str, tuple[Split, ...]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }
        for split in splits[stage]:
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def make_dataloader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """Batches of ``dataset`` with this DataModule's batch size and workers.

        Shuffled loaders drop the last incomplete batch unless the dataset fits in one batch; workers
        are persistent and start through :func:`seed_worker`. Under several processes, loaders that are
        not shuffled (validation, test, prediction) give each process every ``world_size``-th sample,
        with no sample repeated and none left out (:meth:`unpadded_sampler`).
        """
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else self.unpadded_sampler(dataset),
            num_workers=self.num_workers,
            drop_last=shuffle and len(dataset) > self.batch_size,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=seed_worker if self.num_workers > 0 else None,
        )

    def unpadded_sampler(self, dataset: Dataset) -> UnrepeatedDistributedSampler | None:
        """This process's share of an evaluation ``dataset`` when the Trainer runs several processes.

        Lightning would give each process a ``DistributedSampler``, which pads the dataset to a multiple
        of the number of processes by repeating its first samples, so the evaluator would score those
        twice. Lightning's own sampler for ``predict`` deals the samples out without repeats instead
        (one process may get one batch fewer); evaluation needs no lock-step, so it suits test and
        validation too. Lightning leaves a loader that already has a distributed sampler as it is.

        Returns:
            ``None`` (the loader's default order) without a Trainer or with a single process.
        """
        options = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not options or options["num_replicas"] <= 1:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **options)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self.make_dataloader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self.make_dataloader(self.datasets["val"], shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self.make_dataloader(self.datasets["test"], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Prediction batches."""
        return self.make_dataloader(self.datasets["predict"], shuffle=False)


class IHarmony4DataModule(HarmonyDataModule):
    """iHarmony4 (HCOCO, HAdobe5k, HFlickr, Hday2night) in its official layout.

    ``<root>/<Subset>/{composite_images,masks,real_images}`` with ``IHD_train.txt``/``IHD_test.txt`` at
    the root. Training merges the chosen subsets; each test subset is reported separately. iHarmony4 has
    no validation split: unless the root has ``IHD_val.txt``, a deterministic ``val_fraction`` of the
    training photos (whole real images, never split across parts) is held out.

    Subclasses for data sets with the same layout only change :attr:`default_root` and
    :attr:`default_subsets`.

    DiffHarmony++'s data augmentation (Sec. 4.1) adds composites generated by an inverse harmonization
    model to the training split: with N1 (real image, mask) pairs and N2 composites in it, each pair gets
    ⌈γ·N2/N1⌉ of its generated candidates (:func:`~harmony.data.blending.blend_generated`). Validation
    and test never change, and photos held out for validation get no generated composites.

    Args:
        root: The data set root (see data/README.md); ``None``: the class's ``default_root``
            (``data/iHarmony4``, ``data/RPHarmony``, ``data/HumanHarmony``).
        subsets: The subsets to use (default: HCOCO, HAdobe5k, HFlickr, Hday2night).
        val_fraction: Share of training photos held out for validation when there is no ``IHD_val.txt``.
        generated_root: A tree of generated candidate composites written by ``harmony
            generate-composites`` (iHarmony4 layout, ``IHD_train.txt`` at its root) to blend into the
            training split; ``None``: train on the original data only.
        blending_ratio: The blending ratio γ (>= 0) of ``generated_root``; 0 adds nothing.
        blending_seed: Seed of the random choice of generated candidates.
        **kwargs: See :class:`HarmonyDataModule`.
    """

    default_root: str = "data/iHarmony4"
    default_subsets: tuple[str, ...] = IHARMONY4_SUBSETS

    def __init__(
        self,
        root: str | Path | None = None,
        subsets: list[str] | None = None,
        val_fraction: float = 0.01,
        generated_root: str | Path | None = None,
        blending_ratio: float = 1.0,
        blending_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Checked now rather than at setup, which may come after a large model has been loaded.
        check_blending_options(blending_ratio, blending_seed)
        self.root = Path(root if root is not None else self.default_root)
        self.subsets = list(subsets) if subsets is not None else list(self.default_subsets)
        self.val_fraction = val_fraction
        self.generated_root = Path(generated_root) if generated_root is not None else None
        self.blending_ratio = blending_ratio
        self.blending_seed = blending_seed

    def list_records(self, split: Split) -> list[TripletRecord]:
        """List the split from the official list files (training: plus any blended generated composites)."""
        if split == "predict":
            split = "test"
        if split in ("train", "val") and not (self.root / "IHD_val.txt").is_file():
            records = holdout(
                list_iharmony4(self.root, "train", self.subsets), self.val_fraction, split == "val"
            )
        else:
            records = list_iharmony4(self.root, split, self.subsets)
        if split == "train" and self.generated_root is not None:
            generated = list_iharmony4(self.generated_root, "train", self.subsets)
            records = blend_generated(
                records, generated, self.blending_ratio, self.blending_seed, source=self.generated_root
            )
        return records


class RPHarmonyDataModule(IHarmony4DataModule):
    """RPHarmony (R2R's Random-Poisson-Blending set): ``<root>/{R-ADE20K,R-DUTS}/...``.

    Same layout and naming as iHarmony4; list files ``IHD_<split>.txt``, ``<split>.txt`` or
    ``<split>.jsonl`` at the root, or per subset ``<Subset>/<Subset>_<split>.txt``. Default root
    ``data/RPHarmony``; default subsets R-ADE20K and R-DUTS. Arguments: see :class:`IHarmony4DataModule`.
    """

    default_root = "data/RPHarmony"
    default_subsets = ("R-ADE20K", "R-DUTS")


class TripletFoldersDataModule(HarmonyDataModule):
    """Data whose layout is a folder per role, matched by file stem (Human Harmony, RealHM, your own).

    ``<root>/<split>/<composite_dir>``, ``<mask_dir>``, ``<target_dir>``; a split folder that does not
    exist falls back to ``<root>`` itself (a single evaluation set such as RealHM).

    Args:
        root: The data set root.
        composite_dir: Name of the composites folder.
        mask_dir: Name of the masks folder.
        target_dir: Name of the ground-truth folder.
        mask_suffix: Extra text after the stem in mask names (e.g. ``_mask``).
        subset: Name results are reported under.
        val_fraction: Share of training photos held out for validation when there is no ``val`` folder.
        **kwargs: See :class:`HarmonyDataModule`.
    """

    def __init__(
        self,
        root: str | Path,
        composite_dir: str = "composite_images",
        mask_dir: str = "masks",
        target_dir: str = "real_images",
        mask_suffix: str = "",
        subset: str = "images",
        val_fraction: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.composite_dir = composite_dir
        self.mask_dir = mask_dir
        self.target_dir = target_dir
        self.mask_suffix = mask_suffix
        self.subset = subset
        self.val_fraction = val_fraction

    def _list(self, folder: Path) -> list[TripletRecord]:
        return list_matched_folders(
            folder / self.composite_dir,
            folder / self.mask_dir,
            folder / self.target_dir,
            self.subset,
            self.mask_suffix,
        )

    def list_records(self, split: Split) -> list[TripletRecord]:
        """List the split's folder (or the root when it has no split folders)."""
        split = "test" if split == "predict" else split
        if (self.root / split).is_dir():
            return self._list(self.root / split)
        if split == "val" and (self.root / "train").is_dir():
            return holdout(self._list(self.root / "train"), self.val_fraction, True)
        if split == "train" and (self.root / "train").is_dir():
            return holdout(self._list(self.root / "train"), self.val_fraction, False)
        return self._list(self.root)


class HumanHarmonyDataModule(IHarmony4DataModule):
    """Human Harmony (DiffHarmony++): iHarmony4-style naming and list files.

    ``<root>/HumanHarmony/{composite_images,masks,real_images}`` with ``IHD_train.txt``/``IHD_test.txt``
    (or ``train.jsonl``/``test.jsonl``) at the root; default root ``data/HumanHarmony``. Use
    :class:`TripletFoldersDataModule` if your copy is laid out as folders matched by stem. Arguments:
    see :class:`IHarmony4DataModule`.
    """

    default_root = "data/HumanHarmony"
    default_subsets = ("HumanHarmony",)


class RealHMDataModule(TripletFoldersDataModule):
    """RealHM (216 expert-harmonized real composites; evaluation only).

    Its public layout is undocumented; the folder names are configurable. Defaults:
    ``<root>/{composite,mask,target}`` matched by stem. Results are reported under subset ``RealHM``.
    Being evaluation-only, it fixes the training options (no augmentation, no validation hold-out) and
    sees its images at ``image_size``, so of the shared options it takes only ``image_size``,
    ``batch_size``, ``num_workers`` and ``eval_size``.

    Args:
        root: The data set root.
        composite_dir: Name of the composites folder.
        mask_dir: Name of the masks folder.
        target_dir: Name of the expert-harmonized ground-truth folder.
        mask_suffix: Extra text after the stem in mask names.
        **kwargs: See :class:`HarmonyDataModule`.
    """

    def __init__(
        self,
        root: str | Path = "data/RealHM",
        composite_dir: str = "composite",
        mask_dir: str = "mask",
        target_dir: str = "target",
        mask_suffix: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            root=root,
            composite_dir=composite_dir,
            mask_dir=mask_dir,
            target_dir=target_dir,
            mask_suffix=mask_suffix,
            subset="RealHM",
            val_fraction=0.0,
            augment=False,
            min_foreground=0.0,
            scene_color_jitter=0.0,
            eval_image_size=None,
            **kwargs,
        )

    def list_records(self, split: Split) -> list[TripletRecord]:
        """RealHM is an evaluation set: training on it is refused."""
        if split == "train":
            raise HarmonyInputError(
                self.root, "RealHM is an evaluation-only data set; it has no training split"
            )
        return self._list(self.root)


class FolderDataModule(HarmonyDataModule):
    """Your own composites and masks, without ground truth, for ``harmony predict``.

    Prediction neither trains nor scores, so of the shared options it takes only those prediction uses
    (``image_size``, ``batch_size``, ``num_workers``) and builds no training augmentation.

    Args:
        composites: Folder of composites.
        masks: Folder of masks named like the composites (plus ``mask_suffix``).
        mask_suffix: Extra text after the stem in mask names (e.g. ``_mask``).
        image_size: Side length the model sees; outputs are written at the original size.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        composites: str | Path,
        masks: str | Path,
        mask_suffix: str = "",
        image_size: int = 256,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__(image_size=image_size, batch_size=batch_size, num_workers=num_workers, augment=False)
        self.composites = Path(composites)
        self.masks = Path(masks)
        self.mask_suffix = mask_suffix

    def list_records(self, split: Split) -> list[TripletRecord]:
        """Only prediction is possible without ground truth."""
        if split != "predict":
            raise HarmonyInputError(
                self.composites, f"a folder without ground truth supports predict only, not {split}"
            )
        return list_matched_folders(self.composites, self.masks, None, "images", self.mask_suffix)
