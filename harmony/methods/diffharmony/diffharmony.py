"""DiffHarmony (Zhou et al. 2024): a Stable-Diffusion inpainting UNet fine-tuned for harmonization."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from harmony.data import types as keys
from harmony.methods.base import Batch, save_config_hyperparameters
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.nn.latent import (
    Generators,
    LatentDecoder,
    NullTextEmbedding,
    SamplerName,
    SamplingHook,
    VAEDecoder,
    build_sampler,
    decode_latents,
    diffusion_target,
    encode_images,
    foreground_weighted_mse,
    inpainting_input,
    latent_mask,
    load_pretrained_weights,
    sample_latents,
    unet_prediction,
    vae_scale_factor,
)


class DiffHarmony(LatentDiffusionModule):
    """DiffHarmony: a Stable-Diffusion inpainting UNet fine-tuned for image harmonization.

    The UNet sees ``cat[noisy latent, mask on the latent grid, latent of the full composite]`` and the
    empty-prompt text embedding; it learns to denoise the real image's latent with the
    foreground-weighted latent MSE. Inference resizes the input to ``inference_size`` (mask
    re-thresholded), samples ``num_inference_steps`` Euler-ancestral steps from seeded noise, decodes,
    resizes back and pastes the composite's background. The VAE and the text encoder stay frozen; the
    text encoder is only used once, to compute the empty-prompt embedding.

    Variants plug in at :meth:`sample_timesteps`, :meth:`predict_noise` (with the method's own condition
    tensors from :meth:`training_extras` and :meth:`condition`), :meth:`sampling_hook` and
    :attr:`latent_decoder` (DiffHarmony++ decodes with its Harmony-VAE, R2R adds a ControlNet).

    Args:
        unet: The denoising UNet (9 input channels), e.g. ``harmony.nn.latent.build_unet``.
        vae: The latent autoencoder, e.g. ``harmony.nn.latent.build_vae``.
        noise_scheduler: The DDPM training schedule; the sampler is derived from it.
        pretrained: Hub id or local folder of a Stable-Diffusion inpainting pipeline (``unet/``,
            ``vae/``, ``text_encoder/``, ``tokenizer/``) whose weights start the run; ``None`` keeps the
            random weights (tests).
        unet_pretrained: Hub id or folder of a trained UNet itself, in the diffusers format (what
            ``fit`` exports to ``<log_dir>/pretrained/unet``), loaded after ``pretrained``.
        vae_pretrained: Hub id or folder of a VAE itself, replacing the pipeline's (the paper uses
            ``stabilityai/sd-vae-ft-mse``).
        text_encoder_pretrained: Pipeline holding ``text_encoder/`` and ``tokenizer/`` for the empty-prompt
            embedding; defaults to ``pretrained``. Without either the embedding is all zeros.
        optimizer: Optimizer of the UNet; default AdamW (lr 1e-4, weight decay 1e-2).
        sampler: The sampler made from ``noise_scheduler``'s config (the paper: ``euler_ancestral``).
        eta: DDIM's η when ``sampler`` is ``ddim`` (0: deterministic).
        num_inference_steps: Sampling steps.
        num_samples: Outputs per input for ``predict`` (seeds ``seed``, ``seed + 1``, …; written as
            ``<name>_<k>.png`` when more than one). Evaluation always scores the first.
        seed: Seed of the sampling noise (per image, so results do not depend on the batch).
        loss_min_foreground: ``A_min`` of the foreground-weighted loss (1.0: plain masked MSE); ``None``
            trains with the plain MSE over the whole latent (the official code's ``--nofg``), which also
            teaches the UNet the background: needed when it does not start from a pretrained one.
        ema_decay: Maximum decay of the UNet's EMA (updated every optimizer step, used for evaluation);
            ``None`` disables it.
        gradient_checkpointing: Trade compute for memory in the UNet.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Square working resolution of sampling (must be a multiple of the latent grid's
            total downsampling, 64 for SD); inputs of any size are resized to it and back.
    """

    injected_parts: tuple[str, ...] = ("unet", "vae", "noise_scheduler", "optimizer")
    """Constructor arguments that are objects, not configuration (see ``save_config_hyperparameters``)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        pretrained: str | None = None,
        unet_pretrained: str | None = None,
        vae_pretrained: str | None = None,
        text_encoder_pretrained: str | None = None,
        optimizer: OptimizerCallable | None = None,
        sampler: SamplerName = "euler_ancestral",
        eta: float = 0.0,
        num_inference_steps: int = 5,
        num_samples: int = 1,
        seed: int = 0,
        loss_min_foreground: float | None = 0.2,
        ema_decay: float | None = 0.9999,
        gradient_checkpointing: bool = False,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 1024,
    ) -> None:
        super().__init__(ema_decay, num_samples, seed, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, self.injected_parts)
        self.unet = unet
        self.vae = vae.requires_grad_(False)
        self.null_text = NullTextEmbedding(unet.config.cross_attention_dim)
        self.noise_scheduler = noise_scheduler
        self.sampler = build_sampler(noise_scheduler, sampler)
        self.eta = eta
        self.pretrained = pretrained
        self.unet_pretrained = unet_pretrained
        self.vae_pretrained = vae_pretrained
        self.text_encoder_pretrained = text_encoder_pretrained
        self.optimizer = optimizer
        self.num_inference_steps = num_inference_steps
        self.loss_min_foreground = loss_min_foreground
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.check_inference_size(self.latent_grid, "this UNet/VAE")

    @property
    def latent_grid(self) -> int:
        """The VAE's and UNet's total downsampling: every working size must be a multiple of it."""
        return vae_scale_factor(self.vae) * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load the pipeline, UNet and VAE weights and compute the empty-prompt embedding."""
        if self.pretrained:
            load_pretrained_weights(self.unet, self.pretrained, "unet")
            load_pretrained_weights(self.vae, self.pretrained, "vae")
        if self.unet_pretrained:
            load_pretrained_weights(self.unet, self.unet_pretrained)
        if self.vae_pretrained:
            load_pretrained_weights(self.vae, self.vae_pretrained)
        text_source = self.text_encoder_pretrained or self.pretrained
        if text_source:
            self.null_text.compute(text_source)
        else:
            rank_zero_warn(
                f"{type(self).__name__}: no text encoder configured; the empty-prompt embedding is all zeros"
            )

    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The UNet's parameters (the only trained part)."""
        return [(f"unet.{name}", p) for name, p in self.unet.named_parameters()]

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the UNet as ``<directory>/unet`` (diffusers format; load it with ``unet_pretrained``)."""
        self.unet.save_pretrained(Path(directory) / "unet")

    # --- the model --------------------------------------------------------------------------------
    @property
    def latent_decoder(self) -> LatentDecoder:
        """What turns denoised latents into images: the VAE itself."""
        return VAEDecoder(self.vae)

    def encode(self, images: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Scaled ``float32`` latents of ``[0, 1]`` images (a posterior sample, as SD encodes)."""
        return encode_images(self.vae, images, generator).float()

    def sample_timesteps(self, batch_size: int) -> torch.Tensor:
        """Training timesteps, uniform over the schedule."""
        return torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (batch_size,), device=self.device
        )

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
        composite_latents: torch.Tensor,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The UNet's output for (already scaled) noisy latents under the harmonization condition.

        Args:
            latents: ``B×4×h×w`` noisy latents.
            timesteps: Diffusion timesteps.
            mask: ``B×1×h×w`` mask on the latent grid.
            composite_latents: ``B×4×h×w`` latents of the composite.
            extras: A variant's own condition tensors (e.g. a ControlNet hint); DiffHarmony uses none.
        """
        text = self.null_text(latents.shape[0]).to(latents.dtype)
        return unet_prediction(self.unet, inpainting_input(latents, mask, composite_latents), timesteps, text)

    # --- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One denoising step on the real image's latent with the foreground-weighted latent MSE."""
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[keys.TARGET].shape[0])
        return loss

    def training_extras(self, batch: Batch) -> dict[str, torch.Tensor]:
        """A variant's own condition tensors for a training batch (:meth:`predict_noise`'s ``extras``)."""
        return {}

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The denoising loss of a batch (what :meth:`training_step` logs and returns)."""
        with torch.no_grad():
            latents = self.encode(batch[keys.TARGET])
            composite_latents = self.encode(batch[keys.COMPOSITE])
        mask = latent_mask(batch[keys.MASK], latents.shape[-2:])
        noise = torch.randn_like(latents)
        timesteps = self.sample_timesteps(latents.shape[0])
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict_noise(
            noisy, timesteps, mask, composite_latents, self.training_extras(batch)
        )
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps)
        if self.loss_min_foreground is None:
            return F.mse_loss(prediction.float(), target.float())
        return foreground_weighted_mse(prediction, target, mask, self.loss_min_foreground)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the UNet."""
        parameters = [p for p in self.unet.parameters() if p.requires_grad]
        if self.optimizer is None:
            return torch.optim.AdamW(parameters, lr=1e-4, weight_decay=1e-2)
        return self.optimizer(parameters)

    # --- generation -------------------------------------------------------------------------------
    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The working-size composite and mask, the composite's latents and the latent-grid mask."""
        condition = self.working_condition(batch)
        condition.composite_latents = self.encode(condition.composite, generators)
        condition.latent_mask = latent_mask(condition.mask, condition.composite_latents.shape[-2:])
        return condition

    def sampling_hook(self, condition: GenerationCondition) -> SamplingHook | None:
        """A per-step hook of the sampling loop (guidance); DiffHarmony uses none."""
        return None

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """Denoise seeded noise into latents with the configured sampler."""
        composite_latents, grid_mask = condition.composite_latents, condition.latent_mask

        def predict(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.predict_noise(latents, timestep, grid_mask, composite_latents, condition.extras)

        latents = sample_latents(
            predict,
            self.sampler,
            composite_latents.shape,
            self.num_inference_steps,
            generators,
            composite_latents.device,
            eta=self.eta,
            hook=self.sampling_hook(condition),
        )
        return latents.to(composite_latents.dtype)

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """Decode with :attr:`latent_decoder`, conditioned on the working-size composite and mask."""
        return decode_latents(self.vae, latents, self.latent_decoder, condition.composite, condition.mask)
