"""`harmony harmonize`'s steps, timed one by one: shared by parametric_speed.py and startup.py, torch-free.

    .venv/bin/python benchmarks/harmonize_steps.py --checkpoint CK --composite C.jpg --mask M.png \
        --output O.png [--runs 3] [--runtime auto]

The module imports only NumPy and Pillow, so startup.py can run it in a fresh process and see where a warm
`harmony harmonize` spends its time without torch being imported by the measurement itself. As a script it
times, in one fresh process: the imports of `harmony.commands.harmonize`, loading the runner
(`harmony.api.load_runner`, the command's own), then per run decode / downsample / networks / apply /
encode, and prints them as JSON with whether torch ended up imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STEPS = ("decode", "downsample+networks", "apply", "encode")
"""The steps of one image, as `harmony harmonize` runs them (`run_job` for a parametric model)."""


class OtherLoad:
    """How much CPU other processes used while a benchmark ran: its timings' noise, from ``/proc/stat``.

    The machine's busy CPU time minus this process's and its finished children's (``os.times``).
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        own = os.times()
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system, irq softirq steal
        return busy / tick, own.user + own.system + own.children_user + own.children_system, time.monotonic()

    def summary(self) -> str:
        end = self._sample()
        if self.start is None or end is None:
            return "CPU load of other processes: unknown (no /proc/stat)"
        busy, own, wall = (after - before for after, before in zip(end, self.start, strict=True))
        others = max(0.0, busy - own) / wall
        return (
            f"CPU load of other processes during this run: {others:.2f} of {os.cpu_count()} cores on average "
            "(/proc/stat minus this benchmark's own; 0 = a quiet machine, 1 = a whole core taken)"
        )


def make_composite(folder: Path, width: int, height: int, suffix: str) -> tuple[Path, Path]:
    """A photo-like composite (smooth gradients + texture, ``suffix`` format) and an elliptical soft mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 90 + 60 * np.sin(xx[..., None] / 400 + np.array([0, 1, 2])) + 40 * np.cos(yy[..., None] / 300)
    texture = rng.normal(0, 6, (height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
    image = np.clip(base + texture, 0, 255).astype(np.uint8)
    distance = np.hypot((yy - height / 2) / (height / 3), (xx - width / 2) / (width / 5))
    mask = (np.clip((1.02 - distance) * 50, 0, 1) * 255).astype(np.uint8)
    image[mask > 0] = np.clip(image[mask > 0] * np.array([1.2, 0.9, 0.8]), 0, 255).astype(np.uint8)
    composite_path, mask_path = folder / f"composite{suffix}", folder / "mask.png"
    Image.fromarray(image).save(composite_path, quality=95)
    Image.fromarray(mask).save(mask_path)
    return composite_path, mask_path


def harmonize_once(runner: Any, composite_path: Path, mask_path: Path, output: Path) -> dict[str, Any]:
    """One image through ``runner`` as `harmony harmonize` does it; milliseconds per step, and the output.

    Returns the step times (:data:`STEPS`, plus ``downsample`` alone, timed apart and not part of the
    end-to-end sum) and ``output``, the harmonized array.
    """
    from harmony.commands.harmonize import Job, read_inputs, write_job
    from harmony.methods.semi_supervised_parametric.any_resolution import downsample

    marks = [time.perf_counter()]
    composite, mask = read_inputs(composite_path, mask_path)
    marks.append(time.perf_counter())
    adjustments = runner.estimate_adjustments(composite, mask)
    marks.append(time.perf_counter())
    harmonized = runner.apply_adjustments(composite, mask, adjustments, in_place=True)
    marks.append(time.perf_counter())
    write_job(Job(composite_path, mask_path, output), harmonized)
    marks.append(time.perf_counter())
    steps = zip(STEPS, marks[:-1], marks[1:], strict=True)
    times = {name: (end - start) * 1000 for name, start, end in steps}
    # The downsampling alone (what estimate_adjustments does before the networks), once more, apart.
    original, mask = read_inputs(composite_path, mask_path)
    start = time.perf_counter()
    downsample(original, runner.low_resolution, 255.0)
    downsample(mask[..., None], runner.low_resolution, 1.0)
    times["downsample"] = (time.perf_counter() - start) * 1000
    assert np.array_equal(harmonized[mask == 0], original[mask == 0]), "background changed"
    return {"times": times, "output": harmonized}


def median_times(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-step medians of several :func:`harmonize_once` time dicts, with ``end to end`` (their sum)."""
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    medians["end to end"] = statistics.median(sum(run[name] for name in STEPS) for run in runs)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--composite", type=Path, required=True)
    parser.add_argument("--mask", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    import harmony.commands.harmonize  # noqa: F401 - what the command imports before anything runs

    seconds["imports"] = time.perf_counter() - start
    start = time.perf_counter()
    import onnxruntime  # noqa: F401 - imported by the ONNX runner when it loads

    seconds["import onnxruntime"] = time.perf_counter() - start
    from harmony.api import load_runner

    start = time.perf_counter()
    runner = load_runner(args.checkpoint, None, "auto", args.runtime)
    seconds["load"] = time.perf_counter() - start
    # The first image is timed too: a fresh `harmony harmonize` process harmonizes exactly one.
    runs = [harmonize_once(runner, args.composite, args.mask, args.output)["times"] for _ in range(args.runs)]
    report = {
        "seconds": seconds,
        "first": runs[0],
        "median": median_times(runs),
        "runner": type(runner).__name__,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
