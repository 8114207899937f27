"""Listing the samples of each data set layout as :class:`TripletRecord` s (no pixels are read here)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harmony.data.io import IMAGE_SUFFIXES, list_images
from harmony.errors import HarmonyInputError


@dataclass(frozen=True)
class TripletRecord:
    """Where one sample's files are.

    Args:
        composite: The composite image.
        mask: The foreground mask.
        target: The ground-truth image, or ``None`` for data without ground truth.
        name: The composite's stem (predictions are saved as ``<name>.png``).
        subset: The subset results are reported under.
    """

    composite: Path
    mask: Path
    target: Path | None
    name: str
    subset: str


def _existing(folder: Path, stem: str, preferred: Iterable[str]) -> Path:
    for suffix in preferred:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return folder / f"{stem}{next(iter(preferred))}"


def iharmony4_record(root: Path, relative_composite: str, subset: str | None = None) -> TripletRecord:
    """Derive the mask and real image of an iHarmony4-style composite path.

    The stem is split on ``_`` from the right (Hday2night ids contain ``-``, RPHarmony ids may contain
    ``_``): ``a0001_1_2`` → mask ``a0001_1`` → real ``a0001``. Missing files are reported by the
    reader, not here, so a listing is cheap.

    Args:
        root: The data set root.
        relative_composite: ``<Subset>/composite_images/<stem>.<ext>`` relative to ``root``.
        subset: Overrides the subset name (default: the first path component).
    """
    relative = Path(relative_composite.strip())
    if len(relative.parts) < 3:
        raise HarmonyInputError(root / relative, "expected <Subset>/composite_images/<name> in the list file")
    subset_dir = root / relative.parts[0]
    stem = relative.stem
    parts = stem.rsplit("_", 2)
    if len(parts) < 3:
        raise HarmonyInputError(root / relative, "composite name does not follow <id>_<mask>_<k>")
    mask_stem, real_stem = f"{parts[0]}_{parts[1]}", parts[0]
    return TripletRecord(
        composite=root / relative,
        mask=_existing(subset_dir / "masks", mask_stem, (".png", ".jpg", ".jpeg")),
        target=_existing(subset_dir / "real_images", real_stem, (".jpg", ".png", ".jpeg")),
        name=stem,
        subset=subset or relative.parts[0],
    )


def _read_list(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            line = json.loads(line)["file_name"]
        lines.append(line)
    return lines


def list_iharmony4(root: str | Path, split: str, subsets: Iterable[str] | None = None) -> list[TripletRecord]:
    """List an iHarmony4-layout split.

    Reads ``<root>/IHD_<split>.txt`` (paths relative to the root); without it, each subset's
    ``<Subset>/<Subset>_<split>.txt`` (bare file names). RPHarmony's ``<split>.jsonl`` lines
    (``{"file_name": ...}``) are accepted too.

    Args:
        root: The data set root.
        split: ``train``, ``val`` or ``test``.
        subsets: Keep only these subsets (default: all listed).
    """
    root = Path(root)
    if not root.is_dir():
        raise HarmonyInputError(root, "data set root not found (see data/README.md)")
    wanted = set(subsets) if subsets is not None else None
    candidates = [root / f"IHD_{split}.txt", root / f"{split}.txt", root / f"{split}.jsonl"]
    combined = next((path for path in candidates if path.is_file()), None)
    relatives: list[str] = []
    if combined is not None:
        relatives = _read_list(combined)
    else:
        for subset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            per_subset = subset_dir / f"{subset_dir.name}_{split}.txt"
            if per_subset.is_file():
                relatives += [
                    name if "/" in name else f"{subset_dir.name}/composite_images/{name}"
                    for name in _read_list(per_subset)
                ]
    if not relatives:
        raise HarmonyInputError(root, f"no list file for split '{split}' (expected IHD_{split}.txt)")
    records = [iharmony4_record(root, relative) for relative in relatives]
    return [r for r in records if wanted is None or r.subset in wanted]


def holdout(records: list[TripletRecord], fraction: float, take_holdout: bool) -> list[TripletRecord]:
    """Split off a deterministic validation part by real-image id, so no photo is in both parts."""

    def held(record: TripletRecord) -> bool:
        key = record.target.stem if record.target is not None else record.name
        return (zlib.crc32(key.encode()) % 10_000) < fraction * 10_000

    return [r for r in records if held(r) == take_holdout]


def list_matched_folders(
    composite_dir: str | Path,
    mask_dir: str | Path,
    target_dir: str | Path | None = None,
    subset: str = "images",
    mask_suffix: str = "",
) -> list[TripletRecord]:
    """List composites with masks (and optionally targets) matched by file stem.

    Args:
        composite_dir: Folder of composites.
        mask_dir: Folder of masks named ``<stem><mask_suffix>.<ext>``.
        target_dir: Folder of ground-truth images named ``<stem>.<ext>`` (``None``: no ground truth).
        subset: The subset name the samples are reported under.
        mask_suffix: Extra text between the stem and the extension of mask names (e.g. ``_mask``).
    """
    composites = list_images(composite_dir)
    masks = {p.stem: p for p in list_images(mask_dir)}
    targets = {p.stem: p for p in list_images(target_dir)} if target_dir is not None else {}
    records = []
    for composite in composites:
        mask = masks.get(composite.stem + mask_suffix)
        if mask is None:
            raise HarmonyInputError(composite, f"no mask named {composite.stem}{mask_suffix}.* in {mask_dir}")
        target = None
        if target_dir is not None:
            target = targets.get(composite.stem)
            if target is None:
                raise HarmonyInputError(
                    composite, f"no ground truth named {composite.stem}.* in {target_dir}"
                )
        records.append(TripletRecord(composite, mask, target, composite.stem, subset))
    if not records:
        raise HarmonyInputError(composite_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return records
