"""``harmony classify``: score a folder of images with a harmony classifier (DiffHarmony++, Sec. 4.2).

Each image directly inside ``--images`` gets ``p_composite``, the probability that it is a composite
rather than a real photograph, from a :class:`~harmony.methods.diffharmony.HarmonyClassifier` checkpoint
written by ``harmony fit``. Images are resized to the classifier's input size with PIL bilinear (as the
data sets resize files). The scores are written as CSV (``path,p_composite``), all at once when every
image was scored, so a failed run leaves no half-written file.

A classifier trained with ``mask_input`` or ``mask_statistics`` also needs each image's foreground mask
(``--masks``); masks are resized with nearest neighbour and binarised, as the data sets resize them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm import tqdm

from harmony.commands.arguments import ToolArgumentParser
from harmony.commands.harmonize import resolve_device
from harmony.data.io import (
    IMAGE_SUFFIXES,
    atomic_path,
    check_same_size,
    list_images,
    open_image,
    read_mask,
    read_rgb,
    to_chw_tensor,
)
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    import torch

    from harmony.methods.diffharmony import HarmonyClassifier

# torch, Lightning and the classifier (diffusers, torchvision) are imported where they are used, so that
# --help and a bad argument answer at once.


def load_classifier(checkpoint: Path, device: torch.device) -> HarmonyClassifier:
    """Rebuild a :class:`HarmonyClassifier` from a ``harmony fit`` checkpoint.

    Raises:
        HarmonyInputError: The file is missing, unreadable, or holds another kind of model.
    """
    from harmony.commands.checkpoints import load_checkpoint_model
    from harmony.methods.diffharmony import HarmonyClassifier

    model = load_checkpoint_model(checkpoint, HarmonyClassifier, "a HarmonyClassifier", device)
    return model  # type: ignore[return-value]


def match_masks(images: list[Path], mask_dir: Path) -> list[Path]:
    """The mask of each image in ``mask_dir``: same stem, else iHarmony4's ``<id>_<m>_<k>`` → ``<id>_<m>``.

    Raises:
        HarmonyInputError: An image has no mask.
    """
    masks = {path.stem: path for path in list_images(mask_dir)}
    matched = []
    for image in images:
        mask = masks.get(image.stem) or masks.get(image.stem.rsplit("_", 1)[0])
        if mask is None:
            raise HarmonyInputError(
                image, f"no mask named {image.stem}.* or {image.stem.rsplit('_', 1)[0]}.* in {mask_dir}"
            )
        matched.append(mask)
    return matched


def read_batch(paths: list[Path], size: int) -> torch.Tensor:
    """Images as one ``B×3×size×size`` batch in ``[0, 1]`` (PIL bilinear resize)."""
    import torch

    images = [
        np.asarray(Image.fromarray(read_rgb(path)).resize((size, size), Image.BILINEAR)) for path in paths
    ]
    return torch.stack([to_chw_tensor(image) for image in images]).float().div(255)


def read_mask_batch(image_paths: list[Path], mask_paths: list[Path], size: int) -> torch.Tensor:
    """The images' masks as one ``B×1×size×size`` batch in ``{0, 1}`` (nearest resize, as the data sets).

    Raises:
        HarmonyInputError: A mask's size differs from its image's.
    """
    import torch

    from harmony.metrics.protocol import resize_mask

    masks = []
    for image_path, mask_path in zip(image_paths, mask_paths, strict=True):
        mask = read_mask(mask_path)
        # Upright, as read_batch reads it: a mask must match the image after its EXIF rotation.
        width, height = open_image(image_path).size
        check_same_size(image_path, np.empty((height, width)), mask_path, mask)
        masks.append(torch.from_numpy(resize_mask(mask, size))[None])
    return torch.stack(masks)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(
        prog="harmony classify",
        description="Score images with a harmony classifier (DiffHarmony++): the probability that each "
        "image directly inside --images is a composite rather than a real photograph, written as CSV "
        "(path,p_composite).",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a HarmonyClassifier checkpoint written by `harmony fit`",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of images to score")
    parser.add_argument(
        "--masks",
        type=Path,
        help="folder of the images' foreground masks, needed (and only used) when the classifier was "
        "trained with mask_input or mask_statistics; an image's mask has its file stem, or for "
        "iHarmony4 names <id>_<m>_<k> the stem <id>_<m>",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("scores.csv"), help="CSV to write (default: scores.csv)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the classifier runs"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony classify``; returns the exit status (user errors raise ``HarmonyInputError``)."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise HarmonyInputError(None, "--batch-size must be at least 1")
    paths = list_images(args.images)
    if not paths:
        raise HarmonyInputError(args.images, f"no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    model = load_classifier(args.checkpoint, resolve_device(args.device))
    mask_paths = None
    if model.takes_masks:
        if args.masks is None:
            raise HarmonyInputError(
                args.checkpoint, "this classifier takes the images' foreground masks: pass --masks DIR"
            )
        mask_paths = match_masks(paths, args.masks)
    scores: list[float] = []
    with tqdm(total=len(paths), desc="classifying", unit="image", file=sys.stderr) as progress:
        for start in range(0, len(paths), args.batch_size):
            chunk = slice(start, start + args.batch_size)
            images = read_batch(paths[chunk], model.image_size)
            masks = None
            if mask_paths is not None:
                masks = read_mask_batch(paths[chunk], mask_paths[chunk], model.image_size)
            scores += model.predict_proba(images, masks).cpu().tolist()
            progress.update(len(images))
    with atomic_path(args.output) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "p_composite"])
        writer.writerows((str(path), f"{score:.6f}") for path, score in zip(paths, scores, strict=True))
    print(f"wrote {len(paths)} scores to {args.output}")
    return 0
