"""``harmony check-data``: is a data set complete, decodable and laid out as harmony expects?

Every listed triplet must exist and decode, its sizes must agree and its mask must not be empty; the
number of samples per subset is compared with the official counts where they are known. Problems are
listed by file and make the command exit non-zero.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from harmony.data.io import binarize, read_mask, read_rgb
from harmony.data.records import TripletRecord, list_iharmony4, list_matched_folders
from harmony.errors import HarmonyInputError

OFFICIAL_COUNTS = {
    "iharmony4": {
        "train": {"HCOCO": 38545, "HAdobe5k": 19437, "HFlickr": 7449, "Hday2night": 311},
        "test": {"HCOCO": 4283, "HAdobe5k": 2160, "HFlickr": 828, "Hday2night": 133},
    },
}


def check_record(record: TripletRecord) -> list[str]:
    """The problems of one sample, each naming its file (empty when the sample is sound)."""
    problems = []
    images = {}
    for role, path in (("composite", record.composite), ("mask", record.mask), ("real", record.target)):
        if path is None:
            continue
        try:
            images[role] = read_mask(path) if role == "mask" else read_rgb(path)
        except HarmonyInputError as error:
            problems.append(f"{role}: {error}")
    mask = images.get("mask")
    if mask is not None:
        if not binarize(mask).any():
            problems.append(f"mask: {record.mask}: empty mask (no pixel >= 0.5)")
        for role in ("composite", "real"):
            image = images.get(role)
            if image is not None and image.shape[:2] != mask.shape[:2]:
                (ih, iw), (mh, mw) = image.shape[:2], mask.shape[:2]
                path = record.composite if role == "composite" else record.target
                problems.append(f"size: {path} is {iw}x{ih} but mask {record.mask} is {mw}x{mh}")
    return problems


def list_records(dataset: str, root: Path, split: str, args: argparse.Namespace) -> list[TripletRecord]:
    """List a split of a data set layout."""
    if dataset in ("iharmony4", "rpharmony", "humanharmony", "generated"):
        return list_iharmony4(root, split)
    folder = root / split if (root / split).is_dir() else root
    return list_matched_folders(
        folder / args.composite_dir, folder / args.mask_dir, folder / args.target_dir, "images"
    )


def main(argv: list[str] | None = None) -> int:
    """Check a data set; exit 1 when any problem is found."""
    parser = argparse.ArgumentParser(prog="harmony check-data", description=__doc__.splitlines()[0])
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

    total_problems = 0
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
        problems = [problem for result in results for problem in result]
        counts = Counter(record.subset for record in records)
        print(f"[{split}] {len(records)} samples")
        official = OFFICIAL_COUNTS.get(args.dataset, {}).get(split, {})
        for subset in sorted(set(counts) | set(official)):
            expected = official.get(subset)
            verdict = (
                ""
                if expected is None
                else ("  ok" if counts[subset] == expected else f"  expected {expected}")
            )
            if expected is not None and counts[subset] != expected:
                problems.append(f"count: {subset} {split} has {counts[subset]} samples, official {expected}")
            print(f"  {subset:<12} {counts[subset]:>7}{verdict}")
        for problem in problems[: args.max_problems]:
            print(f"  problem: {problem}")
        if len(problems) > args.max_problems:
            print(f"  ... and {len(problems) - args.max_problems} more problems")
        total_problems += len(problems)
    print("OK: no problems found" if total_problems == 0 else f"FAILED: {total_problems} problem(s)")
    return 0 if total_problems == 0 else 1
