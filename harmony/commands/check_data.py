"""``harmony check-data``: is a data set complete, decodable and laid out as harmony expects?

Every listed triplet must exist and decode, its sizes must agree and its mask must not be empty; the
number of samples per subset is compared with the official counts where they are known (an official
subset that is absent altogether is a note: partial and custom roots are fine). Problems are listed by
file and make the command exit non-zero; warnings (CMYK, 16-bit or transparent images, which are read
anyway, and masks covering the whole image) are listed too but do not. A folders layout without its
ground-truth folder is checked without ground truth.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import binarize, read_mask, read_rgb
from harmony.data.records import TripletRecord, list_iharmony4, list_matched_folders
from harmony.errors import HarmonyInputError

OFFICIAL_COUNTS = {
    "iharmony4": {
        "train": {"HCOCO": 38545, "HAdobe5k": 19437, "HFlickr": 7449, "Hday2night": 311},
        "test": {"HCOCO": 4283, "HAdobe5k": 2160, "HFlickr": 828, "Hday2night": 133},
    },
}


def unusual_format(path: Path) -> str | None:
    """What is unusual about an image file harmony reads anyway (a warning), or ``None``."""
    try:
        with Image.open(path) as image:
            mode, bits = image.mode, image.info.get("bit_depth")
            transparent = mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    except (OSError, ValueError):
        return None  # reading it reports the problem
    if mode == "CMYK":
        return "CMYK, converted to sRGB (through its ICC profile when it has one)"
    if mode.startswith("I;16") or mode == "I" or bits == 16:
        return "16-bit, scaled to 8 bits"
    if transparent:
        return "has an alpha channel, which is ignored (its colour channels are read as stored)"
    return None


def check_record(record: TripletRecord) -> tuple[list[str], list[str]]:
    """The problems and the warnings of one sample, each naming its file (empty when it is sound)."""
    problems, warnings = [], []
    images = {}
    for role, path in (("composite", record.composite), ("mask", record.mask), ("real", record.target)):
        if path is None:
            continue
        try:
            images[role] = read_mask(path) if role == "mask" else read_rgb(path)
        except HarmonyInputError as error:
            problems.append(f"{role}: {error}")
            continue
        if role != "mask" and (unusual := unusual_format(path)) is not None:
            warnings.append(f"{role}: {path}: {unusual}")
    mask = images.get("mask")
    if mask is not None:
        binary = binarize(mask)
        if not binary.any():
            problems.append(f"mask: {record.mask}: empty mask (no pixel >= 0.5)")
        elif binary.all():
            warnings.append(
                f"mask: {record.mask}: covers the whole image (nothing of the background is left)"
            )
        for role in ("composite", "real"):
            image = images.get(role)
            if image is not None and image.shape[:2] != mask.shape[:2]:
                (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
                path = record.composite if role == "composite" else record.target
                problems.append(f"size: {path} is {iw}x{ih} but mask {record.mask} is {mw}x{mh}")
    return problems, warnings


def list_records(dataset: str, root: Path, split: str, args: argparse.Namespace) -> list[TripletRecord]:
    """List a split of a data set layout (a folders layout without its ground-truth folder is fine)."""
    if dataset in ("iharmony4", "rpharmony", "humanharmony", "generated"):
        return list_iharmony4(root, split)
    folder = root / split if (root / split).is_dir() else root
    target = folder / args.target_dir
    return list_matched_folders(
        folder / args.composite_dir, folder / args.mask_dir, target if target.is_dir() else None, "images"
    )


def main(argv: list[str] | None = None) -> int:
    """Check a data set; exit 1 when any problem is found."""
    parser = ToolArgumentParser(prog="harmony check-data", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the data set root")
    parser.add_argument(
        "--dataset",
        choices=("iharmony4", "rpharmony", "humanharmony", "generated", "folders"),
        default="iharmony4",
        help="layout: iHarmony4-style list files (generated: a `harmony generate-composites` tree, no "
        "official counts), or folders matched by stem (RealHM, your own)",
    )
    parser.add_argument("--split", nargs="+", default=["train", "test"], help="splits to check")
    parser.add_argument("--composite-dir", default="composite", help="folders layout: composites folder")
    parser.add_argument("--mask-dir", default="mask", help="folders layout: masks folder")
    parser.add_argument("--target-dir", default="target", help="folders layout: ground-truth folder")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    parser.add_argument("--max-problems", type=int, default=50, help="problems printed (all are counted)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        raise HarmonyInputError(args.root, "data set root not found")

    total_problems = total_warnings = 0
    for split in args.split:
        try:
            records = list_records(args.dataset, args.root, split, args)
        except HarmonyInputError as error:
            print(f"[{split}] {error}")
            total_problems += 1
            continue
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(
                tqdm(
                    pool.map(check_record, records),
                    total=len(records),
                    desc=f"check {split}",
                    file=sys.stderr,
                )
            )
        problems = [problem for found, _ in results for problem in found]
        warnings = [warning for _, found in results for warning in found]
        counts = Counter(record.subset for record in records)
        ground_truth = sum(record.target is not None for record in records)
        print(
            f"[{split}] {len(records)} samples"
            + ("" if ground_truth else ", no ground truth (checked without)")
        )
        official = OFFICIAL_COUNTS.get(args.dataset, {}).get(split, {})
        # A root holding only some official subsets (or one's own data in the layout) is partial: its
        # counts are shown beside the official ones, as notes. A full root must have the official counts.
        partial = any(counts[subset] == 0 for subset in official)
        for subset in sorted(set(counts) | set(official)):
            expected = official.get(subset)
            if expected is None:
                verdict = ""
            elif counts[subset] == 0:
                verdict = "  absent (note: a partial root)"
            elif counts[subset] == expected:
                verdict = "  ok"
            elif partial:
                verdict = f"  official {expected} (note: a partial root)"
            else:
                verdict = f"  expected {expected}"
                problems.append(f"count: {subset} {split} has {counts[subset]} samples, official {expected}")
            print(f"  {subset:<12} {counts[subset]:>7}{verdict}")
        for problem in problems[: args.max_problems]:
            print(f"  problem: {problem}")
        if len(problems) > args.max_problems:
            print(f"  ... and {len(problems) - args.max_problems} more problems")
        for warning in warnings[: args.max_problems]:
            print(f"  warning: {warning}")
        if len(warnings) > args.max_problems:
            print(f"  ... and {len(warnings) - args.max_problems} more warnings")
        total_problems += len(problems)
        total_warnings += len(warnings)
    warned = f", {total_warnings} warning(s)" if total_warnings else ""
    print(
        f"OK: no problems found{warned}"
        if total_problems == 0
        else f"FAILED: {total_problems} problem(s){warned}"
    )
    return 0 if total_problems == 0 else 1
