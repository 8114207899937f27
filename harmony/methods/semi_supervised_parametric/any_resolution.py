"""Any-resolution use of the parametric model, in NumPy and Pillow only (no torch import).

The networks see a small square copy of the composite (Sec. 3.1); their curves and shading map then
apply to the image at its own resolution. Everything here except the networks themselves: the
antialiased downsampling they read, the full-resolution application with the background kept bit for
bit, and the exports (``.cube`` LUT, curves JSON). Both runtimes share it: PyTorch
(:class:`~.SemiSupervisedParametric`) and ONNX Runtime (:class:`~.onnx_runtime.OnnxParametricHarmonizer`),
so an exported model harmonizes exactly like its checkpoint up to the networks' own rounding, and
``harmony harmonize`` from an ``.onnx`` file never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

APPLY_BAND_ROWS = 256
"""Rows :func:`apply_adjustments` processes at a time."""

DOWNSAMPLE_BAND_ROWS = 512
"""Rows :func:`downsample` converts to float at a time."""


def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """One channel resized with Pillow's antialiased bilinear filter, in float32."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None))


def downsample(image: np.ndarray, size: int, scale: float) -> np.ndarray:
    """An ``H×W×C`` array as a ``C×size×size`` float32 array divided by ``scale``: what the networks read.

    Antialiased bilinear, as the networks saw it in training (``F.interpolate(..., antialias=True)``,
    itself a port of Pillow's resampling): equal to it within 3e-7. The filter is separable, so the width
    is reduced a band of rows at a time and the height once on the narrow result; the full-resolution
    image is never held in float (at 12000×12000 that would be 1.7 GB).
    """
    height, width, channels = image.shape
    if (height, width) == (size, size):
        return np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32) / np.float32(scale)
    small = np.empty((channels, size, size), dtype=np.float32)
    for channel in range(channels):
        narrow = np.concatenate(
            [
                _resize_plane(image[top : top + DOWNSAMPLE_BAND_ROWS, :, channel], size, band_rows)
                for top in range(0, height, DOWNSAMPLE_BAND_ROWS)
                for band_rows in [min(DOWNSAMPLE_BAND_ROWS, height - top)]
            ]
        )
        small[channel] = _resize_plane(narrow, size, size)
    return small / np.float32(scale)


def network_inputs(images: list[tuple[np.ndarray, np.ndarray]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The networks' batch of ``(composite, mask)`` pairs: ``N×3×size×size`` and ``N×1×size×size``.

    Composites are ``H×W×3`` ``uint8`` (divided by 255), masks ``H×W`` soft masks in ``[0, 1]``, any sizes;
    each is downsampled with :func:`downsample`.
    """
    composites = np.stack([downsample(composite, size, 255.0) for composite, _ in images])
    masks = np.stack([downsample(mask[..., None], size, 1.0) for _, mask in images])
    return composites, masks


def _bilinear_taps(output_size: int, input_size: int, positions: np.ndarray) -> tuple[np.ndarray, ...]:
    """Source indices and weight of bilinear upsampling (``align_corners=False``) at output ``positions``.

    The same arithmetic as ``F.interpolate(mode="bilinear")``: source ``(y + ½)·h/H − ½`` clamped at 0.
    """
    scale = np.float32(input_size) / np.float32(output_size)
    source = np.maximum(scale * (positions.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    lower = np.minimum(source.astype(np.int64), input_size - 1)
    upper = np.minimum(lower + 1, input_size - 1)
    return lower, upper, (source - lower).astype(np.float32)


@dataclass
class ParametricAdjustments:
    """The parametric output for one image: what ``harmony harmonize`` applies and exports.

    Args:
        curves: ``3×K`` float32 curve values at the knots ``k/(K−1)`` (red, green, blue).
        gain: ``h×w`` float32 shading gain at the network's resolution, or ``None`` without a shading map.
    """

    curves: np.ndarray
    gain: np.ndarray | None

    def gain_rows(self, height: int, width: int, rows: slice) -> np.ndarray | None:
        """Rows ``rows`` of the gain bilinearly upsampled to ``height×width`` (``len(rows)×W`` float32).

        Only the rows asked for are made, so a huge image's map is never held whole. Equal to
        ``F.interpolate(gain, (height, width), mode="bilinear")`` within 1e-6.
        """
        if self.gain is None:
            return None
        small_height, small_width = self.gain.shape
        left, right, across = _bilinear_taps(width, small_width, np.arange(width))
        columns = (1 - across) * self.gain[:, left] + across * self.gain[:, right]
        top, bottom, down = _bilinear_taps(height, small_height, np.arange(rows.start, rows.stop))
        return (1 - down)[:, None] * columns[top] + down[:, None] * columns[bottom]

    def gain_at(self, height: int, width: int) -> np.ndarray | None:
        """The whole gain map at ``height×width`` (``H×W`` float32), if any."""
        return self.gain_rows(height, width, slice(0, height))


def curve_values_at(curves: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """``3×K`` piecewise-linear curves (knots ``k/(K−1)``) evaluated at ``inputs``: ``3×len(inputs)``."""
    knots = np.linspace(0.0, 1.0, curves.shape[-1])
    return np.stack([np.interp(inputs, knots, curve) for curve in np.asarray(curves, dtype=np.float64)])


def curves_to_uint8_table(curves: np.ndarray) -> np.ndarray:
    """Evaluate ``3×K`` curves at the 256 values an 8-bit channel can take: a ``3×256`` float32 table."""
    return curve_values_at(curves, np.arange(256) / 255.0).astype(np.float32)


def apply_adjustments(
    composite: np.ndarray, mask: np.ndarray, adjustments: ParametricAdjustments, in_place: bool = False
) -> np.ndarray:
    """Apply curves and shading to a full-resolution ``uint8`` image; pixels with mask 0 are kept exactly.

    Only the mask's bounding box is processed. The curves are evaluated once for the 256 levels of each
    channel and looked up per pixel, so the cost is a table lookup and a few multiply-adds per foreground
    pixel at any resolution. ``in_place`` writes the result into ``composite`` itself (one image-sized
    buffer fewer, for huge images whose composite is not needed afterwards).
    """
    output = composite if in_place else composite.copy()
    foreground = mask > 0
    rows, columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    del foreground
    if rows.size == 0:
        return output
    height, width = composite.shape[:2]
    table = curves_to_uint8_table(adjustments.curves)
    left, right = columns[0], columns[-1] + 1
    # A band of rows at a time: the float temporaries stay a few MB whatever the image's size.
    for top in range(rows[0], rows[-1] + 1, APPLY_BAND_ROWS):
        band = slice(top, min(top + APPLY_BAND_ROWS, rows[-1] + 1))
        crop = composite[band, left:right]
        alpha = np.asarray(mask[band, left:right], dtype=np.float32)[..., None]
        blended = np.stack([table[c][crop[..., c]] for c in range(3)], axis=-1)
        gain = adjustments.gain_rows(height, width, band)
        if gain is not None:
            blended *= gain[:, left:right, None]
        blended *= 255.0
        original = crop.astype(np.float32)
        blended -= original
        blended *= alpha
        blended += original + 0.5
        np.clip(blended, 0, 255, out=blended)
        output[band, left:right] = np.where(alpha > 0, blended.astype(np.uint8), crop)
    return output


def shading_image(adjustments: ParametricAdjustments, mask: np.ndarray) -> np.ndarray | None:
    """The shading multiplier as an 8-bit grayscale image (value/255 = gain, 255 outside the mask)."""
    gain = adjustments.gain_at(*mask.shape)
    if gain is None:
        return None
    return np.clip((gain * mask + (1.0 - mask)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def lut_size_is_exact(lut_size: int, num_knots: int) -> bool:
    """Whether a LUT grid of ``lut_size`` points contains every knot (then trilinear lookup is exact)."""
    return lut_size >= 2 and (lut_size - 1) % (num_knots - 1) == 0


def curves_to_cube(curves: Any, lut_size: int | None = None, title: str = "harmony curves") -> str:
    """Write curves as the text of an Adobe/Resolve ``.cube`` 3D LUT.

    Because the curves act on each channel separately and are linear between knots, trilinear
    interpolation of a LUT whose grid contains the knots reproduces them exactly.

    Args:
        curves: ``3×K`` output values at the knots (an array or a tensor).
        lut_size: Points per axis; must satisfy ``(lut_size − 1) % (K − 1) == 0`` (default ``K``).
        title: The LUT's ``TITLE``.

    Returns:
        The ``.cube`` file's text (red varies fastest, as the format prescribes).
    """
    values = np.asarray(curves, dtype=np.float64)
    num_knots = values.shape[-1]
    lut_size = num_knots if lut_size is None else lut_size
    if not lut_size_is_exact(lut_size, num_knots):
        raise ValueError(f"a {lut_size}-point LUT does not contain the {num_knots} curve knots")
    per_channel = curve_values_at(values, np.linspace(0.0, 1.0, lut_size))
    red, green, blue = np.meshgrid(per_channel[0], per_channel[1], per_channel[2], indexing="ij")
    # .cube order: red index fastest, then green, then blue.
    table = np.stack([red, green, blue], axis=-1).transpose(2, 1, 0, 3).reshape(-1, 3)
    lines = [
        f'TITLE "{title}"',
        f"LUT_3D_SIZE {lut_size}",
        "DOMAIN_MIN 0.0 0.0 0.0",
        "DOMAIN_MAX 1.0 1.0 1.0",
    ]
    lines += [f"{r:.6f} {g:.6f} {b:.6f}" for r, g, b in np.clip(table, 0.0, 1.0)]
    return "\n".join(lines) + "\n"


def curves_to_json(curves: Any) -> dict[str, Any]:
    """``3×K`` curves (an array or a tensor) as JSON-ready control points (``x`` fixed, ``y`` predicted)."""
    values = np.asarray(curves, dtype=np.float64)
    knots = np.linspace(0.0, 1.0, values.shape[-1])
    return {
        "format": "harmony.rgb_curves/1",
        "interpolation": "piecewise-linear",
        "x": [round(float(x), 6) for x in knots],
        "red": [round(float(y), 6) for y in values[0]],
        "green": [round(float(y), 6) for y in values[1]],
        "blue": [round(float(y), 6) for y in values[2]],
    }
