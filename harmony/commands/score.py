"""``harmony score``: score a folder of predictions against an iHarmony4-layout root.

Every prediction ``<composite stem>.png`` (or ``.jpg``) is scored against its real image and mask with
the shared :class:`~harmony.metrics.HarmonizationEvaluator`, so numbers from any method (ours or a
foreign repository's outputs) are computed the same way. Files are decoded in parallel processes; the
results table goes to stdout and, with ``--output``, a JSON file is written once everything succeeded.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from tqdm import tqdm

from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import check_same_size, list_images, read_mask, read_rgb, save_json
from harmony.data.records import TripletRecord, iharmony4_record, list_iharmony4
from harmony.data.types import IHARMONY4_SUBSETS
from harmony.errors import HarmonyInputError

# The protocols (--protocol's choices) are NumPy and Pillow only; the evaluator, which needs torch, is
# imported where it is used. (Importing harmony.metrics.protocol still runs harmony.metrics' __init__,
# which imports the evaluator: until that package loads its names lazily, --help imports torch.)
from harmony.metrics.protocol import PROTOCOLS, resize_image, resize_mask

if TYPE_CHECKING:
    import torch

    from harmony.metrics import EvaluationProtocol, HarmonizationEvaluator

PREDICTION_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Accepted prediction files, in order of preference when several exist for one composite."""

_BATCH_SIZE = 16


class ScoringInputs(NamedTuple):
    """One sample brought to the protocol size, ready for the evaluator (``H×W×3`` ``uint8`` arrays)."""

    prediction: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    composite: np.ndarray | None
    subset: str


def _has_split_list(root: Path, split: str) -> bool:
    # The same list files harmony.data.records.list_iharmony4 reads.
    if any((root / name).is_file() for name in (f"IHD_{split}.txt", f"{split}.txt", f"{split}.jsonl")):
        return True
    return any(
        (folder / f"{folder.name}_{split}.txt").is_file() for folder in root.iterdir() if folder.is_dir()
    )


def list_iharmony4_triplets(root: str | Path, split: str = "test") -> list[TripletRecord]:
    """List the composites of an iHarmony4-layout split with their masks and real images.

    Reads ``<root>/IHD_<split>.txt``, else each ``<Subset>/<Subset>_<split>.txt`` (see
    :func:`harmony.data.records.list_iharmony4`). When no list exists at all, every file in each
    ``<Subset>/composite_images`` is taken, and a note says so on stderr. File names follow
    ``<id>_<mask>_<k>`` → mask ``<id>_<mask>.png|.jpg``, real ``<id>.jpg|.png``.

    Args:
        root: The data set root.
        split: ``test`` or ``train``.

    Returns:
        One record per composite (``target`` is the real image).

    Raises:
        HarmonyInputError: The root is missing, or holds neither list files nor composite folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise HarmonyInputError(root, "data root not found")
    if _has_split_list(root, split):
        return list_iharmony4(root, split)
    subsets = sorted(
        (folder.name for folder in root.iterdir() if (folder / "composite_images").is_dir()),
        key=lambda name: (
            IHARMONY4_SUBSETS.index(name) if name in IHARMONY4_SUBSETS else len(IHARMONY4_SUBSETS),
            name,
        ),
    )
    if not subsets:
        raise HarmonyInputError(root, f"no IHD_{split}.txt list and no <Subset>/composite_images folders")
    records = [
        iharmony4_record(root, f"{subset}/composite_images/{composite.name}")
        for subset in subsets
        for composite in list_images(root / subset / "composite_images")
    ]
    print(
        f"harmony score: no IHD_{split}.txt or <Subset>_{split}.txt list in {root}; scoring every composite "
        f"in {', '.join(subsets)} ({len(records)} images)",
        file=sys.stderr,
    )
    return records


def _check_listed_files(records: Sequence[TripletRecord], need_composite: bool) -> None:
    # Fail before decoding thousands of images rather than at the first missing file.
    missing = [
        path
        for record in records
        for path in ((record.composite,) if need_composite else ()) + (record.mask, record.target)
        if path is None or not path.is_file()
    ]
    if missing:
        more = f" ({len(missing)} listed files are missing)" if len(missing) > 1 else ""
        raise HarmonyInputError(missing[0], f"file not found{more}")


def find_predictions(folder: str | Path, records: Sequence[TripletRecord]) -> list[Path]:
    """The prediction file of each record: ``<folder>/<name>.png``, else ``.jpg``/``.jpeg``.

    Args:
        folder: The predictions folder.
        records: The composites to score.

    Returns:
        One path per record, in order.

    Raises:
        HarmonyInputError: The folder is missing, or a composite has no prediction (the message names the
            first expected file and how many are missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise HarmonyInputError(folder, "predictions folder not found")
    available: dict[str, dict[str, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in PREDICTION_SUFFIXES:
                available.setdefault(stem, {})[suffix.lower()] = Path(entry.path)
    predictions: list[Path] = []
    missing: list[str] = []
    for record in records:
        candidates = available.get(record.name, {})
        found = next((candidates[suffix] for suffix in PREDICTION_SUFFIXES if suffix in candidates), None)
        if found is None:
            missing.append(record.name)
        else:
            predictions.append(found)
    if missing:
        raise HarmonyInputError(
            folder / f"{missing[0]}.png",
            f"prediction not found (nor .jpg); {len(missing)} of {len(records)} listed composites have none",
        )
    return predictions


def load_for_scoring(
    record: TripletRecord, prediction_path: Path, protocol: EvaluationProtocol
) -> ScoringInputs:
    """Read one sample's files and bring them to the protocol size.

    The mask must have the real image's size (EXIF orientation applied to both first); the prediction
    may have any size, since it is resized like the ground truth.

    Args:
        record: The composite, mask and real image.
        prediction_path: The prediction file.
        protocol: The evaluation protocol (size, resampling filter, whether the composite is needed).

    Returns:
        The resized prediction, real image, binary mask and (if pasted) composite.
    """
    if record.target is None:
        raise HarmonyInputError(record.composite, "no real (ground-truth) image to score against")
    target = read_rgb(record.target)
    mask = read_mask(record.mask)
    check_same_size(record.target, target, record.mask, mask)
    composite = None
    if protocol.paste_background:
        composite = read_rgb(record.composite)
        if composite.shape != target.shape:
            (ch, cw), (th, tw) = composite.shape[:2], target.shape[:2]
            raise HarmonyInputError(
                record.composite, f"composite is {cw}x{ch} but real image {record.target} is {tw}x{th}"
            )
        composite = resize_image(composite, protocol.size, protocol.resample)
    prediction = read_rgb(prediction_path)
    return ScoringInputs(
        prediction=resize_image(prediction, protocol.size, protocol.resample),
        target=resize_image(target, protocol.size, protocol.resample),
        mask=resize_mask(mask, protocol.size),
        composite=composite,
        subset=record.subset,
    )


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def add_to_evaluator(evaluator: HarmonizationEvaluator, batch: list[ScoringInputs]) -> None:
    """Stack decoded samples into tensors and update the evaluator with them."""
    import torch

    composites = [item.composite for item in batch]
    evaluator.update(
        _to_batch([item.prediction for item in batch]),
        _to_batch([item.target for item in batch]),
        torch.from_numpy(np.stack([item.mask for item in batch]))[:, None],
        None if composites[0] is None else _to_batch(composites),
        [item.subset for item in batch],
    )


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def decode_for_scoring(
    records: Sequence[TripletRecord], predictions: Sequence[Path], protocol: EvaluationProtocol, workers: int
) -> Iterator[ScoringInputs]:
    """Yield :func:`load_for_scoring` of every record, in order, decoded by ``workers`` processes.

    Args:
        records: The samples.
        predictions: Their prediction files, in the same order.
        protocol: The evaluation protocol.
        workers: Decoding processes (1: decode in this process).

    Raises:
        HarmonyInputError: A file is missing, undecodable, or a mask does not match its image.
    """
    jobs = iter(zip(records, predictions, strict=True))
    if workers == 1:
        for record, prediction in jobs:
            yield load_for_scoring(record, prediction, protocol)
        return
    # Processes, not threads: decoding through Pillow and numpy holds the GIL often enough that threads
    # do not scale. Forked workers inherit the imported modules; spawned ones would re-import torch.
    context = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else None
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    pending: deque[Future[ScoringInputs]] = deque()

    def submit_next() -> None:
        job = next(jobs, None)
        if job is not None:
            pending.append(pool.submit(load_for_scoring, job[0], job[1], protocol))

    try:
        for _ in range(4 * workers):
            submit_next()
        while pending:
            sample = pending.popleft().result()
            submit_next()
            yield sample
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def score_files(
    records: Sequence[TripletRecord],
    predictions: Sequence[Path],
    evaluator: HarmonizationEvaluator,
    workers: int,
    show_progress: bool = True,
) -> None:
    """Decode and score every sample, feeding the evaluator in batches.

    With ``workers > 1`` decoding runs in that many processes, at most ``4 × workers`` decoded samples
    ahead of the metrics; the metrics run in this process with one torch thread, leaving the other
    cores to the decoders.

    Args:
        records: The samples.
        predictions: Their prediction files, in the same order.
        evaluator: Receives the samples.
        workers: Decoding processes (1: decode in this process).
        show_progress: Show a progress bar on stderr (when it is a terminal).
    """
    samples = decode_for_scoring(records, predictions, evaluator.protocol, workers)
    batch: list[ScoringInputs] = []
    with (
        _torch_threads(1),
        tqdm(
            total=len(records),
            unit="img",
            desc="scoring",
            file=sys.stderr,
            disable=None if show_progress else True,
        ) as progress,
    ):
        for sample in samples:
            batch.append(sample)
            progress.update(1)
            if len(batch) == _BATCH_SIZE:
                add_to_evaluator(evaluator, batch)
                batch = []
        if batch:
            add_to_evaluator(evaluator, batch)


def build_parser() -> argparse.ArgumentParser:
    """The ``harmony score`` argument parser."""
    parser = ToolArgumentParser(
        prog="harmony score",
        description="Score a folder of predictions (<composite stem>.png or .jpg) against an "
        "iHarmony4-layout root, per subset, overall and per foreground-ratio bucket.",
    )
    parser.add_argument(
        "--data-root",
        type=Path,
        required=True,
        help="root with <Subset>/{composite_images,masks,real_images} and IHD_<split>.txt",
    )
    parser.add_argument("--predictions", type=Path, required=True, help="folder of <composite stem>.png|.jpg")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="which list to score")
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="iharmony4",
        help="iharmony4: bilinear, background paste, PSNR range 255 (default); "
        "bcmi: bicubic, no paste, PSNR range of the prediction",
    )
    parser.add_argument(
        "--no-paste-background",
        action="store_true",
        help="score the prediction's own background instead of the composite's",
    )
    parser.add_argument(
        "--lpips",
        action="store_true",
        help="also compute LPIPS (AlexNet weights must already be in the torch hub cache)",
    )
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes (1: no pool)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony score``.

    Args:
        argv: Arguments without the command name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0 on success).

    Raises:
        HarmonyInputError: A missing file or folder, a missing prediction, a mask whose size differs
            from its image, or an undecodable file.
    """
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        raise HarmonyInputError(None, f"--workers must be at least 1 (got {args.workers})")
    from harmony.metrics import (
        HarmonizationEvaluator,
        format_results_header,
        format_results_table,
        results_to_json,
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = HarmonizationEvaluator(
            args.protocol,
            paste_background=False if args.no_paste_background else None,
            compute_lpips=args.lpips,
        )
    if evaluator.lpips_unavailable_reason is not None:
        print(f"harmony score: LPIPS unavailable: {evaluator.lpips_unavailable_reason}", file=sys.stderr)
    protocol = evaluator.protocol
    records = list_iharmony4_triplets(args.data_root, args.split)
    if not records:
        raise HarmonyInputError(args.data_root, f"the {args.split} split lists no composites")
    _check_listed_files(records, need_composite=protocol.paste_background)
    predictions = find_predictions(args.predictions, records)
    score_files(records, predictions, evaluator, args.workers)
    results = evaluator.compute()
    print(format_results_table(results, title=format_results_header(protocol, results)))
    if args.output is not None:
        save_json(args.output, results_to_json(protocol, results))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except HarmonyInputError as error:
        print(f"harmony: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
