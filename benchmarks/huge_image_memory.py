"""Peak memory of `harmony harmonize` on huge composites (SemiSupervisedParametric), side by side.

    .venv/bin/python benchmarks/huge_image_memory.py [--sides 3000 12000] [--checkpoint CK]

For each side it writes a side×side JPEG composite with a large soft foreground, runs ``harmony
harmonize`` on it in a fresh process and prints that process's peak resident memory (``ru_maxrss``),
its ratio to the decoded image (side²·3 bytes) and to the 2.5 GB target, and the wall time. The model is
the quickstart's (``checkpoints/quickstart.ckpt`` when present, else experiments/quickstart.yaml with
random weights): the full-resolution work, which is what grows with the image, does not depend on it.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TARGET_BYTES = 2.5e9


def write_inputs(folder: Path, side: int) -> tuple[Path, Path]:
    """A photo-like composite (gradients upsampled, JPEG) and an elliptical soft mask (PNG)."""
    small = 750
    yy, xx = np.mgrid[0:small, 0:small].astype(np.float32)
    base = 110 + 60 * np.sin(xx[..., None] / 40 + np.array([0, 1, 2])) + 40 * np.cos(yy[..., None] / 30)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
    distance = np.hypot((yy - small / 2) / (small / 2.5), (xx - small / 2) / (small / 3))
    mask = Image.fromarray((np.clip((1.02 - distance) * 30, 0, 1) * 255).astype(np.uint8))
    composite_path, mask_path = folder / f"composite_{side}.jpg", folder / f"mask_{side}.png"
    image.save(composite_path, quality=92)
    del image
    mask.resize((side, side), Image.BILINEAR).save(mask_path)
    return composite_path, mask_path


def quickstart_checkpoint(folder: Path) -> Path:
    """``checkpoints/quickstart.ckpt``, or the quickstart config's model with random weights saved as one."""
    trained = REPO / "checkpoints" / "quickstart.ckpt"
    if trained.is_file():
        return trained
    from harmony.commands.import_weights import build_model, save_checkpoint

    model = build_model(REPO / "experiments" / "quickstart.yaml", [], load=False)
    return save_checkpoint(model, "random", REPO / "experiments" / "quickstart.yaml", folder / "random.ckpt")


def peak_of_harmonize(checkpoint: Path, composite: Path, mask: Path, output: Path) -> tuple[float, float]:
    """Peak RSS (bytes) and wall time (s) of one ``harmony harmonize`` process."""
    command = [sys.executable, "-m", "harmony", "harmonize", "--checkpoint", str(checkpoint)]
    command += [
        "--composite",
        str(composite),
        "--mask",
        str(mask),
        "--output",
        str(output),
        "--device",
        "cpu",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    # One child at a time: RUSAGE_CHILDREN's maximum is then this child's once it exceeds the earlier ones.
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise RuntimeError("run the sides in increasing order: this child peaked below an earlier one")
    return peak_kib * 1024.0, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sides", type=int, nargs="+", default=[3000, 12000], help="square sides, increasing"
    )
    parser.add_argument("--checkpoint", type=Path, help="a parametric checkpoint (default: the quickstart's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        checkpoint = args.checkpoint or quickstart_checkpoint(folder)
        print(f"harmony harmonize, checkpoint {checkpoint}")
        columns = ("image", 13), ("decoded", 9), ("peak RSS", 9), ("peak/decoded", 13), ("peak/2.5 GB", 12)
        print(" ".join(f"{name:>{width}}" for name, width in columns), f"{'time':>7}")
        for side in sorted(args.sides):
            composite, mask = write_inputs(folder, side)
            peak, seconds = peak_of_harmonize(checkpoint, composite, mask, folder / f"out_{side}.jpg")
            decoded = side * side * 3
            print(
                f"{side:>6}x{side:<6} {decoded / 1e9:>7.2f}GB {peak / 1e9:>7.2f}GB {peak / decoded:>13.2f} "
                f"{peak / TARGET_BYTES:>12.2f} {seconds:>6.1f}s"
            )
            for path in (composite, mask, folder / f"out_{side}.jpg"):
                path.unlink()


if __name__ == "__main__":
    main()
