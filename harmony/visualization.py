"""Labelled picture grids (composite | harmonized | real), for TensorBoard and ``harmony quickstart``.

NumPy and PIL only: :class:`~harmony.callbacks.ImageGridLogger` and :func:`harmony.commands.quickstart.
picture_grid` convert their tensors, and nothing here needs torch.

Layout of :func:`labelled_grid`, for tiles of ``h×w``, ``n`` columns, a band height ``b``
(:func:`band_height`) and a separator ``s``: a header band ``b`` high with the column labels, then per row
a separator line, the row's label band (``b`` high, only with row labels) and the row's tiles, separated
by ``s``-wide vertical lines. The grid is ``n·w + (n − 1)·s`` wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLUMN_LABELS = ("composite", "harmonized", "real")
"""The columns of a harmonization grid, in order."""

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
SEPARATOR = (160, 160, 160)
_PADDING = 3  # pixels between a label and the edge of its cell


def band_height(font_size: int) -> int:
    """Height in pixels of a header or row-label band for labels of ``font_size``."""
    # The default font's ascenders and descenders span about 1.25 × its size; the rest is margin.
    return 2 * font_size


def default_font_size(tile_width: int) -> int:
    """The label size :func:`labelled_grid` uses for tiles ``tile_width`` wide (10 to 20 pixels)."""
    return min(20, max(10, tile_width // 6))


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled scalable font: no font file to find on the machine.
    return ImageFont.load_default(size=size)


def _label(text: str, width: int, height: int, size: int, centred: bool) -> Image.Image:
    """A ``width×height`` cell with ``text`` on it, in the font of ``size`` or smaller (down to 6).

    Drawn on a cell of its own so that a label too long even at size 6 is cut at the cell's edge instead
    of running into the next one.
    """
    cell = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(cell)
    while size > 6 and draw.textlength(text, font=_font(size)) > width - 2 * _PADDING:
        size -= 1
    position, anchor = ((width / 2, height / 2), "mm") if centred else ((_PADDING, height / 2), "lm")
    draw.text(position, text, font=_font(size), fill=INK, anchor=anchor)
    return cell


def labelled_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_labels: Sequence[str] = COLUMN_LABELS,
    row_labels: Sequence[str] | None = None,
    font_size: int | None = None,
    separator: int = 2,
) -> np.ndarray:
    """A grid of images with a header band naming the columns and, optionally, a label above each row.

    A label too long for its cell is drawn smaller until it fits (down to 6 pixels, then cut at the
    cell's edge); the tiles are copied pixel for pixel (module docstring: where each one lies).

    Args:
        rows: One sequence of ``H×W×3`` ``uint8`` images per row, one image per column, all of one size.
        column_labels: The header's labels, one per column.
        row_labels: A label per row (e.g. the sample's name and fMSE), or ``None`` for no row bands.
        font_size: Label size in pixels (``None``: :func:`default_font_size` of the tile width).
        separator: Width in pixels of the grey lines between cells.

    Returns:
        The ``H×W×3`` ``uint8`` grid.

    Raises:
        ValueError: No rows, a row without one image per column, images of other sizes or not
            ``uint8`` RGB, or not one row label per row.
    """
    if not rows:
        raise ValueError("a grid needs at least one row")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"{len(row_labels)} row labels for {len(rows)} rows")
    first = np.asarray(rows[0][0])
    if first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"images must be H×W×3 (got {first.shape})")
    for row in rows:
        if len(row) != len(column_labels):
            raise ValueError(f"a row has {len(row)} images for {len(column_labels)} columns")
        for image in row:
            if image.shape != first.shape or image.dtype != np.uint8:
                raise ValueError(f"images must all be uint8 {first.shape} (got {image.dtype} {image.shape})")

    height, width = first.shape[:2]
    columns = len(column_labels)
    font_size = font_size or default_font_size(width)
    band = band_height(font_size)
    label_band = band if row_labels is not None else 0
    row_pitch = separator + label_band + height
    grid_width = columns * width + (columns - 1) * separator
    canvas = Image.new("RGB", (grid_width, band + len(rows) * row_pitch), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for column, label in enumerate(column_labels):
        canvas.paste(_label(label, width, band, font_size, centred=True), (column * (width + separator), 0))
    for index, row in enumerate(rows):
        top = band + index * row_pitch
        if separator:
            draw.rectangle((0, top, grid_width - 1, top + separator - 1), fill=SEPARATOR)
        if row_labels is not None:
            label = _label(row_labels[index], grid_width, label_band, font_size, centred=False)
            canvas.paste(label, (0, top + separator))
        tiles_top = top + separator + label_band
        for column, image in enumerate(row):
            left = column * (width + separator)
            canvas.paste(Image.fromarray(image), (left, tiles_top))
            if column and separator:
                line = (left - separator, tiles_top, left - 1, tiles_top + height - 1)
                draw.rectangle(line, fill=SEPARATOR)
    return np.asarray(canvas)


def foreground_mse(image: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """The fMSE of one ``uint8`` image against its target, as the evaluator computes it (NaN: empty mask).

    Args:
        image: ``H×W×3`` ``uint8`` image.
        target: ``H×W×3`` ``uint8`` ground truth.
        mask: ``H×W`` foreground mask (foreground where ``≥ 0.5``).
    """
    foreground = np.asarray(mask) >= 0.5
    pixels = int(foreground.sum())
    if pixels == 0:
        return math.nan
    error = (image.astype(np.float64) - target.astype(np.float64)) ** 2
    return float(error[foreground].sum() / (3 * pixels))


def harmonization_grid(
    composite: np.ndarray,
    harmonized: np.ndarray,
    target: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    column_labels: Sequence[str] = COLUMN_LABELS,
    font_size: int | None = None,
) -> np.ndarray:
    """The labelled composite | harmonized | real grid of a batch, one row per sample.

    Each row is labelled with the sample's name and, given a target and a mask, the fMSE of the
    composite and of the harmonized image against the real one (``fMSE 812.3 -> 95.1``), at the
    images' resolution; without a target the grid has no third column.

    Args:
        composite: ``B×H×W×3`` ``uint8`` composites.
        harmonized: ``B×H×W×3`` ``uint8`` harmonized images.
        target: ``B×H×W×3`` ``uint8`` real images, or ``None``.
        mask: ``B×H×W`` foreground masks (for the fMSE), or ``None``.
        names: The samples' names, or ``None``.
        column_labels: The three columns' labels (those of a model with other roles, e.g. the inverse
            model's real | generated | composite).
        font_size: Label size (see :func:`labelled_grid`).

    Returns:
        The ``H×W×3`` ``uint8`` grid.
    """
    count = len(composite)
    labels = [[] for _ in range(count)] if names is None else [[name] for name in names[:count]]
    if target is not None and mask is not None:
        for index in range(count):
            before = foreground_mse(composite[index], target[index], mask[index])
            after = foreground_mse(harmonized[index], target[index], mask[index])
            # Pillow's bundled font has no arrow glyph.
            labels[index].append(f"fMSE {before:.1f} -> {after:.1f}")
    images = [composite, harmonized] if target is None else [composite, harmonized, target]
    rows = [[column[index] for column in images] for index in range(count)]
    row_labels = ["  ".join(label) for label in labels] if any(labels) else None
    return labelled_grid(rows, column_labels[: len(images)], row_labels, font_size=font_size)
