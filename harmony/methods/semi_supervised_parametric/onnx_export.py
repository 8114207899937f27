"""The parametric model's networks as one ONNX file (``harmony export --format onnx``).

The file holds what runs at the networks' resolution: from the ``B×3×L×L`` composite and ``B×1×L×L``
mask (the :func:`~.any_resolution.downsample` copies) to the ``B×3×K`` curves and, with a shading net,
the ``B×1×l×l`` gain; the batch size is free. Downsampling and the full-resolution application stay
outside, in :mod:`.any_resolution`, so ONNX Runtime harmonizes any size without torch
(:class:`~.onnx_runtime.OnnxParametricHarmonizer`). The file's metadata says how to use it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

import harmony
from harmony.methods.semi_supervised_parametric.onnx_runtime import ONNX_FORMAT
from harmony.methods.semi_supervised_parametric.semi_supervised_parametric import SemiSupervisedParametric

OPSET = 18


class ParametricNetworks(nn.Module):
    """The exported graph: :meth:`SemiSupervisedParametric.predict_parameters` at the networks' size.

    Args:
        model: The parametric model whose networks (and input stack: background, shading input) are kept.
    """

    def __init__(self, model: SemiSupervisedParametric) -> None:
        super().__init__()
        self.model = model

    def forward(self, composite: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``B×3×K`` curves (and the ``B×1×l×l`` gain) from the ``B×3×L×L`` composite and mask."""
        curves, gain = self.model.predict_parameters(composite, mask)
        return (curves,) if gain is None else (curves, gain)


def export_onnx(model: SemiSupervisedParametric, path: Path) -> None:
    """Write ``model``'s networks to ``path`` as a self-contained ONNX file with a dynamic batch size.

    Args:
        model: A parametric model (its weights are read; it is left in eval mode).
        path: The ``.onnx`` file to write (the caller makes it appear atomically).
    """
    model = model.cpu().eval()
    size = model.low_resolution
    composite = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    batch = torch.export.Dim("batch")
    has_shading = model.shading_net is not None
    with warnings.catch_warnings():
        # The exporter warns about its own internals (deprecated submodules, dynamic-shape hints).
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            ParametricNetworks(model),
            (composite, mask),
            input_names=["composite", "mask"],
            output_names=["curves", "gain"] if has_shading else ["curves"],
            dynamic_shapes=({0: batch}, {0: batch}),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    with torch.no_grad():
        curves, _ = model.predict_parameters(composite, mask)
    program.model.metadata_props.update(
        {
            "harmony.format": ONNX_FORMAT,
            "harmony.version": harmony.__version__,
            "low_resolution": str(size),
            "num_knots": str(curves.shape[-1]),
            "shading": "1" if has_shading else "0",
        }
    )
    program.save(path, external_data=False)
