"""DiffHarmony's refinement stage: a time-free UNet correcting stage-1 outputs.

:class:`RefinementUNet` is a plain image-to-image UNet, without time embedding, that takes
``cat[harmonized, mask, composite]`` and adds its output to the harmonized input (a residual
correction of the VAE's decoding loss). diffusers' ``UNet2DModel`` always carries a time embedding
projected into every resnet, so the network is assembled here from the same diffusers blocks with
``temb_channels=None``. :class:`DiffHarmonyRefinement` is the LightningModule that trains it on the
outputs of a frozen DiffHarmony.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block
from lightning.pytorch.cli import OptimizerCallable
from PIL import Image
from torch import nn

from harmony.data import types as keys
from harmony.data.io import read_rgb
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, save_config_hyperparameters
from harmony.methods.diffharmony.diffharmony import DiffHarmony
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.nn.latent import Generators


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


class DiffHarmonyRefinement(LatentDiffusionModule):
    """DiffHarmony's refinement stage: a time-free UNet correcting stage-1 outputs.

    The input is ``cat[harmonized, mask, composite]`` in ``[-1, 1]``; the output is added to the
    harmonized image. Stage-1 outputs come from a frozen DiffHarmony (``stage1_checkpoint``, generated on
    the fly at its inference size and resized to the batch) or from a folder of precomputed
    ``<name>.png`` files (``stage1_predictions``); training uses plain MSE against the real image.

    Args:
        refiner: The refinement UNet (the paper's base model: ``block_out_channels`` 128/256/512/512).
        stage1_checkpoint: A ``harmony fit`` checkpoint of :class:`DiffHarmony` (or a subclass).
        stage1_predictions: Folder of stage-1 outputs named ``<composite stem>.png`` (used when no
            checkpoint is given; needs every sample's output, training ones included).
        stage1_inference_size: Overrides the stage-1 model's working resolution (official: 512).
        optimizer: Optimizer of the refiner; default AdamW (lr 1e-4, weight decay 1e-2).
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Working resolution (multiple of the refiner's downsampling).
    """

    def __init__(
        self,
        refiner: RefinementUNet,
        stage1_checkpoint: str | None = None,
        stage1_predictions: str | None = None,
        stage1_inference_size: int | None = None,
        optimizer: OptimizerCallable | None = None,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(None, 1, 0, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, ("refiner", "optimizer"))
        if stage1_checkpoint is None and stage1_predictions is None:
            raise HarmonyInputError(
                None, "DiffHarmonyRefinement needs stage1_checkpoint or stage1_predictions"
            )
        self.refiner = refiner
        self.stage1_checkpoint = stage1_checkpoint
        self.stage1_predictions = None if stage1_predictions is None else Path(stage1_predictions)
        self.stage1_inference_size = stage1_inference_size
        self.optimizer = optimizer
        # A plain list keeps the frozen stage-1 model out of this module's parameters and checkpoints.
        self._stage1: list[DiffHarmony] = []

    def stage1(self) -> DiffHarmony:
        """The frozen stage-1 model, loaded on first use and kept on this module's device."""
        if not self._stage1:
            if self.stage1_checkpoint is None:
                raise HarmonyInputError(None, "no stage1_checkpoint to generate stage-1 outputs with")
            path = Path(self.stage1_checkpoint)
            if not path.is_file():
                raise HarmonyInputError(path, "stage-1 checkpoint not found")
            model = DiffHarmony.load_from_checkpoint(path, map_location="cpu", weights_only=True)
            model = model.requires_grad_(False).eval()
            if self.stage1_inference_size is not None:
                model.inference_size = self.stage1_inference_size
            self._stage1.append(model)
        model = self._stage1[0]
        if model.device != self.device:
            model.to(self.device)
        return model

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the refiner as ``<directory>/refiner`` (diffusers format)."""
        self.refiner.save_pretrained(Path(directory) / "refiner")

    def _read_stage1(self, batch: Batch) -> torch.Tensor:
        assert self.stage1_predictions is not None
        height, width = batch[keys.COMPOSITE].shape[-2:]
        images = []
        for name in batch[keys.NAME]:
            image = Image.fromarray(read_rgb(self.stage1_predictions / f"{name}.png"))
            image = np.asarray(image.resize((width, height), Image.BILINEAR))
            images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        return torch.stack(images).to(self.device)

    @torch.no_grad()
    def stage1_outputs(self, batch: Batch) -> torch.Tensor:
        """Stage-1 harmonizations of a batch, ``[0, 1]`` at the batch's resolution."""
        if self.stage1_checkpoint is None and keys.NAME in batch:
            return self._read_stage1(batch)
        return self.stage1().harmonize(batch).float()

    def refine(self, harmonized: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Refined image in ``[-1, 1]``."""
        sample = torch.cat([harmonized * 2 - 1, mask.to(harmonized.dtype), composite * 2 - 1], dim=1)
        return self.refiner(sample)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """MSE between the refined stage-1 output and the real image."""
        harmonized = self.stage1_outputs(batch)
        refined = self.refine(harmonized, batch[keys.COMPOSITE], batch[keys.MASK]).float()
        loss = F.mse_loss(refined, batch[keys.TARGET].float() * 2 - 1)
        self.log("train/loss", loss, prog_bar=True, batch_size=refined.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the refiner."""
        if self.optimizer is None:
            return torch.optim.AdamW(self.refiner.parameters(), lr=1e-4, weight_decay=1e-2)
        return self.optimizer(self.refiner.parameters())

    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The working-size composite and mask, and the stage-1 outputs for them."""
        condition = self.working_condition(batch)
        working = {**batch, keys.COMPOSITE: condition.composite, keys.MASK: condition.mask}
        condition.extras["stage1"] = self.stage1_outputs(working)
        return condition

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """The refined stage-1 output in ``[-1, 1]`` (no noise: the refiner is deterministic)."""
        return self.refine(condition.extras["stage1"], condition.composite, condition.mask)

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """Map the refiner's ``[-1, 1]`` output to ``[0, 1]``."""
        return ((latents.float() + 1) / 2).clamp(0, 1)
