"""Harmonizers that need no training: rows of every results table."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from skimage.exposure import match_histograms

from harmony.data import types as keys
from harmony.data.composites import reinhard_transfer
from harmony.methods.base import Batch, HarmonizationModule


class Composite(HarmonizationModule):
    """The unharmonized input itself: the lower bound every method must beat.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Working size for ``harmony harmonize`` (irrelevant: the input is returned).
    """

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Return the composite unchanged."""
        return batch[keys.COMPOSITE]


class ForegroundTransfer(HarmonizationModule):
    """Base of the baselines that recompute each image's foreground from that image's background.

    :meth:`harmonize` hands each image's foreground pixels (``mask >= 0.5``) and background pixels to
    :meth:`transfer` and puts its result, clipped to ``[0, 1]``, in place of the foreground; every
    background pixel is kept. An image with no foreground or no background pixels has nothing to match
    and is returned unchanged.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Working size for ``harmony harmonize``.
    """

    @abstractmethod
    def transfer(self, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
        """New foreground pixels matched to the background pixels.

        Args:
            foreground: ``N×3`` ``float32`` RGB in ``[0, 1]``: one image's foreground pixels.
            background: ``M×3`` ``float32`` RGB in ``[0, 1]``: the same image's background pixels.

        Returns:
            ``N×3`` RGB pixels.
        """

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Replace each image's foreground by :meth:`transfer` of its foreground and background pixels."""
        composite, mask = batch[keys.COMPOSITE].float(), batch[keys.MASK] >= 0.5
        output = composite.clone()
        for index in range(composite.shape[0]):
            image = composite[index].permute(1, 2, 0).cpu().numpy()
            region = mask[index, 0].cpu().numpy()
            if region.all() or not region.any():
                continue
            result = image.copy()
            result[region] = self.transfer(image[region], image[~region])
            output[index] = torch.from_numpy(np.clip(result, 0, 1)).permute(2, 0, 1).to(composite)
        return output


class ReinhardLabTransfer(ForegroundTransfer):
    """Reinhard et al. (2001) colour transfer: match the foreground's Lab mean and std to the background's.

    Each image's foreground pixels get the background pixels' per-channel CIELAB mean and standard
    deviation (:func:`~harmony.data.composites.reinhard_transfer` at full strength).
    """

    def transfer(self, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Shift and scale each Lab channel of the foreground to the background's statistics."""
        return reinhard_transfer(foreground, background)


class HistogramMatching(ForegroundTransfer):
    """Per-channel RGB histogram matching of the foreground to the background (scikit-image)."""

    def transfer(self, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
        """Map each foreground channel's CDF onto the background's."""
        return match_histograms(foreground[:, None], background[:, None], channel_axis=-1)[:, 0]
