"""``harmony generate-composites``: new composites from real images and masks (DiffHarmony++, Sec. 4.1).

A trained :class:`~harmony.methods.diffharmony.InverseHarmonization` model makes ``--candidates``
composites (the official default: 10) of each (real image, mask) pair, one per seed ``seed + k``, at its
working size (``--size``, the official 1024, and ``--steps``, 5). Each is resized back to the real image's
own size and blended in with the mask, so every pixel outside the mask is the real image's, bit for bit.

The pairs come from an iHarmony4-layout root (``--root``: each distinct mask of ``--split``, with its real
image) or from two folders (``--images`` and ``--masks``: masks named ``<image stem>_<m>.*`` as in
iHarmony4, or ``<image stem>.*`` for one mask per image). The output is an iHarmony4-layout tree that every
harmony reader takes (``IHarmony4DataModule``, ``check-data``, ``stats``, and the ``generated_root`` of
the blending-ratio augmentation)::

    <output>/<Subset>/real_images/<id>.<ext>           # copies of the real images
    <output>/<Subset>/masks/<id>_<m>.<ext>             # copies of the masks
    <output>/<Subset>/composite_images/<id>_<m>_<k>.png  # candidate k = 0 … K-1 (seed + k)
    <output>/IHD_<split>.txt                           # every candidate
    <output>/generation.json                           # settings and counts

Candidates are written one by one under temporary names, so an interrupted run leaves only whole files;
run the same command again to finish it (what exists is skipped; other settings are refused). A pair's
noise depends only on the seed and k, never on the batch, so batching and resuming give the same images
(batched convolutions may round a pixel differently, by one level at most).
PNG is the default: JPEG would change the background pixels the tree promises to keep (the official code
writes JPEG).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from harmony import __version__
from harmony.commands.arguments import ToolArgumentParser
from harmony.commands.harmonize import resolve_device
from harmony.data.io import (
    atomic_path,
    check_same_size,
    list_images,
    read_mask,
    read_rgb,
    save_json,
    save_rgb,
)
from harmony.data.records import list_iharmony4
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    import torch

    from harmony.methods.diffharmony import InverseHarmonization

# torch, Lightning and the model (diffusers) are imported where they are used, so that --help and a bad
# argument answer at once (here and in build-human-harmony, which imports this module).

MANIFEST = "generation.json"
"""The settings and counts of a generated tree, at its root."""

KEPT_SUFFIXES = {"real_images": (".jpg", ".jpeg", ".png"), "masks": (".png", ".jpg", ".jpeg")}
"""Suffixes the iHarmony4 readers look for; inputs in other formats are re-encoded as PNG."""


@dataclass(frozen=True)
class Pair:
    """One (real image, mask) pair to make composites of.

    Args:
        subset: The subset folder it goes to.
        real: The real image file.
        mask: The mask file.
        mask_stem: The iHarmony4 mask name ``<id>_<m>`` (``<id>`` names the real image).
    """

    subset: str
    real: Path
    mask: Path
    mask_stem: str

    @property
    def real_id(self) -> str:
        """The real image's id, ``<id>`` of ``<id>_<m>``."""
        return self.mask_stem.rsplit("_", 1)[0]

    def candidate(self, output: Path, k: int) -> Path:
        """Where candidate ``k`` goes."""
        return output / self.subset / "composite_images" / f"{self.mask_stem}_{k}.png"

    def copies(self, output: Path) -> tuple[Path, Path]:
        """Where the real image and the mask are copied to."""
        return (
            output / self.subset / "real_images" / kept_name(self.real_id, self.real, "real_images"),
            output / self.subset / "masks" / kept_name(self.mask_stem, self.mask, "masks"),
        )


def kept_name(stem: str, source: Path, folder: str) -> str:
    """The name ``stem`` gets in ``folder``: the source's suffix where the readers take it, else ``.png``."""
    suffix = source.suffix.lower()
    return f"{stem}{suffix if suffix in KEPT_SUFFIXES[folder] else '.png'}"


def pairs_from_root(root: Path, split: str, subsets: Sequence[str] | None = None) -> list[Pair]:
    """Each distinct (subset, mask) of an iHarmony4-layout split, with its real image, sorted."""
    pairs: dict[tuple[str, str], Pair] = {}
    for record in list_iharmony4(root, split, subsets):
        if record.target is None:
            raise HarmonyInputError(record.composite, "no real image for this composite")
        key = (record.subset, record.mask.stem)
        pairs.setdefault(key, Pair(record.subset, record.target, record.mask, record.mask.stem))
    if not pairs:
        raise HarmonyInputError(root, f"no samples of subsets {list(subsets or [])} in split '{split}'")
    return [pairs[key] for key in sorted(pairs)]


def pairs_from_folders(images: Path, masks: Path, subset: str) -> list[Pair]:
    """Masks ``<image stem>_<m>.*`` (or ``<image stem>.*``, as mask 1) with their images, sorted.

    Raises:
        HarmonyInputError: A mask matches no image, two files would get one name, or there are none.
    """
    by_stem = {path.stem: path for path in list_images(images)}
    pairs: dict[str, Pair] = {}
    for mask in list_images(masks):
        if mask.stem in by_stem:
            image, mask_stem = by_stem[mask.stem], f"{mask.stem}_1"
        else:
            image, mask_stem = by_stem.get(mask.stem.rsplit("_", 1)[0]), mask.stem
        if image is None or "_" not in mask_stem:
            raise HarmonyInputError(mask, f"no image named <stem>.* or <stem>_<m>.* for it in {images}")
        if mask_stem in pairs:
            raise HarmonyInputError(mask, f"a second mask for the name {mask_stem!r}")
        pairs[mask_stem] = Pair(subset, image, mask, mask_stem)
    if not pairs:
        raise HarmonyInputError(masks, "no masks in this folder")
    return [pairs[key] for key in sorted(pairs)]


def copy_input(source: Path, destination: Path, folder: str) -> None:
    """Copy a real image or mask into the tree once (re-encoded as PNG where its format is not read)."""
    if destination.is_file():
        return
    if source.suffix.lower() in KEPT_SUFFIXES[folder]:
        with atomic_path(destination) as temporary:
            shutil.copyfile(source, temporary)
    elif folder == "masks":
        save_rgb(destination, np.repeat((read_mask(source) * 255 + 0.5).astype(np.uint8)[..., None], 3, 2))
    else:
        save_rgb(destination, read_rgb(source))


def _batches(items: list[Pair], size: int) -> Iterator[list[Pair]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _precision(model: InverseHarmonization, precision: str) -> Iterator[None]:
    import torch

    # bf16 only on CUDA; CPUs without native bf16 would run many times slower.
    if precision == "bf16-mixed" and model.device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def generate_candidates(
    model: InverseHarmonization,
    pairs: Sequence[Pair],
    output: Path,
    candidates: int,
    seed: int = 0,
    batch_size: int = 4,
    precision: str = "bf16-mixed",
    show_progress: bool = True,
) -> int:
    """Write every missing candidate of ``pairs`` under ``output`` (and the pairs' real images and masks).

    Args:
        model: The inverse model, in eval mode, at the working size and steps wanted.
        pairs: The (real image, mask) pairs.
        output: The tree's root.
        candidates: Candidates per pair (``k = 0 … candidates − 1``, seed ``seed + k``).
        seed: Seed of candidate 0.
        batch_size: Pairs per forward pass.
        precision: ``bf16-mixed`` (autocast on CUDA) or ``32``.
        show_progress: Show a progress bar on stderr.

    Returns:
        The number of candidates written now.
    """
    import torch

    from harmony.methods.base import blend_full_resolution, to_uint8

    todo = [pair for pair in pairs if not all(pair.candidate(output, k).is_file() for k in range(candidates))]
    missing = sum(not pair.candidate(output, k).is_file() for pair in todo for k in range(candidates))
    written = 0
    progress = tqdm(
        total=missing, desc="generating", unit="composite", file=sys.stderr, disable=not show_progress
    )
    with progress, torch.no_grad(), _precision(model, precision):
        for chunk in _batches(todo, batch_size):
            reals, masks = [], []
            for pair in chunk:
                real, mask = read_rgb(pair.real), read_mask(pair.mask)
                check_same_size(pair.real, real, pair.mask, mask)
                if not (mask >= 0.5).any():
                    raise HarmonyInputError(pair.mask, "empty mask (no pixel >= 0.5)")
                reals.append(real)
                masks.append(mask)
            working = [model.working_batch(real, mask) for real, mask in zip(reals, masks, strict=True)]
            batch = {name: torch.cat([item[name] for item in working]) for name in working[0]}
            for k in range(candidates):
                wanted = [i for i, pair in enumerate(chunk) if not pair.candidate(output, k).is_file()]
                if not wanted:
                    continue
                prediction = model.generate({name: value[wanted] for name, value in batch.items()}, seed + k)
                for row, index in enumerate(wanted):
                    image = to_uint8(prediction[row].float()).permute(1, 2, 0).cpu().numpy()
                    composite = blend_full_resolution(image, reals[index], masks[index])
                    save_rgb(chunk[index].candidate(output, k), composite)
                    written += 1
                    progress.update(1)
    # Every pair's real image and mask, also of pairs whose candidates were all there already.
    for pair in pairs:
        for source, destination, folder in zip(
            (pair.real, pair.mask), pair.copies(output), ("real_images", "masks"), strict=True
        ):
            copy_input(source, destination, folder)
    return written


def write_list(output: Path, split: str, pairs: Sequence[Pair], candidates: int) -> Path:
    """Write ``<output>/IHD_<split>.txt`` listing every candidate of ``pairs``."""
    lines = sorted(
        f"{pair.subset}/composite_images/{pair.candidate(output, k).name}"
        for pair in pairs
        for k in range(candidates)
    )
    path = output / f"IHD_{split}.txt"
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    return path


def check_resumable(output: Path, settings: dict[str, Any], manifest: str = MANIFEST, tool: str = "") -> None:
    """Refuse an output folder that holds something else, or that was made with other settings.

    Args:
        output: The folder a resumable command writes.
        settings: This run's settings, compared with the ``settings`` its manifest records.
        manifest: The manifest's file name inside ``output``.
        tool: The command, for the message (default: ``generate-composites``).
    """
    manifest_path = output / manifest
    if not manifest_path.is_file():
        if output.is_dir() and any(output.iterdir()):
            raise HarmonyInputError(output, f"not empty and has no {manifest}; choose another --output")
        return
    try:
        previous = json.loads(manifest_path.read_text()).get("settings")
    except (ValueError, AttributeError) as error:
        raise HarmonyInputError(
            manifest_path, f"not a {tool or 'generate-composites'} manifest ({error})"
        ) from None
    if previous != settings:
        changed = ", ".join(
            f"{key} {(previous or {}).get(key)!r} -> {value!r}"
            for key, value in settings.items()
            if (previous or {}).get(key) != value
        )
        raise HarmonyInputError(manifest_path, f"made with other settings ({changed}); use a new --output")


def load_inverse_model(
    checkpoint: Path, device: torch.device, size: int | None, steps: int | None
) -> InverseHarmonization:
    """An :class:`InverseHarmonization` checkpoint, at working size ``size`` and ``steps`` steps if given."""
    from harmony.commands.checkpoints import load_checkpoint_model
    from harmony.methods.diffharmony import InverseHarmonization

    model = load_checkpoint_model(checkpoint, InverseHarmonization, "an InverseHarmonization model", device)
    assert isinstance(model, InverseHarmonization)
    if size is not None:
        model.inference_size = size
        model.check_inference_size(model.latent_grid, f"the model of {checkpoint}")
    if steps is not None:
        if steps < 1:
            raise HarmonyInputError(None, f"--steps must be at least 1, got {steps}")
        model.num_inference_steps = steps
    return model


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(
        prog="harmony generate-composites",
        description="Generate candidate composites of (real image, mask) pairs with a trained "
        "InverseHarmonization model (DiffHarmony++), as an iHarmony4-layout tree. Resumable: run the same "
        "command again after an interruption.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="an InverseHarmonization checkpoint")
    parser.add_argument("--root", type=Path, help="an iHarmony4-layout root: every mask of --split")
    parser.add_argument("--split", default="train", help="split of --root, and name of the list written")
    parser.add_argument("--subsets", nargs="+", help="subsets of --root (default: all listed)")
    parser.add_argument("--images", type=Path, help="instead of --root: a folder of real images")
    parser.add_argument(
        "--masks", type=Path, help="with --images: their masks, <image stem>_<m>.* or <image stem>.*"
    )
    parser.add_argument("--subset", default="HGenerated", help="subset name of --images pairs")
    parser.add_argument("--output", type=Path, required=True, help="the tree to write (or to resume)")
    parser.add_argument("--candidates", type=int, default=10, help="composites per pair (default: 10)")
    parser.add_argument("--size", type=int, help="working size (default: the model's; official 1024)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model's; official 5)")
    parser.add_argument("--seed", type=int, default=0, help="candidate k uses seed + k (default: 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per forward pass (default: 4)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    parser.add_argument(
        "--precision", choices=("bf16-mixed", "32"), default="bf16-mixed", help="on CUDA (CPU: always 32)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony generate-composites``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if (args.root is None) == (args.images is None) or (args.images is None) != (args.masks is None):
        raise HarmonyInputError(None, "give either --root, or --images with --masks")
    if args.candidates < 1 or args.batch_size < 1:
        raise HarmonyInputError(None, "--candidates and --batch-size must be at least 1")
    if Path(args.subset).name != args.subset or args.subset.startswith("."):
        raise HarmonyInputError(None, f"bad subset name {args.subset!r} (a plain folder name is needed)")
    if args.root is not None:
        pairs = pairs_from_root(args.root, args.split, args.subsets)
    else:
        pairs = pairs_from_folders(args.images, args.masks, args.subset)
    model = load_inverse_model(args.checkpoint, resolve_device(args.device), args.size, args.steps)
    settings = {
        "checkpoint": str(args.checkpoint.resolve()),
        "candidates": args.candidates,
        "seed": args.seed,
        "inference_size": model.inference_size,
        "num_inference_steps": model.num_inference_steps,
        "precision": args.precision,
    }
    output: Path = args.output
    check_resumable(output, settings)
    manifest: dict[str, Any] = {
        "tool": "harmony generate-composites",
        "harmony_version": __version__,
        "status": "generating",
        "settings": settings,
        "source": str(args.root or args.images),
    }
    save_json(output / MANIFEST, manifest)
    written = generate_candidates(
        model,
        pairs,
        output,
        args.candidates,
        args.seed,
        args.batch_size,
        args.precision,
        not args.no_progress,
    )
    list_path = write_list(output, args.split, pairs, args.candidates)
    manifest["status"] = "complete"
    manifest["counts"] = {"pairs": len(pairs), "composites": len(pairs) * args.candidates}
    save_json(output / MANIFEST, manifest)
    print(
        f"{len(pairs)} pairs x {args.candidates} candidates ({written} generated now) -> {output} "
        f"(list: {list_path.name})"
    )
    return 0
