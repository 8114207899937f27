"""The local shading map (stage t2): a smooth multiplicative gain predicted at low resolution."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by group normalisation and ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
        )


class ShadingUNet(nn.Module):
    """A U-Net predicting a low-frequency grayscale shading gain (Wang et al. 2023, Sec. 3.1, Eq. 1).

    The encoder halves the resolution at every level down to a few pixels, so the deepest features
    see the whole image (the paper's "large receptive field"). The decoder climbs back only to
    ``1/map_downsampling`` of the input (64×64 for the paper's 512×512 input): detail finer than that
    grid cannot be expressed. The map is upsampled bilinearly to the input resolution and corrected by
    a single convolution there (one channel in, one out, starting as the identity), then bounded to
    ``[min_gain, 1]`` by ``min_gain + (1 − min_gain)·sigmoid``.

    Args:
        in_channels: Channels of the input stack: composite, background, mask and the curve output
            (10), or 7 without the background.
        base_channels: Width of the first (full-resolution) level.
        channel_multipliers: Width of each encoder level as a multiple of ``base_channels``; every
            level after the first halves the resolution, so the input side must be divisible by
            ``2 ** (len(channel_multipliers) − 1)``.
        map_downsampling: The map is predicted at ``input size / map_downsampling`` (a power of two).
        correction_kernel_size: Kernel size of the correction convolution at input resolution.
        min_gain: Lower bound of the gain. The official code trains with 0.5 and infers with 0.6; a
            single value is used here so the map applied at inference is the one that was trained
            (weaken a map afterwards through the exported shading image if wanted).
        initial_gain: The uniform gain at initialisation (the output layer starts at zero weights),
            close to 1 so an untrained model starts near the identity without saturating the sigmoid.
    """

    def __init__(
        self,
        in_channels: int = 10,
        base_channels: int = 32,
        channel_multipliers: tuple[int, ...] = (1, 2, 4, 8, 16, 20, 24, 24),
        map_downsampling: int = 8,
        correction_kernel_size: int = 7,
        min_gain: float = 0.5,
        initial_gain: float = 0.95,
    ) -> None:
        levels = len(channel_multipliers)
        map_level = int(math.log2(map_downsampling))
        if 2**map_level != map_downsampling or not 0 <= map_level < levels:
            raise ValueError(
                f"map_downsampling must be a power of two below 2**{levels}, got {map_downsampling}"
            )
        if not 0.0 <= min_gain < initial_gain < 1.0:
            raise ValueError("need 0 <= min_gain < initial_gain < 1")
        super().__init__()
        self.in_channels = in_channels
        self.map_downsampling = map_downsampling
        self.min_gain = min_gain
        self.divisor = 2 ** (levels - 1)
        widths = [base_channels * m for m in channel_multipliers]
        self.encoder = nn.ModuleList(
            [ConvBlock(in_channels, widths[0])] + [ConvBlock(a, b) for a, b in itertools.pairwise(widths)]
        )
        self.decoder = nn.ModuleList(
            [
                ConvBlock(widths[level + 1] + widths[level], widths[level])
                for level in range(levels - 2, map_level - 1, -1)
            ]
        )
        self.to_map = nn.Conv2d(widths[map_level], 1, 1)
        nn.init.zeros_(self.to_map.weight)
        nn.init.constant_(self.to_map.bias, math.log((initial_gain - min_gain) / (1.0 - initial_gain)))
        self.correction = nn.Conv2d(
            1, 1, correction_kernel_size, padding=correction_kernel_size // 2, padding_mode="replicate"
        )
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        with torch.no_grad():
            self.correction.weight[0, 0, correction_kernel_size // 2, correction_kernel_size // 2] = 1.0

    def predict_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """The raw (pre-sigmoid) map at ``1/map_downsampling`` of the input resolution, ``B×1×h×w``."""
        if inputs.shape[-1] % self.divisor or inputs.shape[-2] % self.divisor:
            raise ValueError(f"input size {tuple(inputs.shape[-2:])} is not divisible by {self.divisor}")
        skips = []
        features = inputs
        for index, block in enumerate(self.encoder):
            if index:
                features = F.max_pool2d(features, 2)
            features = block(features)
            skips.append(features)
        skips.pop()
        for block in self.decoder:
            skip = skips.pop()
            features = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = block(torch.cat([features, skip], dim=1))
        return self.to_map(features)

    def map_to_gain(self, raw_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Upsample a raw map to ``size``, apply the correction convolution and bound it to a gain."""
        upsampled = F.interpolate(raw_map.float(), size=size, mode="bilinear", align_corners=False)
        corrected = self.correction(upsampled)
        return self.min_gain + (1.0 - self.min_gain) * torch.sigmoid(corrected.float())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predict the ``B×1×H×W`` gain in ``[min_gain, 1]`` at the input's resolution."""
        return self.map_to_gain(self.predict_map(inputs), inputs.shape[-2:])
