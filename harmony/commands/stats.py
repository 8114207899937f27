"""``harmony stats``: the foreground ratio of every sample of one or more data sets, per subset and bucket.

The ratio is the evaluator's: the mask brought to the scoring size (``--size``, default the
``iharmony4`` protocol's 256×256) by :func:`~harmony.metrics.protocol.resize_mask`, then the share of
pixels ≥ 0.5; the buckets are the evaluator's :data:`~harmony.metrics.FOREGROUND_BUCKETS`
(``[low, high)``, a full-image mask in the last one). For each root it prints counts and shares per
bucket and the mean and median ratio, per subset and overall; ``--plot`` draws the cumulative
distribution of the ratio of every root (DiffHarmony++ Fig. 2), ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from harmony.commands.arguments import ToolArgumentParser
from harmony.commands.check_data import list_records
from harmony.data.io import atomic_path, read_mask, save_json
from harmony.data.records import TripletRecord
from harmony.data.types import IHARMONY4_SUBSETS
from harmony.errors import HarmonyInputError

# harmony.metrics (its evaluator, torch) is imported in the functions that use it, so that --help and a
# bad argument answer at once.

SPLITS = ("train", "val", "test")
"""``--split all`` pools every one of these that the root lists (at least one must be there)."""


def foreground_ratio(mask: np.ndarray, size: int) -> float:
    """The evaluator's foreground ratio of a soft mask: share of pixels ≥ 0.5 at ``size×size``.

    Args:
        mask: A soft ``H×W`` mask in ``[0, 1]`` (as :func:`~harmony.data.io.read_mask` returns it).
        size: The scoring size (the evaluator resizes every mask to it, nearest neighbour).

    Returns:
        ``N_fg / size²``, computed as :func:`~harmony.metrics.per_image_metrics` computes ``fg_ratio``.
    """
    from harmony.metrics.protocol import resize_mask

    resized = resize_mask(mask, size)
    return int(np.count_nonzero(resized >= 0.5)) / float(resized.shape[0] * resized.shape[1])


def foreground_bucket(ratio: float) -> str:
    """The evaluator's bucket of a foreground ratio (``fg_0_5``, ``fg_5_15`` or ``fg_15_100``)."""
    from harmony.metrics import FOREGROUND_BUCKETS

    for bucket, low, high in FOREGROUND_BUCKETS:
        if low <= ratio < high:
            return bucket
    if ratio == 1.0:
        return FOREGROUND_BUCKETS[-1][0]
    raise ValueError(f"foreground ratio {ratio} is outside [0, 1]")


def summarise(ratios: Sequence[float]) -> dict[str, Any]:
    """Count, mean, median, empty masks and per-bucket counts and shares of some ratios."""
    from harmony.metrics import FOREGROUND_BUCKETS

    counts = {bucket: 0 for bucket, _, _ in FOREGROUND_BUCKETS}
    for ratio in ratios:
        counts[foreground_bucket(ratio)] += 1
    n = len(ratios)
    return {
        "n": n,
        "mean": statistics.fmean(ratios) if n else None,
        "median": statistics.median(ratios) if n else None,
        "n_empty_mask": sum(ratio == 0.0 for ratio in ratios),
        "buckets": {
            bucket: {"n": count, "share": count / n if n else None} for bucket, count in counts.items()
        },
    }


def _subset_order(subset: str) -> tuple[int, int, str]:
    if subset in IHARMONY4_SUBSETS:
        return (0, IHARMONY4_SUBSETS.index(subset), subset)
    return (1, 0, subset)


def list_split(dataset: str, root: Path, split: str, args: argparse.Namespace) -> list[TripletRecord]:
    """The records of one split, or of every split the root has (``all``), as ``check-data`` lists them."""
    if not root.is_dir():
        raise HarmonyInputError(root, "data set root not found")
    if split != "all":
        return list_records(dataset, root, split, args)
    if dataset == "folders" and not any((root / name).is_dir() for name in SPLITS):
        return list_records(dataset, root, "all", args)  # no split folders: the root is one split
    records: list[TripletRecord] = []
    first_error: HarmonyInputError | None = None
    for name in SPLITS:
        if dataset == "folders" and not (root / name).is_dir():
            continue
        try:
            records += list_records(dataset, root, name, args)
        except HarmonyInputError as error:
            if "no list file" not in error.problem:
                raise
            first_error = first_error or error
    if not records:
        raise first_error or HarmonyInputError(root, "no samples listed in any split")
    return records


def root_stats(
    records: Sequence[TripletRecord], size: int, workers: int, desc: str
) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Read every mask: the ratios per group (each subset, then ``all``) and their summaries."""
    from harmony.metrics import ALL_GROUP

    def ratio_of(record: TripletRecord) -> float:
        return foreground_ratio(read_mask(record.mask), size)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        ratios = list(
            tqdm(pool.map(ratio_of, records), total=len(records), desc=desc, unit="mask", file=sys.stderr)
        )
    groups: dict[str, list[float]] = {}
    for record, ratio in zip(records, ratios, strict=True):
        groups.setdefault(record.subset, []).append(ratio)
    groups = {subset: groups[subset] for subset in sorted(groups, key=_subset_order)}
    groups[ALL_GROUP] = ratios
    return groups, {group: summarise(values) for group, values in groups.items()}


def format_stats(label: str, summaries: dict[str, dict[str, Any]]) -> str:
    """An aligned table: one row per group; n, mean, median, then count (share) per bucket."""
    from harmony.metrics import FOREGROUND_BUCKETS

    buckets = [bucket for bucket, _, _ in FOREGROUND_BUCKETS]
    rows = [["group", "n", "mean", "median", *buckets]]
    for group, summary in summaries.items():
        cells = [group, str(summary["n"])]
        cells += ["n/a" if summary[key] is None else f"{summary[key]:.4f}" for key in ("mean", "median")]
        for bucket in buckets:
            entry = summary["buckets"][bucket]
            share = "n/a" if entry["share"] is None else f"{100 * entry['share']:.1f} %"
            cells.append(f"{entry['n']} ({share})")
        rows.append(cells)
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    lines = [label]
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  " + "  ".join(cells))
    return "\n".join(lines)


def plot_format(path: Path) -> str:
    """The matplotlib format of a plot file's suffix (checked before any mask is read)."""
    from matplotlib.figure import Figure

    supported = Figure().canvas.get_supported_filetypes()
    file_format = path.suffix.lower().lstrip(".")
    if file_format not in supported:
        raise HarmonyInputError(path, f"unsupported plot format (use one of: {', '.join(sorted(supported))})")
    return file_format


def plot_cdf(path: Path, curves: dict[str, dict[str, list[float]]]) -> None:
    """Write the cumulative distribution of the foreground ratio, one line per root and subset, atomically.

    Args:
        path: The figure file; its suffix picks the format (``.png``, ``.pdf``, ``.svg``…).
        curves: ``{root label: {group: ratios}}``; each root's ``all`` is drawn solid, its subsets
            (when it has more than one) dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from harmony.metrics import ALL_GROUP, FOREGROUND_BUCKETS

    file_format = plot_format(path)
    figure = Figure(figsize=(6.0, 4.5), dpi=150)
    axes = figure.add_subplot()
    for label, groups in curves.items():
        subsets = [group for group in groups if group != ALL_GROUP]
        drawn = [ALL_GROUP, *subsets] if len(subsets) > 1 else [ALL_GROUP]
        for group in drawn:
            ratios = np.sort(np.asarray(groups[group], dtype=np.float64))
            if ratios.size == 0:
                continue
            share = np.arange(1, ratios.size + 1) / ratios.size
            x = np.concatenate([[0.0], ratios, [1.0]])
            y = np.concatenate([[0.0], share, [1.0]])
            name = label if group == ALL_GROUP else f"{label} {group}"
            style = {"linewidth": 2.0} if group == ALL_GROUP else {"linewidth": 1.0, "linestyle": "--"}
            axes.step(x, y, where="post", label=f"{name} (n={ratios.size})", **style)
    for _, low, _ in FOREGROUND_BUCKETS[1:]:
        axes.axvline(low, color="0.6", linewidth=0.8, linestyle=":")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("foreground ratio")
    axes.set_ylabel("cumulative share of samples")
    axes.set_title("Cumulative distribution of foreground ratios")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=file_format)


def _labels(roots: Sequence[Path]) -> list[str]:
    names = [root.name or str(root) for root in roots]
    return [str(root) if names.count(name) > 1 else name for root, name in zip(roots, names, strict=True)]


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = ToolArgumentParser(prog="harmony stats", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, action="append", required=True, help="a data set root (repeat for several)"
    )
    parser.add_argument(
        "--split", choices=(*SPLITS, "all"), default="test", help="split to count (default test)"
    )
    parser.add_argument(
        "--dataset",
        choices=("iharmony4", "rpharmony", "humanharmony", "folders"),
        default="iharmony4",
        help="layout of every root: iHarmony4-style list files, or folders matched by stem",
    )
    # No default here: main() takes the iharmony4 protocol's size, so that building the parser (--help)
    # does not import harmony.metrics.
    parser.add_argument(
        "--size",
        type=int,
        help="masks are resized to size×size first, as the evaluator scores them (default 256)",
    )
    parser.add_argument("--plot", type=Path, help="write the CDF of the foreground ratio here (e.g. cdf.png)")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--composite-dir", default="composite", help="folders layout: composites folder")
    parser.add_argument("--mask-dir", default="mask", help="folders layout: masks folder")
    parser.add_argument("--target-dir", default="target", help="folders layout: ground-truth folder")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="mask-reading threads"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the foreground-ratio statistics of every root; optionally plot and save them."""
    args = build_parser().parse_args(argv)
    if args.size is not None and args.size < 1:
        raise HarmonyInputError(None, f"--size must be positive (got {args.size})")
    if args.plot is not None:
        plot_format(args.plot)
    from harmony.metrics import FOREGROUND_BUCKETS, PROTOCOLS

    if args.size is None:
        args.size = PROTOCOLS["iharmony4"].size
    labels = _labels(args.root)
    curves: dict[str, dict[str, list[float]]] = {}
    report: dict[str, Any] = {
        "split": args.split,
        "size": args.size,
        "buckets": {bucket: [low, high] for bucket, low, high in FOREGROUND_BUCKETS},
        "roots": {},
    }
    for label, root in zip(labels, args.root, strict=True):
        records = list_split(args.dataset, root, args.split, args)
        groups, summaries = root_stats(records, args.size, args.workers, f"masks {label}")
        curves[label] = groups
        report["roots"][label] = {"root": str(root), "dataset": args.dataset, "groups": summaries}
        title = (
            f"{label} ({root}, {args.dataset}, split {args.split}): foreground ratio at "
            f"{args.size}×{args.size}, mask ≥ 0.5"
        )
        print(format_stats(title, summaries))
    if args.plot is not None:
        plot_cdf(args.plot, curves)
        print(f"wrote {args.plot}")
    if args.json is not None:
        save_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    from harmony.cli import run_tool

    raise SystemExit(run_tool(main, sys.argv[1:]))
