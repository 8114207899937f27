"""``harmony export``: a parametric checkpoint's networks as an ONNX file, checked against PyTorch.

``harmony export --checkpoint model.ckpt --format onnx`` writes ``model.onnx`` (``--output`` to choose):
the SemiSupervisedParametric networks at their input resolution, any batch size. ``harmony harmonize
--checkpoint model.onnx`` and ``harmony.load("model.onnx")`` then run it with ONNX Runtime, without
torch. After writing, the export is run once beside the checkpoint on the same inputs and the largest
difference of the curves and the shading gain is printed; an export that differs by more than
``--tolerance`` is not kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harmony.commands.arguments import ToolArgumentParser
from harmony.data.io import atomic_path
from harmony.errors import HarmonyInputError

if TYPE_CHECKING:
    from harmony.methods.semi_supervised_parametric import SemiSupervisedParametric

FORMATS = ("onnx",)


def build_parser() -> ToolArgumentParser:
    """The command's argument parser."""
    parser = ToolArgumentParser(prog="harmony export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="a SemiSupervisedParametric checkpoint"
    )
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="the export format (default: onnx)")
    parser.add_argument(
        "--output", type=Path, help="the file to write (default: the checkpoint's name, .onnx)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest difference from PyTorch's curves and gain accepted (default: 1e-4)",
    )
    return parser


def largest_differences(
    model: SemiSupervisedParametric, exported: Path, batch: int = 2
) -> tuple[float, float]:
    """The largest absolute differences (curves, gain) between ``model`` and its export on random inputs."""
    import torch

    from harmony.methods.semi_supervised_parametric.onnx_runtime import OnnxParametricHarmonizer

    size = model.low_resolution
    generator = torch.Generator().manual_seed(0)
    composite = torch.rand(batch, 3, size, size, generator=generator)
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 5 : 4 * size // 5] = 1
    with torch.no_grad():
        curves, gain = model.predict_parameters(composite, mask)
    outputs = OnnxParametricHarmonizer(exported, "cpu").session.run(
        None, {"composite": composite.numpy(), "mask": mask.numpy()}
    )
    curve_difference = float(np.abs(outputs[0] - curves.numpy()).max())
    gain_difference = 0.0 if gain is None else float(np.abs(outputs[1] - gain.numpy()).max())
    return curve_difference, gain_difference


def main(argv: list[str] | None = None) -> int:
    """Run ``harmony export``; returns the exit status (user errors raise ``HarmonyInputError``)."""
    args = build_parser().parse_args(argv)
    output = args.output or args.checkpoint.with_suffix(".onnx")
    if output.suffix.lower() != ".onnx":
        raise HarmonyInputError(output, "an ONNX export's name ends in .onnx")
    if output.resolve() == args.checkpoint.resolve():
        raise HarmonyInputError(output, "would overwrite the checkpoint")

    import harmony.methods.semi_supervised_parametric as parametric
    from harmony.commands.checkpoints import load_checkpoint_model
    from harmony.commands.harmonize import resolve_device
    from harmony.methods.base import HarmonizationModule
    from harmony.methods.semi_supervised_parametric.onnx_export import export_onnx

    model = load_checkpoint_model(
        args.checkpoint, HarmonizationModule, "a harmony method", resolve_device("cpu")
    )
    if not isinstance(model, parametric.SemiSupervisedParametric):
        raise HarmonyInputError(
            args.checkpoint, f"only parametric models export to ONNX, not {type(model).__name__}"
        )
    with atomic_path(output) as temporary:
        export_onnx(model, temporary)
        curves, gain = largest_differences(model, temporary)
        if max(curves, gain) > args.tolerance:
            raise HarmonyInputError(
                output,
                f"the export differs from PyTorch by {max(curves, gain):.2e} "
                f"(> --tolerance {args.tolerance:g}); nothing written",
            )
    print(
        f"wrote {output}: ONNX Runtime vs PyTorch, largest difference {curves:.1e} (curves), "
        f"{gain:.1e} (gain)"
    )
    return 0
