"""Li et al. 2023's first model: a classifier-free DDPM in pixel space with ADM's U-Net.

The paper says only that its DDPM uses "the same U-Net" as Dhariwal & Nichol's ADM as the noise
predictor and is trained end to end, conditioned on the unharmonized image. Every other choice is ours
(there is no official code); each is an option, and the defaults follow ADM where ADM has an answer:

* **Condition.** The composite and the mask are concatenated to the noisy image as extra input channels,
  ``cat[x_t (3), composite (3), mask (1)]`` (SR3/Palette-style image conditioning, which the paper cites;
  it does not say how the condition enters). Images are in ``[-1, 1]``, the mask in ``{0, 1}``: without
  the mask the network could not tell which region to change.
* **Network** (:func:`build_adm_unet`): ADM's 256×256 U-Net as far as diffusers' ``UNet2DModel`` can
  express it, with 7 input and 3 output channels (ε only: ADM's learned variance serves ancestral
  sampling with few steps, and DDIM at η = 0 does not use it), no class embedding, random init.
* **Schedule.** ADM's 256 px schedule: linear β from 1e-4 to 0.02 over 1000 steps (ADM used the cosine
  schedule only at 64 px; ``beta_schedule: squaredcos_cap_v2`` in the config is that one), the predicted
  clean image clipped to ``[-1, 1]`` while sampling, as ADM does in pixel space.
* **Loss.** DDPM's simple objective: the MSE between the U-Net's output and the noise over the whole image,
  timesteps uniform (ADM adds a variational term only to learn the variance, which we do not).
* **Sampling.** DDIM, η = 0, 50 steps (ADM's respacing ``ddim50``: timesteps 980, 960, …, 0, which is
  diffusers' ``leading`` spacing); the composite's background is pasted over the output.
* **Optimisation.** Adam, lr 1e-4 — ADM's rate; the paper gives an lr (1e-5) only for its LDM — batch 4
  and 256 px (the paper's), EMA of the weights with decay 0.9999 (ADM's).
* **Classifier-free guidance** (Ho & Salimans, the paper's reference for "classifier-free"): the paper
  gives no guidance weight and describes a DDPM trained on the condition, so by default no condition is
  dropped and no guidance is applied; ``condition_dropout`` trains the unconditional model as well
  (composite and mask zeroed) and ``cfg_scale`` ≠ 1 mixes the two predictions when sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from harmony.data import types as keys
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, save_config_hyperparameters
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.nn.latent import (
    Generators,
    SamplerName,
    build_sampler,
    diffusion_target,
    load_pretrained_weights,
    sample_latents,
)

INPUT_CHANNELS = 7
"""The U-Net's input: noisy image (3), composite (3), mask (1), in this order."""

_ADM_SIZES: dict[str, dict[str, object]] = {
    # ADM's 256×256 model: 256 channels × (1, 1, 2, 2, 4, 4), 2 res blocks per level, attention at
    # 32, 16 and 8 px with 64 channels per head, BigGAN (res-block) up/down-sampling, scale-shift norm.
    "adm256": {
        "sample_size": 256,
        "block_out_channels": (256, 256, 512, 512, 1024, 1024),
        "down_block_types": ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
        "up_block_types": ("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
        "layers_per_block": 2,
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    },
    # The same block kinds at test size: attention at the lowest of two levels.
    "tiny": {
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "down_block_types": ("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        "layers_per_block": 1,
        "attention_head_dim": 32,
        "norm_num_groups": 8,
    },
}


def build_adm_unet(
    size: Literal["adm256", "tiny"] = "adm256", dropout: float = 0.0, zero_init: bool = True
) -> UNet2DModel:
    """ADM's U-Net (Dhariwal & Nichol 2021) as a diffusers ``UNet2DModel``, 7 input and 3 output channels.

    ``adm256`` is ADM's 256×256 model: base width 256 with multipliers (1, 1, 2, 2, 4, 4), two residual
    blocks per level (three on the way up), self-attention at the 32, 16 and 8 px levels and in the
    middle block with 64 channels per head, down- and up-sampling by residual blocks (BigGAN-style:
    average pooling / nearest upsampling inside a res block, diffusers' ``ResnetDownsampleBlock2D`` and
    ``AttnDownBlock2D``/``AttnUpBlock2D`` with ``downsample_type``/``upsample_type`` ``resnet``), the
    timestep injected by scale and shift of the second group norm (AdaGN, ``scale_shift``), a sinusoidal
    timestep embedding of 4 × 256 channels. 552,816,387 parameters (ADM's class-conditional model, with
    1000 class embeddings, 3 input and 6 output channels for the learned variance, is 553.84M; ADM reports
    554M).

    What ``UNet2DModel`` does differently, and how it is handled:

    * ADM zero-initialises the last convolution of every residual branch, the attention output
      projection and the output convolution; diffusers does not, so ``zero_init`` does it here.
    * With ``scale_shift`` diffusers drops the group norm of the middle block's attention; it is put back
      with ``attn_norm_num_groups`` (ADM normalises before every attention).
    * ADM's attention computes q, k, v with one 1×1 convolution; diffusers uses three linear layers (the
      same parameters, another layout, so ADM checkpoints need a conversion).
    * ADM's group norms run in float32 under fp16; under ``bf16-mixed`` autocast group norm runs in
      float32 too.

    ``tiny`` keeps the block kinds (res-block resampling, scale-shift, attention at the lowest level) at
    test size: widths (32, 64), one res block per level, 8 norm groups.

    Args:
        size: ``adm256`` (the paper's model) or ``tiny`` (tests, CPU).
        dropout: Dropout in the residual blocks (ADM: 0.0 on ImageNet 256, 0.1 on LSUN).
        zero_init: Zero-initialise the residual branches' last layers and the output convolution, as ADM.
    """
    unet = UNet2DModel(
        in_channels=INPUT_CHANNELS,
        out_channels=3,
        downsample_type="resnet",
        upsample_type="resnet",
        resnet_time_scale_shift="scale_shift",
        attn_norm_num_groups=_ADM_SIZES[size]["norm_num_groups"],
        dropout=dropout,
        **_ADM_SIZES[size],
    )
    if zero_init:
        for module in unet.modules():
            if isinstance(module, ResnetBlock2D):
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            elif isinstance(module, Attention):
                nn.init.zeros_(module.to_out[0].weight)
                nn.init.zeros_(module.to_out[0].bias)
        nn.init.zeros_(unet.conv_out.weight)
        nn.init.zeros_(unet.conv_out.bias)
    return unet


class ClassifierFreeDDPM(LatentDiffusionModule):
    """Li et al. 2023's classifier-free DDPM: ADM's U-Net denoising pixels, conditioned on the composite.

    The U-Net sees ``cat[noisy image, composite, mask]`` at 256 px (images in ``[-1, 1]``) and learns to
    predict the noise of the real image's diffusion (DDPM's ε MSE). Generation: seeded noise denoised by
    DDIM (η = 0, 50 steps), mapped back to ``[0, 1]``; the composite's background is pasted over it.
    ``num_samples`` writes several harmonizations per input. The choices the paper leaves open are listed,
    with their reasons, in this module's docstring.

    Args:
        unet: The noise predictor, 7 input and 3 output channels (:func:`build_adm_unet`).
        noise_scheduler: The DDPM training schedule (ADM at 256 px: linear β 1e-4–0.02, 1000 steps, ε
            prediction, ``clip_sample``); the sampler is derived from it.
        unet_pretrained: Folder (or hub id) of a trained U-Net in the diffusers format (what ``fit``
            exports to ``<log_dir>/pretrained/unet``), loaded when a run starts; ``None``: train from
            scratch.
        optimizer: Optimizer of the U-Net; default Adam, lr 1e-4 (ADM's; the paper gives none for it).
        sampler: Sampler made from ``noise_scheduler``'s config.
        eta: DDIM's η (0: deterministic).
        num_inference_steps: Sampling steps.
        condition_dropout: Probability of training a sample without its condition (composite and mask
            zeroed), which makes ``cfg_scale`` usable; 0: a purely conditional model.
        cfg_scale: Classifier-free guidance scale ``s``: ``ε = ε_∅ + s·(ε_c − ε_∅)``; 1 uses the
            conditional prediction alone (one U-Net pass per step). Other values need a U-Net trained
            with ``condition_dropout`` > 0.
        num_samples: Outputs per input for ``predict`` (seeds ``seed``, ``seed + 1``, …; written as
            ``<name>_<k>.png`` when more than one). Evaluation always scores the first.
        seed: Seed of the sampling noise (per image, so results do not depend on the batch).
        ema_decay: Maximum decay of the U-Net's EMA (ADM: 0.9999), used for evaluation and export;
            ``None`` disables it.
        gradient_checkpointing: Trade compute for memory in the U-Net.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Square working resolution (the paper: 256); inputs of any size are resized to it
            and back. Must be a multiple of the U-Net's total downsampling (32 for ``adm256``).
    """

    injected_parts: tuple[str, ...] = ("unet", "noise_scheduler", "optimizer")
    """Constructor arguments that are objects, not configuration (see ``save_config_hyperparameters``)."""

    def __init__(
        self,
        unet: UNet2DModel,
        noise_scheduler: DDPMScheduler,
        unet_pretrained: str | None = None,
        optimizer: OptimizerCallable | None = None,
        sampler: SamplerName = "ddim",
        eta: float = 0.0,
        num_inference_steps: int = 50,
        condition_dropout: float = 0.0,
        cfg_scale: float = 1.0,
        num_samples: int = 1,
        seed: int = 0,
        ema_decay: float | None = 0.9999,
        gradient_checkpointing: bool = False,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(ema_decay, num_samples, seed, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, self.injected_parts)
        if unet.config.in_channels != INPUT_CHANNELS or unet.config.out_channels != 3:
            raise HarmonyInputError(
                None,
                f"the U-Net must take {INPUT_CHANNELS} channels (noisy image, composite, mask) and give 3, "
                f"not {unet.config.in_channels} and {unet.config.out_channels}",
            )
        self.check_inference_size(2 ** (len(unet.config.block_out_channels) - 1), "this U-Net")
        if not 0.0 <= condition_dropout < 1.0:
            raise HarmonyInputError(None, f"condition_dropout must be in [0, 1), got {condition_dropout}")
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.sampler = build_sampler(noise_scheduler, sampler)
        self.unet_pretrained = unet_pretrained
        self.optimizer = optimizer
        self.eta = eta
        self.num_inference_steps = num_inference_steps
        self.condition_dropout = condition_dropout
        self.cfg_scale = cfg_scale
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load ``unet_pretrained`` when given (nothing otherwise: the paper trains from scratch)."""
        if self.unet_pretrained:
            load_pretrained_weights(self.unet, self.unet_pretrained)

    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The U-Net's parameters (the only part)."""
        return [(f"unet.{name}", p) for name, p in self.unet.named_parameters()]

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the U-Net as ``<directory>/unet`` (diffusers format; load it with ``unet_pretrained``)."""
        self.unet.save_pretrained(Path(directory) / "unet")

    # --- the model --------------------------------------------------------------------------------
    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The U-Net's output for ``cat[noisy, composite, mask]``.

        Args:
            noisy: ``B×3×h×w`` noisy images (``[-1, 1]`` scale).
            timesteps: Diffusion timesteps (one, or one per image).
            composite: ``B×3×h×w`` composite in ``[-1, 1]`` (zeros: the unconditional model).
            mask: ``B×1×h×w`` mask in ``{0, 1}`` (zeros with the composite).
        """
        model_input = torch.cat([noisy, composite.to(noisy.dtype), mask.to(noisy.dtype)], dim=1)
        return self.unet(model_input, timesteps).sample

    # --- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One denoising step on the real image with DDPM's noise MSE."""
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[keys.TARGET].shape[0])
        return loss

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The MSE between the U-Net's output and the scheduler's target (the noise) at uniform timesteps."""
        target = batch[keys.TARGET].float() * 2 - 1
        composite = batch[keys.COMPOSITE].float() * 2 - 1
        mask = batch[keys.MASK].float()
        noise = torch.randn_like(target)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (target.shape[0],), device=target.device
        )
        if self.condition_dropout > 0:
            keep = (
                torch.rand(target.shape[0], 1, 1, 1, device=target.device) >= self.condition_dropout
            ).float()
            composite, mask = composite * keep, mask * keep
        noisy = self.noise_scheduler.add_noise(target, noise, timesteps)
        prediction = self.predict_noise(noisy, timesteps, composite, mask)
        expected = diffusion_target(self.noise_scheduler, target, noise, timesteps)
        return F.mse_loss(prediction.float(), expected.float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the U-Net."""
        parameters = [p for p in self.unet.parameters() if p.requires_grad]
        if self.optimizer is None:
            return torch.optim.Adam(parameters, lr=1e-4)
        return self.optimizer(parameters)

    # --- generation -------------------------------------------------------------------------------
    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The composite and mask at the working resolution."""
        return self.working_condition(batch)

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """Denoise seeded noise into ``[-1, 1]`` images with the configured sampler."""
        composite = condition.composite * 2 - 1
        mask = condition.mask

        def predict(noisy: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            if self.cfg_scale == 1.0:
                return self.predict_noise(noisy, timestep, composite, mask)
            # Conditional and unconditional predictions in one U-Net pass.
            both = self.predict_noise(
                torch.cat([noisy, noisy]),
                timestep,
                torch.cat([composite, torch.zeros_like(composite)]),
                torch.cat([mask, torch.zeros_like(mask)]),
            ).float()
            conditional, unconditional = both.chunk(2)
            return unconditional + self.cfg_scale * (conditional - unconditional)

        return sample_latents(
            predict,
            self.sampler,
            composite.shape,
            self.num_inference_steps,
            generators,
            composite.device,
            eta=self.eta,
        )

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """Map the sampled ``[-1, 1]`` images to ``[0, 1]``."""
        return ((latents.float() + 1) / 2).clamp(0, 1)
