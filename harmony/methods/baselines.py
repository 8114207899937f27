"""Harmonizers that need no training: rows of every results table.

They work on the full-resolution image itself: ``harmony harmonize`` and ``harmony predict`` give the
composite back bit for bit (:class:`Composite`), or apply a colour transform estimated at
``inference_size`` to the full-resolution foreground (:class:`ForegroundTransfer`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from harmony.data import types as keys
from harmony.data.composites.appearance import ReinhardStatistics, apply_reinhard, reinhard_statistics
from harmony.data.io import read_mask, read_rgb
from harmony.methods.base import Batch, HarmonizationModule, blend_full_resolution, to_uint8

_UINT8_LEVELS = np.arange(256, dtype=np.float32) / 255
"""The 256 values an 8-bit channel holds, as the ``[0, 1]`` floats the data sets make of them."""


class FullResolutionBaseline(HarmonizationModule):
    """Base of the training-free methods, which harmonize the full-resolution image directly.

    ``harmony predict`` writes :meth:`harmonize_image` of each original composite file, so a prediction
    is exactly what ``harmony harmonize`` writes for that file, whatever the batch's resolution.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: The working size of :meth:`harmonize_image`.
    """

    def predict_original_resolution(self, batch: Batch) -> Iterator[np.ndarray]:
        """:meth:`harmonize_image` of each batch item's original composite and mask files."""
        for composite_path, mask_path in zip(batch[keys.COMPOSITE_PATH], batch[keys.MASK_PATH], strict=True):
            yield self.harmonize_image(read_rgb(composite_path), read_mask(mask_path))


class Composite(FullResolutionBaseline):
    """The unharmonized input itself: the lower bound every method must beat.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Unused: the input is returned at any size.
    """

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Return the composite unchanged."""
        return batch[keys.COMPOSITE]

    def harmonize_image(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return a copy of the composite, bit for bit (no working resolution involved)."""
        return composite.copy()


class ForegroundTransfer(FullResolutionBaseline):
    """Base of the baselines that recompute each image's foreground from that image's background.

    A method is split in two: :meth:`estimate` measures a colour transform on one image's foreground
    pixels (``mask >= 0.5``) and background pixels, and :meth:`apply` maps pixels through it. An image
    with no foreground or no background pixels has nothing to match and is returned unchanged.

    - :meth:`harmonize` (``harmony test``/``validate``) estimates and applies at the batch's resolution,
      putting the result, clipped to ``[0, 1]``, in place of the foreground; the background is kept.
    - :meth:`harmonize_image` (``harmony harmonize``, ``harmony predict``) estimates on the image brought
      to ``inference_size`` (:meth:`~HarmonizationModule.working_batch`), applies the transform to every
      full-resolution pixel the mask touches and blends the result in with the soft mask, so nothing is
      resampled and the background (mask 0) stays bit-identical.

    On an image already at ``inference_size`` with a binary mask, both give the same pixels.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Side of the image the transform is estimated on by :meth:`harmonize_image`.
    """

    @abstractmethod
    def estimate(self, foreground: np.ndarray, background: np.ndarray) -> Any:
        """The transform that matches one image's foreground to its background.

        Args:
            foreground: ``N×3`` ``float32`` RGB in ``[0, 1]``: the image's foreground pixels.
            background: ``M×3`` ``float32`` RGB in ``[0, 1]``: the same image's background pixels.

        Returns:
            The transform, as :meth:`apply` takes it.
        """

    @abstractmethod
    def apply(self, transform: Any, pixels: np.ndarray) -> np.ndarray:
        """Map pixels through a transform from :meth:`estimate`.

        Args:
            transform: From :meth:`estimate`.
            pixels: ``N×3`` ``float32`` RGB in ``[0, 1]``, at any resolution.

        Returns:
            ``N×3`` RGB pixels (clipped to ``[0, 1]`` by the caller).
        """

    def apply_uint8(self, transform: Any, pixels: np.ndarray) -> np.ndarray:
        """:meth:`apply` on 8-bit pixels, quantised back to 8 bits (round half up).

        Args:
            transform: From :meth:`estimate`.
            pixels: ``N×3`` ``uint8`` RGB.

        Returns:
            ``N×3`` ``uint8`` RGB.
        """
        changed = self.apply(transform, pixels.astype(np.float32) / 255)
        return to_uint8(torch.from_numpy(np.asarray(changed, dtype=np.float32))).numpy()

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Replace each image's foreground by :meth:`apply` of :meth:`estimate` at the batch's resolution."""
        composite, mask = batch[keys.COMPOSITE].float(), batch[keys.MASK] >= 0.5
        output = composite.clone()
        for index in range(composite.shape[0]):
            image = composite[index].permute(1, 2, 0).cpu().numpy()
            region = mask[index, 0].cpu().numpy()
            if region.all() or not region.any():
                continue
            foreground = image[region]
            result = image.copy()
            result[region] = self.apply(self.estimate(foreground, image[~region]), foreground)
            output[index] = torch.from_numpy(np.clip(result, 0, 1)).permute(2, 0, 1).to(composite)
        return output

    def estimate_image(self, composite: np.ndarray, mask: np.ndarray) -> Any | None:
        """The transform :meth:`harmonize_image` applies, estimated at ``inference_size``.

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite.
            mask: ``H×W`` soft mask in ``[0, 1]``.

        Returns:
            The transform, or ``None`` when the working-size mask has no foreground or no background.
        """
        batch = self.working_batch(composite, mask)
        image = batch[keys.COMPOSITE][0].permute(1, 2, 0).cpu().numpy()
        region = batch[keys.MASK][0, 0].cpu().numpy() >= 0.5
        if region.all() or not region.any():
            return None
        return self.estimate(image[region], image[~region])

    def apply_image(self, composite: np.ndarray, mask: np.ndarray, transform: Any) -> np.ndarray:
        """Apply a transform to the pixels the mask touches and blend them in with the soft mask.

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite, at any resolution.
            mask: ``H×W`` soft mask in ``[0, 1]``.
            transform: From :meth:`estimate`.

        Returns:
            The ``H×W×3`` ``uint8`` image; pixels whose mask is 0 are the composite's, bit for bit.
        """
        touched = mask > 0
        changed = composite.copy()
        changed[touched] = self.apply_uint8(transform, composite[touched])
        return blend_full_resolution(changed, composite, mask)

    @torch.no_grad()
    def harmonize_image(self, composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Estimate the transform at ``inference_size`` and apply it to the full-resolution foreground.

        Args:
            composite: ``H×W×3`` ``uint8`` RGB composite.
            mask: ``H×W`` soft mask in ``[0, 1]`` (1 = foreground).

        Returns:
            The harmonized ``H×W×3`` ``uint8`` image (the composite itself when there is nothing to match).
        """
        transform = self.estimate_image(composite, mask)
        if transform is None:
            return composite.copy()
        return self.apply_image(composite, mask, transform)


class ReinhardLabTransfer(ForegroundTransfer):
    """Reinhard et al. (2001) colour transfer: match the foreground's Lab mean and std to the background's.

    Each image's foreground pixels get the background pixels' per-channel CIELAB mean and standard
    deviation (:func:`~harmony.data.composites.reinhard_transfer` at full strength).
    """

    def estimate(self, foreground: np.ndarray, background: np.ndarray) -> ReinhardStatistics:
        """The Lab mean and std of the foreground and of the background."""
        return reinhard_statistics(foreground, background)

    def apply(self, transform: ReinhardStatistics, pixels: np.ndarray) -> np.ndarray:
        """Shift and scale each Lab channel from the foreground's statistics to the background's."""
        return apply_reinhard(pixels, transform)


class HistogramMapping(NamedTuple):
    """Per-channel piecewise-linear maps of :class:`HistogramMatching`.

    Channel ``c`` maps ``levels[c][i]`` (the distinct foreground values it was estimated on, ascending) to
    ``values[c][i]`` and interpolates linearly in between (constant beyond the ends).
    """

    levels: tuple[np.ndarray, ...]
    values: tuple[np.ndarray, ...]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """Map ``N×3`` pixels in ``[0, 1]`` channel by channel."""
        return np.stack(
            [np.interp(pixels[:, c], self.levels[c], self.values[c]) for c in range(3)], axis=-1
        ).astype(np.float32)

    def lookup_table(self) -> np.ndarray:
        """The map sampled at the 256 levels of an 8-bit channel: ``256×3`` ``float32`` in ``[0, 1]``."""
        return self(np.repeat(_UINT8_LEVELS[:, None], 3, axis=1))


def match_cumulative_histograms(source: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map each distinct source value to the reference value at the same quantile (one channel).

    The source value whose cumulative share is ``q`` goes to the reference's ``q``-quantile, interpolated
    between the reference's distinct values: scikit-image's ``match_histograms`` for float images.

    Args:
        source: ``N`` values.
        reference: ``M`` values.

    Returns:
        ``(levels, values)``: the source's distinct values, ascending, and where each goes.
    """
    levels, counts = np.unique(source, return_counts=True)
    reference_levels, reference_counts = np.unique(reference, return_counts=True)
    quantiles = np.cumsum(counts) / source.size
    reference_quantiles = np.cumsum(reference_counts) / reference.size
    return levels, np.interp(quantiles, reference_quantiles, reference_levels)


class HistogramMatching(ForegroundTransfer):
    """Per-channel RGB histogram matching of the foreground to the background.

    :meth:`estimate` maps each distinct foreground value of a channel onto the background's value at the
    same quantile (as scikit-image's ``match_histograms`` does); values it did not see are interpolated
    between their neighbours. At full resolution the map is a 256-entry lookup table per channel, indexed
    by the foreground's 8-bit values.
    """

    def estimate(self, foreground: np.ndarray, background: np.ndarray) -> HistogramMapping:
        """Each channel's map from the foreground's cumulative histogram to the background's."""
        maps = [match_cumulative_histograms(foreground[:, c], background[:, c]) for c in range(3)]
        return HistogramMapping(tuple(m[0] for m in maps), tuple(m[1] for m in maps))

    def apply(self, transform: HistogramMapping, pixels: np.ndarray) -> np.ndarray:
        """Map each channel's values through the histogram map."""
        return transform(pixels)

    def apply_uint8(self, transform: HistogramMapping, pixels: np.ndarray) -> np.ndarray:
        """Index the quantised 256-level lookup table with each channel's 8-bit values."""
        table = to_uint8(torch.from_numpy(transform.lookup_table())).numpy()
        return np.stack([table[pixels[:, c], c] for c in range(3)], axis=-1)
