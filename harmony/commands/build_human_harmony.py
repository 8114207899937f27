"""``harmony build-human-harmony``: a Human Harmony-style data set from people photos (DiffHarmony++ 4.2).

From a person-segmentation set (the paper: iMaterialist Fashion 2020; any folder of photos with part
masks), each photo's foreground is the union of all its non-background parts. A trained
:class:`~harmony.methods.diffharmony.InverseHarmonization` model makes ``--candidates`` composites of each
(photo, mask) (the paper: K = 10, at 1024 px with 5 steps), and a trained
:class:`~harmony.methods.diffharmony.HarmonyClassifier` keeps the one it finds least harmonious (highest
probability of being a composite). Photos are split at iHarmony4's train/test ratio (7,404 of 73,146
composites are test: 10.12 %; the paper's 26,157 / 2,946 is the same ratio). Parts come as one of:

- ``--parts DIR`` with a label map ``<photo stem>.<ext>`` per photo (``--background`` marks the
  background, 0 by default; any other value, in any channel, is a part; a plain 0/255 mask is one part),
  or a folder ``<photo stem>/`` of binary part masks (pixels >= 0.5 are the part); ``--parts-suffix _1``
  reads ``<photo stem>_1.<ext>`` instead (an iHarmony4 ``masks/`` folder);
- ``--imaterialist-csv train.csv``: iMaterialist's run-length-encoded parts (``ImageId``,
  ``EncodedPixels``, ``Height``, ``Width``; pixels numbered down the columns, from 1).

Photos whose parts are empty are skipped and counted. (The paper also removed photos that show only
products, by hand: do that before building.) The output::

    <output>/HumanHarmony/real_images/<id>.<ext>        # the photos, copied
    <output>/HumanHarmony/masks/<id>_1.png              # the union of the parts, 0/255
    <output>/HumanHarmony/composite_images/<id>_1_1.png # the selected candidate
    <output>/IHD_train.txt, IHD_test.txt                # split by photo, seeded
    <output>/candidates/                                # every candidate (a generate-composites tree)
    <output>/selection.csv                              # id, kept candidate, its P(composite), all of them
    <output>/build.json                                 # settings and counts

``HumanHarmonyDataModule(root=<output>)`` and ``harmony check-data --dataset humanharmony`` read it. Every
file is written under a temporary name and renamed, and each step skips what is done, so an interrupted
build resumes when the same command is run again; other settings are refused.
"""

from __future__ import annotations

import argparse
import csv
import glob
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from harmony import __version__
from harmony.commands.arguments import ToolArgumentParser
from harmony.commands.build_rpharmony import split_photos
from harmony.commands.classify import load_classifier, read_batch, read_mask_batch
from harmony.commands.generate_composites import (
    Pair,
    check_resumable,
    copy_input,
    generate_candidates,
    kept_name,
    load_inverse_model,
)
from harmony.commands.harmonize import resolve_device
from harmony.data.io import atomic_path, list_images, open_image, read_mask, read_rgb, save_json
from harmony.errors import HarmonyInputError

SUBSET = "HumanHarmony"
MANIFEST = "build.json"
CANDIDATES = "candidates"
IHARMONY4_TEST_FRACTION = 7404 / (65742 + 7404)
"""iHarmony4's share of test composites (7,404 of 73,146), the paper's split ratio."""


@dataclass(frozen=True)
class Photo:
    """A photo and where its parts are.

    Args:
        id: Its id in the output names (the file stem).
        image: The photo.
        parts: A label map, a folder of part masks, or ``None`` (parts from the iMaterialist CSV).
    """

    id: str
    image: Path
    parts: Path | None = None


def list_photos(images: Path, parts: Path | None, suffix: str = "") -> list[Photo]:
    """The photos of ``images`` with their label map or part folder in ``parts``, sorted by id.

    Args:
        images: Folder of photos.
        parts: Folder of label maps ``<stem><suffix>.<ext>`` or part folders ``<stem><suffix>/``;
            ``None`` when the parts come from elsewhere (the iMaterialist CSV).
        suffix: Text between a photo's stem and its parts' name.
    """
    photos = []
    for image in list_images(images):
        if parts is None:
            photos.append(Photo(image.stem, image))
            continue
        name = f"{image.stem}{suffix}"
        folder = parts / name
        maps = [path for path in parts.glob(f"{glob.escape(name)}.*") if path.is_file()]
        if folder.is_dir():
            photos.append(Photo(image.stem, image, folder))
        elif len(maps) == 1:
            photos.append(Photo(image.stem, image, maps[0]))
        else:
            found = "several" if maps else "no"
            raise HarmonyInputError(
                image, f"{found} label map {image.stem}.* or folder {image.stem}/ in {parts}"
            )
    if len({photo.id for photo in photos}) != len(photos):
        raise HarmonyInputError(images, "two photos share a file stem")
    if len(photos) < 2:
        raise HarmonyInputError(images, "at least two photos are needed (one for each split)")
    return sorted(photos, key=lambda photo: photo.id)


def decode_rle(encoded: str, height: int, width: int) -> np.ndarray:
    """A Kaggle run-length mask (``start length …``, pixels numbered down the columns from 1) as bools."""
    flat = np.zeros(height * width, dtype=bool)
    numbers = [int(value) for value in encoded.split()]
    for start, length in zip(numbers[0::2], numbers[1::2], strict=True):
        flat[start - 1 : start - 1 + length] = True
    return flat.reshape(width, height).T


def read_imaterialist(path: Path) -> dict[str, list[tuple[str, int, int]]]:
    """The run-length parts of each image id in an iMaterialist ``train.csv``."""
    parts: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    try:
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                parts[row["ImageId"]].append((row["EncodedPixels"], int(row["Height"]), int(row["Width"])))
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise HarmonyInputError(
            path, f"not an iMaterialist train.csv ({type(error).__name__}: {error})"
        ) from None
    return parts


def union_mask(
    photo: Photo, shape: tuple[int, int], background: int, rle: dict[str, list] | None
) -> np.ndarray:
    """The union of a photo's non-background parts, as a ``bool`` mask of ``shape``.

    Raises:
        HarmonyInputError: A part's size differs from the photo's.
    """
    if rle is not None:
        masks = [(decode_rle(code, h, w), photo.image) for code, h, w in rle.get(photo.id, [])]
    elif photo.parts is not None and photo.parts.is_dir():
        masks = [(read_mask(path) >= 0.5, path) for path in list_images(photo.parts)]
    else:
        assert photo.parts is not None
        labels = np.asarray(open_image(photo.parts))
        foreground = labels != background
        masks = [(foreground.any(axis=-1) if foreground.ndim == 3 else foreground, photo.parts)]
    union = np.zeros(shape, dtype=bool)
    for mask, source in masks:
        if mask.shape != shape:
            (mh, mw), (h, w) = mask.shape, shape
            raise HarmonyInputError(source, f"parts are {mw}x{mh} but the photo {photo.image} is {w}x{h}")
        union |= mask
    return union


def _prepare(photo: Photo, subset_dir: Path, background: int, rle: dict[str, list] | None) -> Pair | None:
    """Write the photo's copy and union mask (once); ``None`` for a photo without parts."""
    mask_path = subset_dir / "masks" / f"{photo.id}_1.png"
    real_path = subset_dir / "real_images" / kept_name(photo.id, photo.image, "real_images")
    if not mask_path.is_file():
        real = read_rgb(photo.image)
        union = union_mask(photo, real.shape[:2], background, rle)
        if not union.any():
            return None
        with atomic_path(mask_path) as temporary:
            Image.fromarray(union.astype(np.uint8) * 255, mode="L").save(temporary, format="PNG")
    copy_input(photo.image, real_path, "real_images")
    return Pair(SUBSET, real_path, mask_path, f"{photo.id}_1")


def select_candidates(
    classifier: Any,
    pairs: list[Pair],
    candidates_root: Path,
    subset_dir: Path,
    count: int,
    batch_size: int,
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Keep, per pair, the candidate the classifier finds most composite-like; returns the scores by id."""
    selection = {}
    for pair in tqdm(pairs, desc="selecting", unit="photo", file=sys.stderr, disable=not show_progress):
        paths = [pair.candidate(candidates_root, k) for k in range(count)]
        scores: list[float] = []
        for start in range(0, count, batch_size):
            chunk = paths[start : start + batch_size]
            images = read_batch(chunk, classifier.image_size)
            # A mask-aware classifier sees each candidate's mask: the pair's own, for every candidate.
            masks = (
                read_mask_batch(chunk, [pair.mask] * len(chunk), classifier.image_size)
                if classifier.takes_masks
                else None
            )
            scores += classifier.predict_proba(images, masks).cpu().tolist()
        best = int(np.argmax(scores))
        target = subset_dir / "composite_images" / f"{pair.mask_stem}_1.png"
        if not target.is_file():
            with atomic_path(target) as temporary:
                shutil.copyfile(paths[best], temporary)
        selection[pair.real_id] = {"kept": best, "scores": scores}
    return selection


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(prog="harmony build-human-harmony", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of people photos")
    parts = parser.add_mutually_exclusive_group(required=True)
    parts.add_argument("--parts", type=Path, help="label maps <stem>.<ext> or folders <stem>/ of part masks")
    parts.add_argument("--imaterialist-csv", type=Path, help="iMaterialist's train.csv (run-length parts)")
    parser.add_argument("--parts-suffix", default="", help="parts are named <photo stem><suffix>(.<ext>|/)")
    parser.add_argument("--background", type=int, default=0, help="label-map value of the background")
    parser.add_argument(
        "--inverse-checkpoint", type=Path, required=True, help="InverseHarmonization checkpoint"
    )
    parser.add_argument("--classifier", type=Path, required=True, help="HarmonyClassifier checkpoint")
    parser.add_argument("--output", type=Path, required=True, help="the data set root to write (or resume)")
    parser.add_argument("--candidates", type=int, default=10, help="candidates per photo (paper: 10)")
    parser.add_argument("--size", type=int, help="working size of generation (default: the model's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=round(IHARMONY4_TEST_FRACTION, 6),
        help="share of photos in the test split (default: iHarmony4's, 0.101223)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the candidates and the split")
    parser.add_argument("--batch-size", type=int, default=4, help="photos (candidates) per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument("--precision", choices=("bf16-mixed", "32"), default="bf16-mixed", help="on CUDA")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build (or resume) a Human Harmony-style data set; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.candidates < 1 or args.batch_size < 1:
        raise HarmonyInputError(None, "--candidates and --batch-size must be at least 1")
    if not 0 < args.test_fraction < 1:
        raise HarmonyInputError(None, f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    rle = read_imaterialist(args.imaterialist_csv) if args.imaterialist_csv is not None else None
    photos = list_photos(args.images, args.parts, args.parts_suffix)
    device = resolve_device(args.device)
    inverse = load_inverse_model(args.inverse_checkpoint, device, args.size, args.steps)
    classifier = load_classifier(args.classifier, device)
    output: Path = args.output
    settings = {
        "inverse_checkpoint": str(args.inverse_checkpoint.resolve()),
        "classifier": str(args.classifier.resolve()),
        "candidates": args.candidates,
        "inference_size": inverse.inference_size,
        "num_inference_steps": inverse.num_inference_steps,
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "background": args.background,
        "precision": args.precision,
    }
    check_resumable(output, settings, MANIFEST, "build-human-harmony")
    manifest: dict[str, Any] = {
        "tool": "harmony build-human-harmony",
        "harmony_version": __version__,
        "status": "building",
        "settings": settings,
        "images": str(args.images),
        "parts": str(args.parts or args.imaterialist_csv),
    }
    save_json(output / MANIFEST, manifest)
    subset_dir = output / SUBSET
    show = not args.no_progress
    prepared = [
        _prepare(photo, subset_dir, args.background, rle)
        for photo in tqdm(photos, desc="masks", unit="photo", file=sys.stderr, disable=not show)
    ]
    pairs = [pair for pair in prepared if pair is not None]
    if len(pairs) < 2:
        raise HarmonyInputError(
            args.images, f"only {len(pairs)} photo(s) have parts; at least two are needed"
        )
    candidates_root = output / CANDIDATES
    generate_candidates(
        inverse, pairs, candidates_root, args.candidates, args.seed, args.batch_size, args.precision, show
    )
    selection = select_candidates(
        classifier, pairs, candidates_root, subset_dir, args.candidates, args.batch_size, show
    )
    with atomic_path(output / "selection.csv") as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "kept", "p_composite", *(f"p_{k}" for k in range(args.candidates))])
        for real_id, chosen in sorted(selection.items()):
            scores = chosen["scores"]
            writer.writerow(
                [real_id, chosen["kept"], f"{scores[chosen['kept']]:.6f}", *(f"{s:.6f}" for s in scores)]
            )
    ids = [pair.real_id for pair in pairs]
    test_ids = split_photos(ids, args.test_fraction, args.seed)
    for split in ("train", "test"):
        lines = [
            f"{SUBSET}/composite_images/{real_id}_1_1.png"
            for real_id in ids
            if (real_id in test_ids) == (split == "test")
        ]
        with atomic_path(output / f"IHD_{split}.txt") as temporary:
            temporary.write_text("\n".join(lines) + "\n")
    manifest["status"] = "complete"
    manifest["counts"] = {
        "photos": len(photos),
        "skipped_without_parts": len(photos) - len(pairs),
        "train": len(ids) - len(test_ids),
        "test": len(test_ids),
    }
    save_json(output / MANIFEST, manifest)
    print(
        f"{SUBSET}: {len(ids)} photos ({len(ids) - len(test_ids)} train, {len(test_ids)} test; "
        f"{len(photos) - len(pairs)} without parts skipped) -> {output}"
    )
    return 0
