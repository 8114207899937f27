"""Training losses of latent-diffusion harmonization."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler


def foreground_weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_foreground: float = 0.2
) -> torch.Tensor:
    """Foreground-weighted MSE: the masked MSE divided by ``max(foreground fraction, min_foreground)``.

    Each sample's squared error is averaged over all its elements with the background zeroed, then
    divided by its foreground fraction (clamped below at ``min_foreground``), so a small foreground is
    weighted up to ``1 / min_foreground`` times; the batch mean is returned.

    Args:
        prediction: ``B×C×h×w`` model output.
        target: ``B×C×h×w`` training target.
        mask: ``B×1×h×w`` binary foreground mask on the same grid.
        min_foreground: ``A_min`` (0.2 in DiffHarmony and R2R); 1.0 gives the plain masked MSE.
    """
    mask = mask.to(prediction.dtype)
    squared = (prediction.float() - target.float()).pow(2) * mask
    fraction = mask.float().mean(dim=(1, 2, 3))
    return (squared.mean(dim=(1, 2, 3)) / fraction.clamp(min=min_foreground)).mean()


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {kind!r}")
