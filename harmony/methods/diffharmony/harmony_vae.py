"""Harmony-VAE (DiffHarmony++, Sec. 3.2): a VAE decoder that also sees the composite and its mask.

A conditional encoder reads ``cat[composite, mask]``; its intermediate features are added to the
decoder's features UNet-style, each through a zero-initialised 1×1 convolution, and its latent is added
to the decoder's input through one more. Everything new starts at zero, so a fresh Harmony-VAE decodes
exactly like the VAE it was made from; training then teaches the decoder to take back the pixel detail
the latent lost from the composite.

:class:`HarmonyVAEModel` is the network (a :class:`~harmony.nn.latent.LatentDecoder`);
:class:`HarmonyVAE` is the LightningModule that trains it (paper Eq. 2).

Feature routing (SD VAE, 4 blocks × 2 layers): the 12 encoder features (``conv_in`` output, each
down-block resnet output, each downsampler output) are added after the 12 decoder resnets, last in
first out, so each lands on the decoder feature of the same resolution; where the channel counts
differ the 1×1 conv maps them. The encoder's mid-block output is added after the decoder's mid-block.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution, Encoder
from diffusers.models.modeling_utils import ModelMixin
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from harmony.data import types as keys
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, save_config_hyperparameters
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.nn.latent import (
    Generators,
    decoder_resnet_channels,
    encoder_feature_channels,
    encoder_skip_features,
    load_pretrained_weights,
    resize_images,
    zero_conv,
)


class HarmonyCondition(nn.Module):
    """The conditional encoder of a Harmony-VAE and its zero-initialised connections to the decoder.

    Args:
        in_channels: Image channels.
        mask_channels: Mask channels (appended to the image at the input).
        latent_channels: Latent channels of the VAE.
        down_block_types: Block types of the VAE encoder.
        block_out_channels: Widths of the VAE blocks.
        layers_per_block: Resnets per encoder block.
        act_fn: Activation of the VAE.
        norm_num_groups: Group-norm groups of the VAE.
    """

    def __init__(
        self,
        in_channels: int,
        mask_channels: int,
        latent_channels: int,
        down_block_types: tuple[str, ...],
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        act_fn: str,
        norm_num_groups: int,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels + mask_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            double_z=True,
        )
        features = encoder_feature_channels(block_out_channels, layers_per_block)
        targets = decoder_resnet_channels(block_out_channels, layers_per_block)
        # skip_convs[k] carries encoder feature k to the decoder resnet that pops it (last in, first out).
        self.skip_convs = nn.ModuleList(zero_conv(width, targets[-1 - k]) for k, width in enumerate(features))
        self.mid_skip_conv = zero_conv(block_out_channels[-1], block_out_channels[-1])
        self.latent_skip_conv = zero_conv(latent_channels, latent_channels)

    def forward(
        self, composite: torch.Tensor, mask: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Encode the condition.

        Args:
            composite: ``B×3×H×W`` in ``[-1, 1]``.
            mask: ``B×1×H×W`` in ``{0, 1}``.

        Returns:
            The decoder skips in encoder order (already through their zero convs), the mid-block skip,
            and the encoder's output moments (``B×2C×h×w``, before ``quant_conv``).
        """
        encoder = self.encoder
        features = encoder_skip_features(encoder, torch.cat([composite, mask.to(composite.dtype)], dim=1))
        hidden = encoder.mid_block(features[-1])
        mid = self.mid_skip_conv(hidden)
        moments = encoder.conv_out(encoder.conv_act(encoder.conv_norm_out(hidden)))
        skips = [conv(feature) for conv, feature in zip(self.skip_convs, features, strict=True)]
        return skips, mid, moments


class HarmonyVAEModel(ModelMixin, ConfigMixin):
    """Harmony-VAE: an ``AutoencoderKL`` whose decoding is conditioned on the composite and mask.

    Holds the plain VAE (``vae``; its encoder and quant convs stay frozen in training) and the
    :class:`HarmonyCondition` (``condition``, ≈36.1M parameters for the SD VAE). Made from a VAE with
    :meth:`from_vae`; saved and loaded in the diffusers folder format (``save_pretrained`` /
    ``from_pretrained``). The arguments are those of ``AutoencoderKL``.

    Args:
        in_channels: Image channels.
        out_channels: Output image channels.
        down_block_types: Encoder block types.
        up_block_types: Decoder block types.
        block_out_channels: Block widths.
        layers_per_block: Resnets per encoder block (the decoder has one more).
        act_fn: Activation.
        latent_channels: Latent channels.
        norm_num_groups: Group-norm groups.
        sample_size: Nominal image size (informational, as in ``AutoencoderKL``).
        scaling_factor: Latent scale factor of the VAE.
        mask_channels: Channels of the mask condition.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        mask_channels: int = 1,
    ) -> None:
        super().__init__()
        self.vae = AutoencoderKL(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
        )
        self.condition = HarmonyCondition(
            in_channels,
            mask_channels,
            latent_channels,
            tuple(down_block_types),
            tuple(block_out_channels),
            layers_per_block,
            act_fn,
            norm_num_groups,
        )

    @classmethod
    def config_arguments(cls) -> list[str]:
        """The constructor arguments it shares with ``AutoencoderKL`` (all but ``mask_channels``)."""
        return [
            name
            for name in inspect.signature(cls.__init__).parameters
            if name not in ("self", "mask_channels")
        ]

    @classmethod
    def from_vae(cls, vae: AutoencoderKL) -> HarmonyVAEModel:
        """A Harmony-VAE made from ``vae`` that decodes exactly like it (:meth:`initialize_from_vae`)."""
        model = cls(**{name: vae.config[name] for name in cls.config_arguments() if name in vae.config})
        model.initialize_from_vae(vae)
        return model

    @torch.no_grad()
    def initialize_from_vae(self, vae: AutoencoderKL | None = None) -> None:
        """(Re)initialise from a VAE, as the paper prescribes.

        The VAE is copied (when given); the conditional encoder becomes a copy of the VAE encoder whose
        ``conv_in`` weights for the mask start at zero (paper Sec. 3.2 — the official code instead adds a
        separate, default-initialised mask convolution); all skip convolutions are zeroed.

        Args:
            vae: The VAE to copy; ``None`` re-derives the condition from the VAE already held.
        """
        if vae is not None:
            self.vae.load_state_dict(vae.state_dict())
        state = dict(self.vae.encoder.state_dict())
        rgb_weight = state["conv_in.weight"]
        weight = rgb_weight.new_zeros(self.condition.encoder.conv_in.weight.shape)
        weight[:, : rgb_weight.shape[1]] = rgb_weight
        state["conv_in.weight"] = weight
        self.condition.encoder.load_state_dict(state)
        for conv in [
            *self.condition.skip_convs,
            self.condition.mid_skip_conv,
            self.condition.latent_skip_conv,
        ]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def decode(self, z: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> DecoderOutput:
        """Decode latents with the composite and mask as condition.

        Args:
            z: ``B×C×h×w`` unscaled latents (what ``AutoencoderKL.decode`` takes).
            composite: ``B×3×H×W`` composite in ``[-1, 1]`` at the output size.
            mask: ``B×1×H×W`` foreground mask in ``{0, 1}``.

        Returns:
            ``DecoderOutput`` whose ``sample`` is the ``B×3×H×W`` image in ``[-1, 1]``.
        """
        skips, mid, moments = self.condition(composite, mask)
        # The condition's own latent is its posterior mean (the official code samples it): decoding
        # stays deterministic for a given z; the zero conv learns its scale either way.
        condition_latent = DiagonalGaussianDistribution(self.vae.quant_conv(moments)).mode()
        hidden = self.vae.post_quant_conv(z) + self.condition.latent_skip_conv(
            self.vae.post_quant_conv(condition_latent)
        )
        decoder = self.vae.decoder
        hidden = decoder.mid_block(decoder.conv_in(hidden), None) + mid
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                hidden = resnet(hidden, None) + skips.pop()
            for upsampler in block.upsamplers or []:
                hidden = upsampler(hidden)
        sample = decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(hidden)))
        return DecoderOutput(sample=sample)

    def forward(
        self,
        images: torch.Tensor,
        composite: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> DecoderOutput:
        """Reconstruct ``images`` through the frozen encoder's posterior sample and the conditioned decoder.

        This is the training path (Eq. 2: the real image is encoded, the composite and mask condition
        the decoding).

        Args:
            images: ``B×3×H×W`` images to reconstruct, in ``[-1, 1]``.
            composite: ``B×3×H×W`` composite in ``[-1, 1]``.
            mask: ``B×1×H×W`` mask in ``{0, 1}``.
            generator: Generator(s) of the posterior sample.
        """
        z = self.vae.encode(images).latent_dist.sample(generator)
        return self.decode(z, composite, mask)


class HarmonyVAE(LatentDiffusionModule):
    """Training of DiffHarmony++'s Harmony-VAE (paper Sec. 3.2, Eq. 2).

    The real image is encoded by the frozen VAE encoder (posterior sample) and decoded with the
    composite and mask as condition; the loss compares it to the real image in pixel space.
    Trainable: the conditional encoder, the zero convolutions and (``train_decoder``) the decoder.
    At the end of ``fit`` the model (EMA weights) is exported to ``<log_dir>/pretrained/harmony_vae``
    for :class:`DiffHarmonyPlusPlus`.

    Evaluation scores that reconstruction (it needs the ground truth): it measures the decoding quality
    DiffHarmony++ can reach, not a harmonization.

    Args:
        vae: The VAE the Harmony-VAE is made from (random weights until ``vae_pretrained`` loads).
        vae_pretrained: Hub id or folder of the VAE's weights (``stabilityai/sd-vae-ft-mse``).
        vae_subfolder: Subfolder of the VAE in ``vae_pretrained`` (``vae`` for a pipeline), or ``None``.
        optimizer: Optimizer; default AdamW (lr 1e-4, betas 0.9/0.999, no weight decay).
        warmup_fraction: Share of the training steps with a linear learning-rate warm-up, then constant.
        ema_decay: Maximum decay of the EMA of the trained weights; ``None`` disables it.
        train_decoder: Also train the decoder (the paper's choice; ``False`` trains only the condition).
        loss: ``l1`` as the official training (the other is logged), or ``mse``, the squared L2 norm
            the paper's Eq. 2 writes.
        seed: Seed of the posterior sample at evaluation.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Working resolution of the conditioned reconstruction (evaluation, prediction).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        vae_pretrained: str | None = None,
        vae_subfolder: str | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_fraction: float = 0.02,
        ema_decay: float | None = 0.999,
        train_decoder: bool = True,
        loss: Literal["l1", "mse"] = "l1",
        seed: int = 0,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(ema_decay, 1, seed, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, ("vae", "optimizer"))
        self.harmony_vae = HarmonyVAEModel.from_vae(vae)
        frozen = self.harmony_vae.vae
        for part in (frozen.encoder, frozen.quant_conv, frozen.post_quant_conv):
            part.requires_grad_(False)
        frozen.decoder.requires_grad_(train_decoder)
        self.vae_pretrained = vae_pretrained
        self.vae_subfolder = vae_subfolder
        self.optimizer = optimizer
        self.warmup_fraction = warmup_fraction
        self.loss = loss

    def load_pretrained(self) -> None:
        """Load the VAE and make the Harmony-VAE from it (zero-initialised condition)."""
        if self.vae_pretrained:
            load_pretrained_weights(self.harmony_vae.vae, self.vae_pretrained, self.vae_subfolder)
        else:
            rank_zero_warn("HarmonyVAE: no vae_pretrained; starting from a randomly initialised VAE")
        self.harmony_vae.register_to_config(scaling_factor=self.harmony_vae.vae.config.scaling_factor)
        self.harmony_vae.initialize_from_vae()

    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The trained parameters of the Harmony-VAE."""
        return [
            (f"harmony_vae.{name}", p) for name, p in self.harmony_vae.named_parameters() if p.requires_grad
        ]

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the Harmony-VAE as ``<directory>/harmony_vae`` (load it with ``harmony_vae_pretrained``)."""
        self.harmony_vae.save_pretrained(Path(directory) / "harmony_vae")

    def reconstruct(
        self, batch: Batch, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Decode the real image's latent with the composite and mask as condition (``[-1, 1]``)."""
        return self.harmony_vae(
            batch[keys.TARGET] * 2 - 1, batch[keys.COMPOSITE] * 2 - 1, batch[keys.MASK], generator
        ).sample

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Reconstruction loss of the real image (L1 and MSE are both logged)."""
        reconstruction = self.reconstruct(batch).float()
        target = batch[keys.TARGET].float() * 2 - 1
        losses = {"l1": F.l1_loss(reconstruction, target), "mse": F.mse_loss(reconstruction, target)}
        size = target.shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == self.loss, batch_size=size)
        return losses[self.loss]

    def configure_optimizers(self) -> dict:
        """AdamW with a linear warm-up over ``warmup_fraction`` of the steps, then constant."""
        parameters = [p for _, p in self.ema_named_parameters()]
        if self.optimizer is None:
            optimizer = torch.optim.AdamW(parameters, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
        else:
            optimizer = self.optimizer(parameters)
        total = self.trainer.estimated_stepping_batches
        warmup = max(1, round(self.warmup_fraction * total)) if math.isfinite(total) else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The working-size composite and mask, and the real image to reconstruct.

        Raises:
            HarmonyInputError: The batch has no ground truth (this module does not harmonize on its own;
                use :class:`~harmony.methods.diffharmony.DiffHarmonyPlusPlus`).
        """
        if keys.TARGET not in batch:
            raise HarmonyInputError(
                None, "HarmonyVAE reconstructs the real image and needs it; use DiffHarmonyPlusPlus"
            )
        condition = self.working_condition(batch)
        condition.extras[keys.TARGET] = resize_images(batch[keys.TARGET].float(), self.inference_size)
        return condition

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """A posterior sample of the real image's (unscaled) latent from the frozen encoder."""
        target = condition.extras[keys.TARGET] * 2 - 1
        return self.harmony_vae.vae.encode(target).latent_dist.sample(generators)

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """The conditioned decoding of the real image's latent, in ``[0, 1]``."""
        images = self.harmony_vae.decode(latents, condition.composite * 2 - 1, condition.mask).sample
        return ((images.float() + 1) / 2).clamp(0, 1)
