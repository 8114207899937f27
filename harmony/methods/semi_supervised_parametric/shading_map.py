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


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    # Convolution then BatchNorm as one Sequential, so the names are the release's ``<name>.0``/``<name>.1``.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ReleasedShadingUNet(nn.Module):
    """The shading network of the authors' release (``adobe/PIH`` ``ckpt_g39.pth``, its ``gainnet``).

    The release's network differs from the paper's description (and from :class:`ShadingUNet`): an
    encoder of 4×4 convolutions with BatchNorm whose strides 4, 4, 2, 4, 2, 2 take a 512×512 input to
    128, 32, 16, 4, 2 and 1 pixels, a decoder of three 3×3 convolutions climbing back to the 16×16 level
    (each output added to the encoder feature of its size), a bicubic upsampling of that 16×16 map of
    ``8·width`` channels to the input resolution and one 3×3 convolution there to a single channel,
    bounded to ``[min_gain, 1]`` by ``sigmoid·(1 − min_gain) + min_gain``. The attribute names are the
    release's, so its ``gainnet.<name>`` weights load as ``shading_net.<name>`` unchanged.

    Args:
        in_channels: Channels of the input stack: composite, background, mask and the curve output (10).
        width: Channels of the first convolution (32 in the release); every level is a multiple of it.
        min_gain: Lower bound of the gain: the release infers with 0.6 (and trained with 0.5).
    """

    min_input_size = 438
    """The smallest input side the encoder's strides leave a 1×1 bottleneck for (the release uses 512)."""

    def __init__(self, in_channels: int = 10, width: int = 32, min_gain: float = 0.6) -> None:
        if not 0.0 <= min_gain < 1.0:
            raise ValueError(f"min_gain must be in [0, 1), got {min_gain}")
        super().__init__()
        self.in_channels = in_channels
        self.min_gain = min_gain
        self.conv0 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv1 = _conv_bn(width, 2 * width, 4, stride=4)
        self.conv2 = _conv_bn(2 * width, 4 * width, 4, stride=4)
        self.conv3 = _conv_bn(4 * width, 8 * width, 4, stride=2)
        self.conv3_1 = _conv_bn(8 * width, 16 * width, 4, stride=4)
        self.conv3_2 = _conv_bn(16 * width, 32 * width, 4, stride=2)
        self.conv3_3 = _conv_bn(32 * width, 64 * width, 4, stride=2)
        self.conv4_1 = _conv_bn(64 * width, 32 * width, 3, stride=1)
        self.conv4_2 = _conv_bn(32 * width, 16 * width, 3, stride=1)
        self.conv4_3 = _conv_bn(16 * width, 8 * width, 3, stride=1)
        self.conv_only = nn.Conv2d(8 * width, 1, 3, padding=1)
        # The release also holds the layers of its network's other decoder variants, which this one never
        # runs; they are kept, untouched by forward, only so the released state dict loads strictly.
        self.conv4 = _conv_bn(8 * width, 4 * width, 3, stride=1)
        self.conv5 = _conv_bn(4 * width, 2 * width, 3, stride=1)
        self.conv6 = _conv_bn(2 * width, width, 3, stride=1)
        self.conv7 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.conv8 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.conv9 = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predict the ``B×1×H×W`` gain in ``[min_gain, 1]`` at the input's resolution."""
        if min(inputs.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"input size {tuple(inputs.shape[-2:])} is below the {self.min_input_size} px it needs"
            )
        full = F.relu(self.conv0(inputs))
        skips = []
        features = full
        for layer in (self.conv1, self.conv2, self.conv3, self.conv3_1, self.conv3_2, self.conv3_3):
            features = F.relu(layer(features))
            skips.append(features)
        skips.pop()
        for layer in (self.conv4_1, self.conv4_2, self.conv4_3):
            skip = skips.pop()
            upsampled = F.interpolate(features, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            features = F.relu(layer(upsampled)) + skip
        features = F.interpolate(features, size=full.shape[-2:], mode="bicubic", align_corners=False)
        raw = self.conv_only(features)
        return torch.sigmoid(raw.float()) * (1.0 - self.min_gain) + self.min_gain
