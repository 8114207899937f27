"""Harmonizers that need no training: rows of every results table."""

from __future__ import annotations

import kornia.color
import numpy as np
import torch
from skimage.exposure import match_histograms

from harmony.data import types as keys
from harmony.methods.base import Batch, HarmonizationModule, paste_background


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


class ReinhardLabTransfer(HarmonizationModule):
    """Reinhard et al. (2001) colour transfer: match the foreground's Lab mean and std to the background's.

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Working size for ``harmony harmonize``.
    """

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Shift and scale each Lab channel of the foreground to the background's statistics."""
        composite, mask = batch[keys.COMPOSITE].float(), batch[keys.MASK].float()
        lab = kornia.color.rgb_to_lab(composite)
        foreground, background = (mask >= 0.5).float(), (mask < 0.5).float()
        n_fg = foreground.sum(dim=(2, 3), keepdim=True)
        n_bg = background.sum(dim=(2, 3), keepdim=True)

        def stats(weights: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean = (lab * weights).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
            var = ((lab - mean) ** 2 * weights).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)
            return mean, var.sqrt()

        fg_mean, fg_std = stats(foreground, n_fg)
        bg_mean, bg_std = stats(background, n_bg)
        transferred = (lab - fg_mean) * (bg_std / fg_std.clamp_min(1e-3)) + bg_mean
        rgb = kornia.color.lab_to_rgb(transferred, clip=True)
        # With no foreground or no background there is nothing to match: keep the input.
        valid = ((n_fg > 0) & (n_bg > 0)).float()
        return paste_background(rgb * valid + composite * (1 - valid), composite, foreground)


class HistogramMatching(HarmonizationModule):
    """Per-channel RGB histogram matching of the foreground to the background (scikit-image).

    Args:
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``harmony predict`` writes ``<name>.png`` files.
        inference_size: Working size for ``harmony harmonize``.
    """

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Map each foreground channel's CDF onto the background's."""
        composite, mask = batch[keys.COMPOSITE].float(), batch[keys.MASK] >= 0.5
        output = composite.clone()
        for index in range(composite.shape[0]):
            image = composite[index].permute(1, 2, 0).cpu().numpy()
            region = mask[index, 0].cpu().numpy()
            if region.all() or not region.any():
                continue
            matched = match_histograms(image[region][:, None], image[~region][:, None], channel_axis=-1)
            result = image.copy()
            result[region] = matched[:, 0]
            output[index] = torch.from_numpy(np.clip(result, 0, 1)).permute(2, 0, 1).to(composite)
        return output
