"""The refinement UNet of DiffHarmony's second stage.

A plain image-to-image UNet, without time embedding, that takes ``cat[harmonized, mask, composite]``
and adds its output to the harmonized input (a residual correction of the VAE's decoding loss).
diffusers' ``UNet2DModel`` always carries a time embedding projected into every resnet, so the network
is assembled here from the same diffusers blocks with ``temb_channels=None``.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from torch import nn


class RefinementUNet(ModelMixin, ConfigMixin):
    """Time-free UNet refining a harmonized image (DiffHarmony's refinement stage).

    Saved and loaded in the diffusers folder format (``save_pretrained`` / ``from_pretrained``).

    Args:
        in_channels: Input channels: harmonized (3) + mask (1) + composite (3).
        out_channels: Output channels (the residual added to the harmonized image).
        block_out_channels: Width of each resolution level (the paper's base model: 128, 256, 512, 512).
        layers_per_block: Resnets per down block (up blocks have one more).
        norm_num_groups: Group-norm groups.
        attention_head_dim: Channels per head of the mid-block attention.
        mid_block_attention: Self-attention in the mid block.
        input_residual: Add the output to the first ``out_channels`` input channels.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 7,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        attention_head_dim: int = 8,
        mid_block_attention: bool = True,
        input_residual: bool = True,
    ) -> None:
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList()
        previous = widths[0]
        for index, width in enumerate(widths):
            self.down_blocks.append(
                get_down_block(
                    "DownBlock2D",
                    num_layers=layers_per_block,
                    in_channels=previous,
                    out_channels=width,
                    temb_channels=None,
                    add_downsample=index < len(widths) - 1,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    downsample_padding=1,
                    attention_head_dim=attention_head_dim,
                )
            )
            previous = width
        self.mid_block = UNetMidBlock2D(
            in_channels=widths[-1],
            temb_channels=None,
            resnet_eps=1e-5,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
            add_attention=mid_block_attention,
        )
        self.up_blocks = nn.ModuleList()
        reversed_widths = list(reversed(widths))
        for index, width in enumerate(reversed_widths):
            self.up_blocks.append(
                get_up_block(
                    "UpBlock2D",
                    num_layers=layers_per_block + 1,
                    in_channels=reversed_widths[min(index + 1, len(widths) - 1)],
                    out_channels=width,
                    prev_output_channel=reversed_widths[max(index - 1, 0)],
                    temb_channels=None,
                    add_upsample=index < len(widths) - 1,
                    resnet_eps=1e-5,
                    resnet_act_fn="silu",
                    resnet_groups=norm_num_groups,
                    resolution_idx=index,
                    attention_head_dim=attention_head_dim,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, widths[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(widths[0], out_channels, kernel_size=3, padding=1)

    @property
    def downsampling_factor(self) -> int:
        """Input sides must be multiples of this."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        """Refine.

        Args:
            sample: ``B×in_channels×H×W``, e.g. ``cat[harmonized, mask, composite]`` in ``[-1, 1]``.

        Returns:
            ``B×out_channels×H×W``: the refined image when ``input_residual`` (the correction plus the
            first ``out_channels`` input channels), else the raw output.
        """
        hidden = self.conv_in(sample)
        residuals: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, states = block(hidden)
            residuals += states
        hidden = self.mid_block(hidden)
        for block in self.up_blocks:
            count = len(block.resnets)
            hidden = block(hidden, residuals[-count:])
            residuals = residuals[:-count]
        output = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        if self.config.input_residual:
            output = output + sample[:, : self.config.out_channels]
        return output
