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
