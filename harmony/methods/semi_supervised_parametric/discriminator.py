"""Discriminators for adversarial harmonization training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class UNetDiscriminatorSN(nn.Module):
    """A per-pixel U-Net discriminator with spectral normalisation (the Real-ESRGAN design).

    Three stride-2 stages go down to 1/8 resolution, three bilinear-upsampling stages come back with
    additive skip connections, and two more convolutions refine the features before a one-channel
    logit map at input resolution. Every convolution except the first and the last is spectrally
    normalised, which keeps the per-pixel classifier Lipschitz and the GAN training stable.

    Args:
        in_channels: Channels of the image to judge.
        base_channels: Width of the first stage (64 in Real-ESRGAN); stages use 1×, 2×, 4×, 8×.
        skip_connection: Add the encoder features to the decoder features at each resolution.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        c = base_channels
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(in_channels, c, 3, padding=1)
        self.down = nn.ModuleList(
            [
                spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1, bias=False))
                for a, b in ((c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c))
            ]
        )
        self.up = nn.ModuleList(
            [
                spectral_norm(nn.Conv2d(a, b, 3, padding=1, bias=False))
                for a, b in ((8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c))
            ]
        )
        self.refine = nn.Sequential(
            spectral_norm(nn.Conv2d(c, c, 3, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Conv2d(c, c, 3, padding=1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.to_logits = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel real/fake logits ``B×1×H×W`` for ``B×C×H×W`` images (H, W divisible by 8)."""
        features = F.leaky_relu(self.conv0(images), 0.2)
        skips = [features]
        for conv in self.down:
            features = F.leaky_relu(conv(features), 0.2)
            skips.append(features)
        skips.pop()
        for conv in self.up:
            skip = skips.pop()
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = F.leaky_relu(conv(features), 0.2)
            if self.skip_connection:
                features = features + skip
        return self.to_logits(self.refine(features))
