"""Filling the region an object leaves behind: OpenCV's inpainting or LaMa, behind one protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch

from harmony.errors import HarmonyInputError


class Inpainter(Protocol):
    """Fills the masked pixels of an image."""

    cache_key: str

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` (``H×W×3`` ``uint8``) where ``hole`` (``H×W`` bool) is set."""


class OpenCVInpainter:
    """OpenCV's fast-marching (Telea) or Navier-Stokes inpainting: no weights needed.

    Args:
        radius: Neighbourhood radius in pixels.
        method: ``telea`` or ``ns``.
    """

    def __init__(self, radius: int = 5, method: str = "telea") -> None:
        self.radius = radius
        self.flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
        self.cache_key = f"opencv-{method}-r{radius}"

    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` where ``hole`` is set."""
        return cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, self.radius, self.flag)


class LamaInpainter:
    """LaMa (Suvorov et al. 2022), the paper's inpainter, from a TorchScript export.

    The model is called as ``model(image, mask)`` with ``1×3×H×W`` RGB in ``[0, 1]`` and a ``1×1×H×W``
    mask (1 = hole), sides padded to multiples of 8, and returns ``1×3×H×W`` RGB in ``[0, 1]`` — the
    interface of the widely shared ``big-lama.pt`` export. Loaded on first use.

    Args:
        model_path: The TorchScript file.
        device: Where to run it.
    """

    def __init__(self, model_path: str | Path, device: str = "cpu") -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise HarmonyInputError(self.model_path, "LaMa TorchScript model not found")
        self.device = device
        stat = self.model_path.stat()
        self.cache_key = f"lama-{self.model_path.name}-{stat.st_size}-{stat.st_mtime_ns}"
        self._model: torch.jit.ScriptModule | None = None

    @torch.no_grad()
    def __call__(self, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """Inpaint ``image`` where ``hole`` is set."""
        if self._model is None:
            self._model = torch.jit.load(str(self.model_path), map_location=self.device).eval()
        height, width = hole.shape
        pad_h, pad_w = -height % 8, -width % 8
        padded_image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        padded_hole = np.pad(hole, ((0, pad_h), (0, pad_w)), mode="symmetric")
        x = torch.from_numpy(padded_image).permute(2, 0, 1)[None].float().div(255).to(self.device)
        m = torch.from_numpy(padded_hole.astype(np.float32))[None, None].to(self.device)
        output = self._model(x, m)[0, :, :height, :width].permute(1, 2, 0).clamp(0, 1).mul(255).round()
        filled = output.byte().cpu().numpy()
        return np.where(hole[..., None], filled, image)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of ``mask >= 0.5`` by a disc of radius ``pixels``."""
    binary = (mask >= 0.5).astype(np.uint8)
    if pixels <= 0:
        return binary.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(binary, kernel).astype(bool)
