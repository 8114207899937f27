"""Skip connections from a VAE encoder into its decoder (DiffHarmony++'s Harmony-VAE, R2R's Clear-VAE).

Both methods carry the 12 intermediate features of an SD-style ``AutoencoderKL`` encoder (4 blocks × 2
layers: the ``conv_in`` output, each down-block resnet output, each downsampler output) to the 12
decoder resnets, last in first out, so that each feature lands on a decoder resnet of the same
resolution; zero-initialised 1×1 convolutions make the connection a no-op until it trains. The
helpers here give the channel counts on both sides and read the features off an encoder.
"""

from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import Encoder
from torch import nn


def zero_conv(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """A 1×1 convolution whose weight (and bias, if any) start at zero."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def encoder_feature_channels(block_out_channels: tuple[int, ...], layers_per_block: int) -> list[int]:
    """Channels of the encoder's skip features, in the order they are produced.

    ``[128]*4 + [256]*3 + [512]*5`` for the SD VAE.
    """
    channels = [block_out_channels[0]]
    for index, width in enumerate(block_out_channels):
        channels += [width] * layers_per_block
        if index < len(block_out_channels) - 1:
            channels.append(width)
    return channels


def decoder_resnet_channels(block_out_channels: tuple[int, ...], layers_per_block: int) -> list[int]:
    """Output channels of the decoder's up-block resnets, in decoding order."""
    return [width for width in reversed(block_out_channels) for _ in range(layers_per_block + 1)]


def decoder_resnet_in_channels(block_out_channels: tuple[int, ...], layers_per_block: int) -> list[int]:
    """Input channels of the decoder's up-block resnets, in decoding order.

    The first resnet of each up block takes the previous block's width (the mid-block's for the first);
    the others take their block's own.
    """
    widths = list(reversed(block_out_channels))
    channels = []
    for index, width in enumerate(widths):
        channels.append(widths[max(index - 1, 0)])
        channels += [width] * layers_per_block
    return channels


def encoder_skip_features(encoder: Encoder, sample: torch.Tensor) -> list[torch.Tensor]:
    """Run an ``AutoencoderKL`` encoder up to its mid-block and return its skip features.

    Args:
        encoder: The VAE's ``encoder``.
        sample: ``B×C×H×W`` encoder input (an image in ``[-1, 1]``, plus any extra condition channels
            the encoder's ``conv_in`` takes).

    Returns:
        The ``conv_in`` output, each down-block resnet output and each downsampler output, in the order
        they are produced (12 for the SD VAE). The last one is the mid-block's input, as the final down
        block has no downsampler.
    """
    hidden = encoder.conv_in(sample)
    features = [hidden]
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            hidden = resnet(hidden, None)
            features.append(hidden)
        for downsampler in block.downsamplers or []:
            hidden = downsampler(hidden)
            features.append(hidden)
    return features
