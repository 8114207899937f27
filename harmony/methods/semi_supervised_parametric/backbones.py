"""Image encoders that turn a stack of input buffers into one global feature vector."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchvision
from torch import nn


class ResNetEncoder(nn.Module):
    """A torchvision ResNet trunk (no classifier), globally average-pooled.

    The first convolution is widened to ``in_channels`` so composite, background and mask can be
    stacked (7 channels, or 4 without the background).

    Args:
        arch: Which torchvision ResNet (``resnet50`` in the paper).
        in_channels: Channels of the input stack.
        weights: Initialise from torchvision's ImageNet weights when :meth:`load_pretrained` is called
            (harmony calls it when training starts, never at construction, so building a model or
            ``harmony summary`` never downloads). The widened first convolution keeps the RGB filters
            for the first three channels and starts the extra channels at zero.
    """

    def __init__(
        self,
        arch: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50",
        in_channels: int = 7,
        weights: bool = False,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.weights = weights
        trunk = getattr(torchvision.models, arch)(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.out_features: int = trunk.fc.in_features
        trunk.fc = nn.Identity()
        self.trunk = trunk

    def load_pretrained(self) -> None:
        """Load the ImageNet weights if ``weights`` is set (downloads through torchvision's cache)."""
        if not self.weights:
            return
        weights_enum = torchvision.models.get_model_weights(self.arch).DEFAULT
        state = weights_enum.get_state_dict(progress=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        rgb = state.pop("conv1.weight")
        widened = torch.zeros_like(self.trunk.conv1.weight)
        widened[:, : min(3, self.in_channels)] = rgb[:, : min(3, self.in_channels)]
        state["conv1.weight"] = widened
        self.trunk.load_state_dict(state, strict=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encode ``B×in_channels×H×W`` inputs to ``B×out_features``."""
        return self.trunk(inputs)


class ConvEncoder(nn.Module):
    """A small strided-convolution encoder, globally average-pooled (tests and the CPU quickstart).

    It normalises with GroupNorm: with the few hundred steps of a CPU run, BatchNorm's running
    statistics lag the weights and the model scores far worse in eval mode than it trains.

    Args:
        in_channels: Channels of the input stack.
        channels: Output channels of each stride-2 stage.
    """

    def __init__(self, in_channels: int = 7, channels: tuple[int, ...] = (16, 32, 64, 64)) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(width, 8), width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.layers = nn.Sequential(*layers)
        self.out_features: int = previous

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encode ``B×in_channels×H×W`` inputs to ``B×out_features``."""
        return self.layers(inputs)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``B×C`` weighted spatial means of ``B×C×H×W`` values under ``B×1×H×W`` weights."""
    total = weights.sum(dim=(2, 3)).clamp_min(1e-6)
    return (values * weights).sum(dim=(2, 3)) / total


class MaskedStatisticsEncoder(nn.Module):
    """Encodes the foreground, its surroundings and the background apart: colour histograms and features.

    A global average pool dilutes a small foreground (1 % of the image is common) into the background's
    features; this encoder pools everything over three regions instead — the mask, a ring of background
    around it (the light the object should share) and the whole background — so a foreground of any
    size is described as fully as the background. From the composite ``C`` and mask ``M`` of the input
    stack it takes soft (triangular-kernel) histograms of R, G, B and luma and their means and standard
    deviations over each region, and a small strided-convolution trunk's features pooled over each region
    (the masks are downsampled with it); an MLP mixes them. The statistics carry
    what curves can change — colour distributions — whatever the scene, which is why a model trained
    on a handful of photos generalises with it (the quickstart's encoder).

    Args:
        in_channels: Channels of the input stack; its first three are the composite and its last the mask.
        bins: Histogram bins per channel.
        channels: Output channels of each stride-2 stage of the convolution trunk.
        out_features: Width of the output feature vector.
        ring_width: Width of the surrounding ring as a fraction of the input's side.
    """

    def __init__(
        self,
        in_channels: int = 7,
        bins: int = 16,
        channels: tuple[int, ...] = (16, 32, 64),
        out_features: int = 256,
        ring_width: float = 0.05,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.bins = bins
        self.ring_width = ring_width
        self.register_buffer("centres", torch.linspace(0.0, 1.0, bins), persistent=False)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)
        layers: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.GroupNorm(math.gcd(width, 8), width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.downsampling = 2 ** len(channels)
        statistics = 3 * 4 * (bins + 2)
        self.mlp = nn.Sequential(
            nn.Linear(statistics + 3 * previous, out_features),
            nn.ReLU(inplace=True),
            nn.Linear(out_features, out_features),
            nn.ReLU(inplace=True),
        )
        self.out_features: int = out_features

    def _region_statistics(self, planes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Triangular kernels of width one bin: every value splits between its two nearest bins.
        spacing = 1.0 / (self.bins - 1)
        membership = (
            1 - (planes.unsqueeze(2) - self.centres.view(1, 1, -1, 1, 1)).abs() / spacing
        ).clamp_min(0)
        total = weights.sum(dim=(2, 3)).clamp_min(1e-6)
        histograms = (membership * weights.unsqueeze(2)).sum(dim=(3, 4)) / total.unsqueeze(-1)
        mean = _masked_mean(planes, weights)
        std = (_masked_mean(planes.square(), weights) - mean.square()).clamp_min(0).add(1e-6).sqrt()
        return torch.cat([histograms, mean.unsqueeze(-1), std.unsqueeze(-1)], dim=-1).flatten(1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Encode ``B×in_channels×H×W`` inputs to ``B×out_features``."""
        inputs = inputs.float()
        composite, mask = inputs[:, :3].clamp(0, 1), inputs[:, -1:].clamp(0, 1)
        planes = torch.cat([composite, (composite * self.luma).sum(dim=1, keepdim=True)], dim=1)
        radius = max(1, round(self.ring_width * int(mask.shape[-1])))  # int(): a constant when exported
        ring = (nn.functional.max_pool2d(mask, 2 * radius + 1, stride=1, padding=radius) - mask).clamp_min(0)
        features = self.trunk(inputs)
        regions = (mask, ring, 1 - mask)
        parts = [self._region_statistics(planes, region) for region in regions]
        parts += [
            _masked_mean(features, nn.functional.adaptive_avg_pool2d(region, features.shape[-2:]))
            for region in regions
        ]
        return self.mlp(torch.cat(parts, dim=1))
