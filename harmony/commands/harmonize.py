"""``harmony harmonize``: harmonize your own composites at any resolution, one file or a folder.

Any harmonization method works: a checkpoint written by ``harmony fit`` (the model is rebuilt from
the configuration saved in it) or a training-free baseline by name (``--method ReinhardLabTransfer``).
The background (mask 0) of the output is the composite's, bit for bit. Parametric methods
(SemiSupervisedParametric) apply their curves and shading at full resolution and can export them:
``--export-lut`` (a ``.cube`` 3D LUT of the RGB curves, for Photopea, darktable, Resolve…),
``--export-curves`` (the curves as JSON) and ``--export-shading`` (the shading multiplier as an 8-bit
grayscale image, value/255 = gain, already 1 outside the mask). The curves apply to the foreground
only: use the mask as the adjustment layer's mask.

``--color-transfer hsv`` (or ``hsl``) post-processes any method's output with the colour transfer of Li
et al. 2023 (:mod:`harmony.postprocess.color_transfer`) at the image's full resolution: the output keeps
its hue and saturation and takes the composite's V (L) channel, matched to the background's mean and
standard deviation. The exports describe the method's own adjustments, so they are not combined with it.

A parametric model's networks run with ONNX Runtime by default (``--runtime auto``): an ``.onnx`` file
from ``harmony export`` directly, a ``.ckpt`` through an export made on its first use and cached
(:func:`harmony.api.load_runner`). Either way the command then never imports torch, which is most of its
start-up; everything around the networks is NumPy and Pillow
(:mod:`harmony.methods.semi_supervised_parametric.any_resolution`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from harmony.api import RUNTIMES, load_runner
from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import (
    atomic_path,
    atomic_paths,
    check_same_size,
    image_format,
    list_images,
    open_image,
    read_mask,
    read_rgb,
    write_rgb,
)
from harmony.data.records import list_matched_folders
from harmony.errors import HarmonyInputError
from harmony.methods.semi_supervised_parametric.any_resolution import (
    curves_to_cube,
    curves_to_json,
    lut_size_is_exact,
    shading_image,
)

if TYPE_CHECKING:
    import torch

COLOR_TRANSFER_CHOICES = ("none", "hsv", "hsl")
"""``--color-transfer``'s choices: :data:`harmony.postprocess.ColorTransferSpace`, without importing torch."""


@dataclass
class Job:
    """One image to harmonize and where its outputs go.

    Args:
        composite: The composite file.
        mask: Its mask file, or ``None`` to use the composite's alpha channel.
        output: The harmonized image to write.
        lut: Where to write the ``.cube`` LUT, if wanted.
        curves: Where to write the curves JSON, if wanted.
        shading: Where to write the shading image, if wanted.
    """

    composite: Path
    mask: Path | None
    output: Path
    lut: Path | None = None
    curves: Path | None = None
    shading: Path | None = None

    def exports(self) -> list[Path]:
        """The export files asked for."""
        return [path for path in (self.lut, self.curves, self.shading) if path is not None]

    def targets(self) -> list[Path]:
        """Every file this job writes."""
        return [self.output, *self.exports()]

    def done(self) -> bool:
        """Whether every file of this job is already there (a re-run folder job skips it)."""
        return all(path.is_file() for path in self.targets())


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise HarmonyInputError(None, "--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def load_method(checkpoint: Path | None, method: str | None, device: str, runtime: str = "auto") -> Any:
    """Build the harmonizer: a checkpoint (``.ckpt`` or ``.onnx``) or a training-free method by class name.

    See :func:`harmony.api.load_runner` (which runtime runs what).
    """
    return load_runner(checkpoint, method, device, runtime)


def read_inputs(composite_path: Path, mask_path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Read a composite and its mask (the composite's alpha channel when no mask file is given)."""
    composite = read_rgb(composite_path)
    if mask_path is not None:
        mask = read_mask(mask_path)
        check_same_size(composite_path, composite, mask_path, mask)
        return composite, mask
    image = open_image(composite_path)
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
        if alpha.min(initial=1.0) < 1.0:
            return composite, alpha
    raise HarmonyInputError(
        composite_path, "no --mask given and the image has no transparency to use as the mask"
    )


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """Turn the command line into jobs (one file, or a folder matched by stem)."""
    composite, mask, output = Path(args.composite), args.mask, Path(args.output)
    exports = {
        name: None if value is None else Path(value)
        for name, value in (
            ("lut", args.export_lut),
            ("curves", args.export_curves),
            ("shading", args.export_shading),
        )
    }
    if not composite.is_dir():
        if mask is not None and Path(mask).is_dir():
            raise HarmonyInputError(mask, "is a folder but --composite is a file")
        if output.is_dir():
            raise HarmonyInputError(output, "is a folder; give the output file's name")
        if output.resolve() == composite.resolve():
            raise HarmonyInputError(output, "would overwrite the composite")
        image_format(output)
        return [Job(composite, None if mask is None else Path(mask), output, **exports)]
    if output.exists() and not output.is_dir():
        raise HarmonyInputError(output, "--composite is a folder, so --output must be a folder too")
    if output.resolve() == composite.resolve():
        raise HarmonyInputError(output, "would overwrite the composites")
    return plan_folder_jobs(composite, mask, output, args.mask_suffix, exports)


def plan_folder_jobs(
    composite: Path,
    mask: Path | None,
    output: Path,
    mask_suffix: str = "",
    exports: dict[str, Path | None] | None = None,
) -> list[Job]:
    """One job per image of the folder ``composite`` (masks matched by stem, or alpha channels).

    Args:
        composite: The folder of composites.
        mask: The folder of masks, or ``None`` for the composites' alpha channels.
        output: The output folder (``<stem>.png`` each).
        mask_suffix: Extra text after the stem in mask names.
        exports: Folders for the ``lut``, ``curves`` and ``shading`` exports, if wanted.
    """
    exports = exports or {}
    if mask is None:
        pairs = [(path, None) for path in list_images(composite)]
    else:
        pairs = [
            (r.composite, r.mask)
            for r in list_matched_folders(composite, mask, None, mask_suffix=mask_suffix)
        ]
    folders = {name: exports.get(name) for name in ("lut", "curves", "shading")}
    names = {"lut": "{}.cube", "curves": "{}.json", "shading": "{}_shading.png"}
    jobs = []
    for image, image_mask in pairs:
        targets = {
            name: None if folder is None else Path(folder) / names[name].format(image.stem)
            for name, folder in folders.items()
        }
        jobs.append(Job(image, image_mask, output / f"{image.stem}.png", **targets))
    return jobs


def write_job(job: Job, harmonized: np.ndarray) -> None:
    """Write a job's harmonized image (atomically: it appears whole or not at all)."""
    with atomic_path(job.output) as temporary:
        write_rgb(temporary, harmonized, image_format(job.output))


def run_job(model: Any, job: Job, lut_size: int | None) -> None:
    """Harmonize one image and write its output and exports, all of them or none."""
    composite, mask = read_inputs(job.composite, job.mask)
    if not (mask >= 0.5).any():
        tqdm.write(
            f"harmony: note: {job.mask or job.composite}: empty mask, the composite is written unchanged",
            file=sys.stderr,
        )
    elif (mask >= 0.5).mean() > 0.5:
        tqdm.write(
            f"harmony: warning: {job.mask or job.composite}: the foreground covers over half the image "
            "(inverted mask?)",
            file=sys.stderr,
        )
    output_format = image_format(job.output)
    parametric = hasattr(model, "estimate_adjustments") and model.output_postprocess is None
    if not job.exports() and not parametric:
        write_job(job, model.postprocess_image(model.harmonize_image(composite, mask), composite, mask))
        return
    adjustments = model.estimate_adjustments(composite, mask)  # type: ignore[operator]
    # The composite is not needed afterwards: harmonizing it in place keeps one image-sized buffer fewer.
    harmonized = model.apply_adjustments(composite, mask, adjustments, in_place=True)  # type: ignore[operator]
    shading = shading_image(adjustments, mask) if job.shading is not None else None
    # The float mask (4 bytes a pixel) is freed before the image is encoded, the peak of a huge image.
    del composite, mask
    with atomic_paths(job.targets()) as temporaries:
        staged = dict(zip(job.targets(), temporaries, strict=True))
        write_rgb(staged[job.output], harmonized, output_format)
        if job.lut is not None:
            title = f"harmony {job.composite.stem}"
            staged[job.lut].write_text(curves_to_cube(adjustments.curves, lut_size, title=title))
        if job.curves is not None:
            payload = {**curves_to_json(adjustments.curves), "image": job.composite.name}
            staged[job.curves].write_text(json.dumps(payload, indent=2) + "\n")
        if shading is not None:
            Image.fromarray(shading, mode="L").save(staged[job.shading], format="PNG")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(
        prog="harmony harmonize",
        description="Harmonize your own composites at any resolution, one file or a folder. The background "
        "(mask 0) stays bit-identical. --export-lut/--export-curves/--export-shading (parametric methods) "
        "write the RGB curves as a .cube LUT or JSON and the shading multiplier (value/255 = gain, 255 "
        "outside the mask); the curves apply to the foreground only: mask the LUT layer with the mask.",
        epilog="Folder mode: --composite DIR --mask DIR --output DIR (masks matched by stem); export options "
        "then name folders.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by `harmony fit`")
    source.add_argument(
        "--method", help="a training-free method by class name, e.g. Composite, ReinhardLabTransfer"
    )
    parser.add_argument("--composite", required=True, help="composite image, or a folder of them")
    parser.add_argument(
        "--mask", help="foreground mask (white = object), or a folder; default: the composite's alpha"
    )
    parser.add_argument(
        "--mask-suffix", default="", help="folder mode: extra text after the stem in mask names"
    )
    parser.add_argument("--output", required=True, help="output image (format from its suffix), or a folder")
    parser.add_argument("--export-lut", help="write the RGB curves as a .cube 3D LUT")
    parser.add_argument(
        "--lut-size", type=int, default=None, help="LUT points per axis (default: the number of knots)"
    )
    parser.add_argument("--export-curves", help="write the RGB curves as JSON")
    parser.add_argument("--export-shading", help="write the shading multiplier as a grayscale PNG")
    parser.add_argument(
        "--color-transfer",
        choices=COLOR_TRANSFER_CHOICES,
        default="none",
        help="post-process the output with Li et al. 2023's colour transfer: keep its hue and saturation, "
        "take the composite's V (hsv) or L (hsl) matched to the background's mean and std (default: none)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the networks run"
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs the networks. auto (default): ONNX Runtime for a parametric checkpoint on the CPU, "
        "exported once and cached (the fastest; later runs do not import torch), PyTorch for the rest; "
        "an .onnx --checkpoint always runs with ONNX Runtime",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="folder mode: redo images whose outputs already exist (by default a re-run skips them)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony harmonize``; returns the exit status (user errors raise ``HarmonyInputError``)."""
    args = build_parser().parse_args(argv)
    jobs = plan_jobs(args)
    runtime = args.runtime
    if args.color_transfer != "none":
        if runtime == "onnx" or (args.checkpoint is not None and args.checkpoint.suffix.lower() == ".onnx"):
            raise HarmonyInputError(
                args.checkpoint, "--color-transfer needs PyTorch: use the .ckpt checkpoint"
            )
        runtime = "torch"
    model = load_method(args.checkpoint, args.method, args.device, runtime)
    if args.color_transfer != "none":
        from harmony.postprocess import make_color_transfer

        model.output_postprocess = make_color_transfer(args.color_transfer)
    name = type(model).__name__
    if any(job.lut or job.curves or job.shading for job in jobs):
        if model.output_postprocess is not None:
            raise HarmonyInputError(
                None, "--color-transfer changes the output beyond the exported adjustments: export without it"
            )
        if not hasattr(model, "estimate_adjustments"):
            raise HarmonyInputError(args.checkpoint, f"{name} has no curves or shading map to export")
        if args.export_shading is not None and not model.has_shading_map:
            raise HarmonyInputError(
                args.checkpoint, f"this {name} has no shading map (curves only) to export"
            )
        knots = model.num_knots
        if args.lut_size is not None and not lut_size_is_exact(args.lut_size, knots):
            raise HarmonyInputError(
                None, f"--lut-size must be 1 + a multiple of {knots - 1} (e.g. {knots}, {2 * knots - 1})"
            )
    folder_mode = Path(args.composite).is_dir()
    todo = [job for job in jobs if not (folder_mode and not args.overwrite and job.done())]
    if len(todo) < len(jobs):
        skipped = len(jobs) - len(todo)
        print(
            f"harmony: note: skipped {skipped} of {len(jobs)} already harmonized (--overwrite redoes them)",
            file=sys.stderr,
        )
    for job in tqdm(todo, desc="harmonizing", unit="image", disable=not folder_mode, file=sys.stderr):
        run_job(model, job, args.lut_size)
    if not folder_mode:
        print(f"wrote {jobs[0].output}")
    else:
        print(f"wrote {len(todo)} images to {args.output}")
    return 0
