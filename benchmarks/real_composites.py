"""Score harmonization methods side by side on an iHarmony4-layout root, harmonizing at full resolution.

    .venv/bin/python benchmarks/real_composites.py --data-root ROOT [--split test]
        [--checkpoint CK ...] [--methods Composite ReinhardLabTransfer HistogramMatching]
        [--work-dir DIR] [--output results.json] [--device auto]

    make benchmark-real ROOT=path

Each method harmonizes every composite of the split exactly as `harmony harmonize` does (the full-
resolution file in, the full-resolution image out, background bit-identical), writes it as
``<work-dir>/<method>/<composite stem>.png``, and the outputs are scored as `harmony score` scores them
(iharmony4 protocol: 256x256, bilinear, background pasted), per subset, overall and per foreground-ratio
bucket. The table gives each method's fMSE and MSE with their ratio to the Composite's (the unharmonized
input, always scored first as the reference; below 1.00x is better), then the seconds each method took to
read, harmonize and write every image. Each --checkpoint (a `harmony fit` checkpoint) is one more
method; without any, checkpoints/quickstart.ckpt is used when it exists.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from harmony.commands.harmonize import load_method, read_inputs, resolve_device
from harmony.commands.score import list_iharmony4_triplets, score_files
from harmony.data.io import save_json, save_rgb
from harmony.data.records import TripletRecord
from harmony.errors import HarmonyInputError
from harmony.metrics import HarmonizationEvaluator, format_results_header, results_to_json

REFERENCE = "Composite"
DEFAULT_METHODS = (REFERENCE, "ReinhardLabTransfer", "HistogramMatching")
DEFAULT_CHECKPOINT = Path("checkpoints/quickstart.ckpt")


def method_rows(methods: list[str], checkpoints: list[Path]) -> dict[str, tuple[str | None, Path | None]]:
    """Name each method to score: ``{label: (method name, checkpoint)}``, the Composite first.

    A checkpoint is labelled by its file's stem, with its position appended when two stems clash.
    """
    names = [REFERENCE] + [method for method in dict.fromkeys(methods) if method != REFERENCE]
    rows: dict[str, tuple[str | None, Path | None]] = {name: (name, None) for name in names}
    for index, checkpoint in enumerate(checkpoints):
        label = checkpoint.stem if checkpoint.stem not in rows else f"{checkpoint.stem}-{index + 1}"
        rows[label] = (None, checkpoint)
    return rows


def check_files(records: list[TripletRecord]) -> None:
    """Fail before any harmonizing when a listed composite, mask or real image is missing."""
    for record in records:
        for path in (record.composite, record.mask, record.target):
            if path is None or not path.is_file():
                raise HarmonyInputError(path or record.composite, "file not found (listed in the split)")


def harmonize_all(
    label: str,
    method: str | None,
    checkpoint: Path | None,
    records: list[TripletRecord],
    folder: Path,
    device: torch.device,
) -> tuple[list[Path], float]:
    """Harmonize every record as `harmony harmonize` does; returns the written files and the seconds."""
    model = load_method(checkpoint, method, device)
    outputs = []
    start = time.perf_counter()
    for record in tqdm(records, desc=label, unit="img", file=sys.stderr):
        composite, mask = read_inputs(record.composite, record.mask)
        output = folder / f"{record.name}.png"
        save_rgb(output, model.harmonize_image(composite, mask))
        outputs.append(output)
    return outputs, time.perf_counter() - start


def _ratio(value: float, reference: float) -> str:
    if math.isnan(value) or math.isnan(reference) or reference == 0:
        return "n/a"
    return f"{value / reference:.2f}x"


def _cell(
    results: dict[str, dict[str, float]], reference: dict[str, dict[str, float]], group: str, metric: str
) -> str:
    value = results.get(group, {}).get(metric, math.nan)
    if math.isnan(value):
        return "n/a"
    return f"{value:.1f} ({_ratio(value, reference[group][metric])})"


def format_comparison(scores: dict[str, dict[str, dict[str, float]]], seconds: dict[str, float]) -> str:
    """The side-by-side table: one row per group, fMSE and MSE (ratio to the Composite) per method."""
    reference = scores[REFERENCE]
    header = ["group", "n"] + [f"{label} {metric}" for label in scores for metric in ("fMSE", "MSE")]
    rows = [header]
    for group in reference:
        cells = [group, str(reference[group]["n"])]
        for results in scores.values():
            cells += [_cell(results, reference, group, "fmse"), _cell(results, reference, group, "mse")]
        rows.append(cells)
    rows.append(["seconds", ""] + [cell for label in scores for cell in (f"{seconds[label]:.1f}", "")])
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="iHarmony4-layout root")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="which list to score")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        help=f"a `harmony fit` checkpoint (repeatable; default: {DEFAULT_CHECKPOINT} when it exists)",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(DEFAULT_METHODS),
        help="training-free methods by class name (the Composite is always scored, as the reference)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where harmonized PNGs go (default: a temporary folder)"
    )
    parser.add_argument("--output", type=Path, help="write every method's results as JSON here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where models run")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes when scoring"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Harmonize and score every method, print the comparison; returns the exit status.

    Raises:
        HarmonyInputError: A missing root, checkpoint or listed file, or an unknown method.
    """
    args = build_parser().parse_args(argv)
    checkpoints = args.checkpoint or ([DEFAULT_CHECKPOINT] if DEFAULT_CHECKPOINT.is_file() else [])
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise HarmonyInputError(checkpoint, "checkpoint not found")
    if args.workers < 1:
        raise HarmonyInputError(None, f"--workers must be at least 1 (got {args.workers})")
    records = list_iharmony4_triplets(args.data_root, args.split)
    if not records:
        raise HarmonyInputError(args.data_root, f"the {args.split} split lists no composites")
    check_files(records)
    device = resolve_device(args.device)
    rows = method_rows(args.methods, checkpoints)

    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="harmony-real-composites-"))
    scores: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    protocol = HarmonizationEvaluator(protocol="iharmony4").protocol
    try:
        for label, (method, checkpoint) in rows.items():
            outputs, seconds[label] = harmonize_all(
                label, method, checkpoint, records, work_dir / label, device
            )
            evaluator = HarmonizationEvaluator(protocol="iharmony4")
            score_files(records, outputs, evaluator, args.workers, show_progress=False)
            scores[label] = evaluator.compute()
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    print(f"{args.data_root} ({args.split} split, full-resolution harmonization)")
    print(format_results_header(protocol, scores[REFERENCE]))
    print(format_comparison(scores, seconds))
    if args.work_dir is not None:
        print(f"harmonized images in {args.work_dir}")
    if args.output is not None:
        save_json(
            args.output,
            {
                "data_root": str(args.data_root),
                "split": args.split,
                "count": len(records),
                "methods": {
                    label: {
                        "method": method,
                        "checkpoint": None if checkpoint is None else str(checkpoint),
                        "seconds": seconds[label],
                        **results_to_json(protocol, scores[label]),
                    }
                    for label, (method, checkpoint) in rows.items()
                },
            },
        )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except HarmonyInputError as error:
        print(f"harmony: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
