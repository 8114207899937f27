"""Harmonizing with an exported parametric model through ONNX Runtime, without importing torch.

On a CPU this is the fastest way to run the parametric networks (``benchmarks/parametric_speed.py``),
and a process that never imports torch starts in a fraction of a second instead of seconds, which is
most of the time ``harmony harmonize`` takes on one photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harmony.errors import HarmonyInputError
from harmony.methods.semi_supervised_parametric.any_resolution import (
    ParametricAdjustments,
    apply_adjustments,
    network_inputs,
)

ONNX_FORMAT = "harmony.semi_supervised_parametric/1"
"""The ``harmony.format`` metadata value of an exported parametric model."""


class OnnxParametricHarmonizer:
    """A parametric model exported by ``harmony export``, run by ONNX Runtime.

    It has the any-resolution interface of :class:`~.SemiSupervisedParametric` (estimate, apply,
    harmonize an image).

    Args:
        path: The ``.onnx`` file.
        device: ``auto`` (ONNX Runtime's CUDA provider when that build is installed, else the CPU),
            ``cpu`` or ``cuda``.
        threads: Compute threads (default: ONNX Runtime's, one per physical core).

    Raises:
        HarmonyInputError: The file is missing, not an ONNX model, or not a harmony parametric export; or
            ``cuda`` is asked for without ONNX Runtime's CUDA provider.
    """

    output_postprocess = None

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise HarmonyInputError(path, "ONNX file not found")
        available = onnxruntime.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise HarmonyInputError(
                path, "--device cuda needs onnxruntime-gpu for an .onnx model (or use the checkpoint)"
            )
        providers = ["CPUExecutionProvider"]
        if device != "cpu" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - any file ORT cannot load is a user error here
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HarmonyInputError(path, f"not an ONNX model ({first})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        if metadata.get("harmony.format") != ONNX_FORMAT:
            raise HarmonyInputError(
                path, "not a harmony parametric model (write one with `harmony export --format onnx`)"
            )
        self.path = path
        self.low_resolution = int(metadata["low_resolution"])
        self.num_knots = int(metadata["num_knots"])
        self.has_shading_map = metadata["shading"] == "1"

    def estimate_batch(self, images: list[tuple[np.ndarray, np.ndarray]]) -> list[ParametricAdjustments]:
        """Predict the curves and shading maps of several images of any sizes in one network run.

        Args:
            images: ``(composite, mask)`` pairs: ``H×W×3`` ``uint8`` and ``H×W`` soft masks in ``[0, 1]``.
        """
        size = self.low_resolution
        composites, masks = network_inputs(images, size)
        outputs = self.session.run(None, {"composite": composites, "mask": masks})
        gains = outputs[1][:, 0] if self.has_shading_map else [None] * len(images)
        return [
            ParametricAdjustments(np.asarray(curves, np.float32), gain)
            for curves, gain in zip(outputs[0], gains, strict=True)
        ]

    def estimate_adjustments(self, composite: np.ndarray, mask: np.ndarray) -> ParametricAdjustments:
        """Predict the curves and shading map of one image of any size (see :meth:`estimate_batch`)."""
        return self.estimate_batch([(composite, mask)])[0]

    apply_adjustments = staticmethod(apply_adjustments)

    def harmonize_image(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Harmonize an image of any size: networks at ``low_resolution``, curves and shading at full size."""
        return apply_adjustments(composite, mask, self.estimate_adjustments(composite, mask))
