"""Mask-aware Adaptive Channel Attention (MACA, R2R paper Eq. 1–2).

At the end of each of the Harmony Controller's four encoder scales, MACA looks at the channels of the
foreground and of the background separately and lets an MLP decide, per channel, how the foreground's
features are scaled and shifted; the background's features pass through untouched.

For a feature map ``X`` and the mask ``M`` on its grid:

* ``C_f = GAP(conv_f(X·M))`` and ``C_b = GAP(conv_b(X·(1−M)))`` (1×1 convolutions without bias);
* ``[a, β] = MLP(cat[C_f, C_b])`` with ``MLP = Linear(2C→3C) → SiLU → Linear(3C→2C)``;
* ``Y = (X·α + β)·M + X·(1−M)`` with ``α = 1 + a``.

The paper writes ``X·α`` with ``α`` straight from the MLP; writing ``α = 1 + a`` with the MLP's last layer
zero-initialised (as the official code does) makes a fresh MACA the identity, so inserting it into a
pretrained encoder changes nothing until it trains. GAP is the plain global average over the whole map
(the paper's "Global Average Pooling"; the official code does the same); ``pooling="masked"`` averages over
each region instead, so a small foreground's statistics are not diluted.

Sizes: ``14·C² + 5·C`` parameters per MACA; at the SD-1.5 encoder widths 320/640/1280/1280 the four
hold 53.06M. That figure is the official code's (the paper gives no MACA size).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

Pooling = Literal["global", "masked"]


class MaskAwareChannelAttention(nn.Module):
    """One MACA: per-channel scale and shift of the foreground from foreground and background channels.

    Args:
        channels: Channels ``C`` of the feature map.
        pooling: ``global``: average over the whole map (paper, official code); ``masked``: average over
            the foreground and the background region each.
    """

    def __init__(self, channels: int, pooling: Pooling = "global") -> None:
        super().__init__()
        if pooling not in ("global", "masked"):
            raise ValueError(f"pooling must be 'global' or 'masked', got {pooling!r}")
        self.pooling = pooling
        self.foreground_conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.background_conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * channels, 3 * channels), nn.SiLU(), nn.Linear(3 * channels, 2 * channels)
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def _pool(self, features: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        if self.pooling == "global":
            return features.mean(dim=(-2, -1))
        return features.sum(dim=(-2, -1)) / region.sum(dim=(-2, -1)).clamp_min(1.0)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Adjust the foreground's channels.

        Args:
            features: ``B×C×H×W`` feature map.
            mask: ``B×1×h×w`` binary mask at any resolution (nearest-resampled to ``H×W``).

        Returns:
            ``B×C×H×W``: the background unchanged, the foreground scaled and shifted per channel.
        """
        mask = F.interpolate(mask.to(features.dtype), size=features.shape[-2:], mode="nearest")
        foreground, background = features * mask, features * (1 - mask)
        pooled = torch.cat(
            [
                self._pool(self.foreground_conv(foreground), mask),
                self._pool(self.background_conv(background), 1 - mask),
            ],
            dim=1,
        )
        scale, shift = self.mlp(pooled)[..., None, None].chunk(2, dim=1)
        return background + (features * (1 + scale) + shift) * mask


class MACABank(ModelMixin, ConfigMixin):
    """The Harmony Controller's MACAs, one at the end of each encoder scale (diffusers folder format).

    Args:
        channels: Output channels of the ControlNet's down blocks (SD-1.5: 320, 640, 1280, 1280).
        pooling: See :class:`MaskAwareChannelAttention`.
    """

    @register_to_config
    def __init__(
        self, channels: tuple[int, ...] = (320, 640, 1280, 1280), pooling: Pooling = "global"
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MaskAwareChannelAttention(width, pooling) for width in channels)

    @classmethod
    def from_controlnet(cls, controlnet: ControlNetModel, pooling: Pooling = "global") -> MACABank:
        """One MACA per down block of ``controlnet``, at its widths."""
        return cls(tuple(controlnet.config.block_out_channels), pooling)

    def forward(self, index: int, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply the MACA of encoder scale ``index``."""
        return self.blocks[index](features, mask)
