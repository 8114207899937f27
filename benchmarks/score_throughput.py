"""Throughput of ``harmony score`` end to end, and of its decode and metric stages alone.

Writes a deterministic iHarmony4-layout tree into a temporary folder, shaped like the test split:
JPEG composites and real images, mostly 640×480 (``--input-size``) with a few large (HAdobe5k-like) ones, PNG
masks, and PNG predictions at 256×256 (what most methods write). Then it times

* ``harmony score`` end to end (listing, decoding, resizing, metrics),
* decoding + resizing alone, with the same process pool,
* the metrics alone, on already-resized arrays,

and prints images per second for each. Usage::

    python benchmarks/score_throughput.py [--images 400] [--workers N] [--large-fraction 0.05]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from harmony.commands import score
from harmony.metrics import HarmonizationEvaluator

SUBSETS = (("HCOCO", "c", 0.58), ("HAdobe5k", "a", 0.29), ("HFlickr", "f", 0.11), ("Hday2night", "d", 0.02))
DISTINCT_TRIPLETS = 12


def _encode(image: np.ndarray, suffix: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG" if suffix == ".jpg" else "PNG", quality=90)
    return buffer.getvalue()


def _triplet(rng: np.random.Generator, width: int, height: int) -> tuple[bytes, bytes, bytes]:
    """A photo-like real image (smooth field + texture), a rectangular mask and a tinted composite."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = (
        rng.uniform(60, 190, 3)
        + yy[..., None] * rng.uniform(-0.1, 0.1, 3)
        + xx[..., None] * rng.uniform(-0.1, 0.1, 3)
    )
    texture = (
        rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    )
    real = np.clip(field + texture, 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    mask_height, mask_width = int(height * rng.uniform(0.1, 0.6)), int(width * rng.uniform(0.1, 0.6))
    top, left = rng.integers(0, height - mask_height), rng.integers(0, width - mask_width)
    mask[top : top + mask_height, left : left + mask_width] = 255
    composite = real.copy()
    foreground = mask > 0
    composite[foreground] = np.clip(real[foreground] * rng.uniform(0.7, 1.3, 3), 0, 255).astype(np.uint8)
    return _encode(composite, ".jpg"), _encode(mask, ".png"), _encode(real, ".jpg")


def write_tree(
    root: Path, count: int, large_fraction: float, input_size: tuple[int, int] = (640, 480), seed: int = 0
) -> tuple[Path, Path]:
    """Write ``count`` test composites with predictions; returns ``(data_root, predictions)``."""
    rng = np.random.default_rng(seed)
    normal = [_triplet(rng, *input_size) for _ in range(DISTINCT_TRIPLETS)]
    large = [_triplet(rng, 2048, 1365) for _ in range(2)]
    prediction = _encode(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), ".png")
    predictions = root / "predictions"
    predictions.mkdir(parents=True)
    lines = []
    for index in range(count):
        subset, prefix, _ = SUBSETS[
            np.searchsorted(np.cumsum([share for _, _, share in SUBSETS]), rng.uniform())
        ]
        pool = large if rng.uniform() < large_fraction else normal
        composite, mask, real = pool[index % len(pool)]
        real_id = f"{prefix}{index:05d}"
        for folder, name, data in (
            ("composite_images", f"{real_id}_1_1.jpg", composite),
            ("masks", f"{real_id}_1.png", mask),
            ("real_images", f"{real_id}.jpg", real),
        ):
            (root / "data" / subset / folder).mkdir(parents=True, exist_ok=True)
            (root / "data" / subset / folder / name).write_bytes(data)
        (predictions / f"{real_id}_1_1.png").write_bytes(prediction)
        lines.append(f"{subset}/composite_images/{real_id}_1_1.jpg")
    (root / "data" / "IHD_test.txt").write_text("\n".join(lines) + "\n")
    return root / "data", predictions


class Timing(NamedTuple):
    """Wall-clock seconds and CPU seconds (this process and its reaped children, user + system)."""

    wall: float
    cpu: float


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@contextlib.contextmanager
def measure(timings: list[Timing]) -> Iterator[None]:
    """Append the wall and CPU time of the block to ``timings``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    timings.append(Timing(time.perf_counter() - wall, _cpu_seconds() - cpu))


def time_end_to_end(data_root: Path, predictions: Path, workers: int) -> Timing:
    """Time ``harmony score`` (output table discarded)."""
    timings: list[Timing] = []
    arguments = ["--data-root", str(data_root), "--predictions", str(predictions), "--workers", str(workers)]
    with measure(timings), contextlib.redirect_stdout(io.StringIO()):
        score.main(arguments)
    return timings[0]


def time_stages(data_root: Path, predictions: Path, workers: int) -> tuple[Timing, Timing]:
    """Time decoding + resizing alone (process pool), then the metrics alone (one torch thread)."""
    records = score.list_iharmony4_triplets(data_root, "test")
    prediction_paths = score.find_predictions(predictions, records)
    evaluator = HarmonizationEvaluator()
    timings: list[Timing] = []
    with measure(timings):
        samples = list(score.decode_for_scoring(records, prediction_paths, evaluator.protocol, workers))
    batches = [samples[index : index + 16] for index in range(0, len(samples), 16)]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with measure(timings):
        for batch in batches:
            score.add_to_evaluator(evaluator, batch)
        evaluator.compute()
    torch.set_num_threads(previous_threads)
    return timings[0], timings[1]


def main() -> None:
    """Generate the tree, time each stage and print images per second."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--large-fraction", type=float, default=0.05, help="share of 2048×1365 images")
    parser.add_argument("--input-size", default="640x480", help="WxH of the other composites and real images")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="harmony-score-bench-"))
    try:
        start = time.perf_counter()
        width, height = (int(side) for side in args.input_size.split("x"))
        data_root, predictions = write_tree(folder, args.images, args.large_fraction, (width, height))
        print(f"wrote {args.images} samples in {time.perf_counter() - start:.1f} s to {folder}")
        load_before = os.getloadavg()[0]
        end_to_end = time_end_to_end(data_root, predictions, args.workers)
        decode, metrics = time_stages(data_root, predictions, args.workers)
        print(
            f"{os.cpu_count()} CPUs, {args.workers} decoding processes, inputs {args.input_size} "
            f"({args.large_fraction:.0%} 2048x1365), scored at 256×256 (iharmony4); load "
            f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (others' work slows wall time)"
        )
        print(f"{'stage':<28}{'wall s':>8}{'images/s':>10}{'CPU s':>8}{'CPU ms/image':>14}")
        for stage, timing in (
            ("end to end (harmony score)", end_to_end),
            ("decode + resize only", decode),
            ("metrics only (1 thread)", metrics),
        ):
            print(
                f"{stage:<28}{timing.wall:>8.2f}{args.images / timing.wall:>10.1f}"
                f"{timing.cpu:>8.2f}{1000 * timing.cpu / args.images:>14.2f}"
            )
        ceiling = os.cpu_count() * args.images / end_to_end.cpu
        print(f"CPU-bound ceiling on {os.cpu_count()} idle cores: {ceiling:.0f} images/s end to end")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
