"""DiffHarmony (Zhou et al. 2024) and DiffHarmony++: Stable-Diffusion inpainting fine-tuned for harmonization.

* :class:`DiffHarmony` — the inpainting UNet learns to denoise the real image's latent given the
  composite's latent and the mask (foreground-weighted latent MSE); inference runs 5 Euler-ancestral
  steps at a high working resolution (the paper's best: 1024) and pastes the composite's background.
* :class:`DiffHarmonyRefinement` — DiffHarmony's second stage: a time-free UNet correcting stage-1
  outputs (trained with MSE on 256 px).
* :class:`HarmonyVAE` — trains DiffHarmony++'s Harmony-VAE: the real image is reconstructed from its
  latent with the composite and mask as condition (L1).
* :class:`DiffHarmonyPlusPlus` — DiffHarmony decoding with a trained Harmony-VAE.

Heavy parts are injected (built from the configs in ``harmony/configs`` with random weights); the
pretrained weights (hub id or local folder) are loaded when a run starts and nothing was restored from a
checkpoint, so building a model never downloads anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from torch import nn

from harmony.data import types as keys
from harmony.data.io import read_rgb, save_rgb
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, HarmonizationModule, paste_background, save_config_hyperparameters
from harmony.nn.harmony_vae import HarmonyVAEModel
from harmony.nn.latent import (
    NullTextEmbedding,
    build_sampler,
    decode_latents,
    diffusion_target,
    encode_images,
    foreground_weighted_mse,
    latent_mask,
    load_pretrained_weights,
    resize_for_inference,
    sample_latents,
    seeded_generators,
    unet_input,
    unscale_latents,
    vae_scale_factor,
)
from harmony.nn.refinement import RefinementUNet


class _DiffusersModule(HarmonizationModule):
    """What the diffusers-based methods share: late pretrained loading, an EMA, diffusers-format export.

    * :meth:`load_pretrained` runs when the first fit/validate/test/predict starts, unless the
      weights came from a checkpoint (or were loaded already).
    * With ``ema_decay`` set, an EMA of :meth:`ema_named_parameters` is updated after every optimizer
      step, swapped in for validation, test and prediction, saved in checkpoints under ``"ema"``, and
      whenever a checkpoint is loaded for evaluation (``validate``/``test``/``predict``/
      ``load_from_checkpoint``) its EMA weights are the ones loaded.
    * At the end of ``fit`` the trained parts (EMA weights) are written in the diffusers folder format
      to ``<log_dir>/pretrained/`` (:meth:`export_pretrained`).
    """

    ema_decay: float | None = None

    def __init__(self, compute_lpips: bool, predictions_dir: str, inference_size: int) -> None:
        super().__init__(
            compute_lpips=compute_lpips, predictions_dir=predictions_dir, inference_size=inference_size
        )
        self._weights_ready = False
        self._ema: EMAModel | None = None
        self._pending_ema_state: dict | None = None

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load the configured pretrained weights (called once, when a run starts)."""

    def _ensure_weights(self) -> None:
        if not self._weights_ready:
            self.load_pretrained()
            self._weights_ready = True

    def on_fit_start(self) -> None:
        """Load pretrained weights if needed, then start the EMA (restoring it when resuming)."""
        self._ensure_weights()
        if self.ema_decay is None:
            return
        self._ema = EMAModel([p for _, p in self.ema_named_parameters()], decay=self.ema_decay)
        if self._pending_ema_state is not None:
            self._ema.load_state_dict(self._pending_ema_state)
            self._ema.to(self.device)
            self._pending_ema_state = None

    def on_validation_start(self) -> None:
        """Load pretrained weights if needed."""
        self._ensure_weights()

    def on_test_start(self) -> None:
        """Load pretrained weights if needed; test with the EMA weights."""
        self._ensure_weights()
        self._swap_ema(True)

    def on_test_end(self) -> None:
        """Put the live weights back."""
        self._swap_ema(False)

    def on_predict_start(self) -> None:
        """Load pretrained weights if needed; predict with the EMA weights."""
        self._ensure_weights()
        self._swap_ema(True)

    def on_predict_end(self) -> None:
        """Put the live weights back."""
        self._swap_ema(False)

    # --- EMA --------------------------------------------------------------------------------------
    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The averaged parameters, named as in this module's ``state_dict``."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def optimizer_step(self, *args: object, **kwargs: object) -> None:
        """Step the optimizer, then the EMA."""
        super().optimizer_step(*args, **kwargs)
        if self._ema is not None:
            self._ema.step([p for _, p in self.ema_named_parameters()])

    def _swap_ema(self, use_ema: bool) -> None:
        if self._ema is None:
            return
        parameters = [p for _, p in self.ema_named_parameters()]
        if use_ema:
            self._ema.store(parameters)
            self._ema.copy_to(parameters)
        else:
            self._ema.restore(parameters)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily put the EMA weights in place (no-op without an EMA)."""
        self._swap_ema(True)
        try:
            yield
        finally:
            self._swap_ema(False)

    def on_validation_epoch_start(self) -> None:
        """Validate with the EMA weights (swapped back before any checkpoint is written)."""
        self._swap_ema(True)

    def on_validation_epoch_end(self) -> None:
        """Put the live weights back, then log the metrics."""
        self._swap_ema(False)
        super().on_validation_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Save the EMA next to the live weights."""
        if self._ema is not None:
            checkpoint["ema"] = self._ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Keep the EMA to resume training, or load the EMA weights for evaluation."""
        self._weights_ready = True
        state = checkpoint.get("ema")
        if state is None:
            return
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._pending_ema_state = state
            return
        names = [name for name, _ in self.ema_named_parameters()]
        if len(names) != len(state["shadow_params"]):
            raise HarmonyInputError(
                None, "the checkpoint's EMA does not match this model's trainable parameters"
            )
        checkpoint["state_dict"].update(zip(names, state["shadow_params"], strict=True))

    # --- export -----------------------------------------------------------------------------------
    def export_pretrained(self, directory: str | Path) -> None:
        """Write the trained parts in the diffusers folder format under ``directory``."""

    def on_fit_end(self) -> None:
        """Export the trained parts (EMA weights) to ``<log_dir>/pretrained`` (not under ``fast_dev_run``)."""
        log_dir = self.trainer.log_dir
        if log_dir is None or self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        with self.ema_weights():
            self.export_pretrained(Path(log_dir) / "pretrained")
        rank_zero_info(f"{type(self).__name__}: trained weights exported to {Path(log_dir) / 'pretrained'}")


class DiffHarmony(_DiffusersModule):
    """DiffHarmony: a Stable-Diffusion inpainting UNet fine-tuned for image harmonization.

    The UNet sees ``cat[noisy latent, mask on the latent grid, latent of the full composite]`` and the
    empty-prompt text embedding; it learns to denoise the real image's latent with the
    foreground-weighted latent MSE. Inference resizes the input to ``inference_size`` (mask
    re-thresholded), samples ``num_inference_steps`` Euler-ancestral steps from seeded noise, decodes,
    resizes back and pastes the composite's background. The VAE and the text encoder stay frozen; the
    text encoder is only used once, to compute the empty-prompt embedding.

    The hook methods (:meth:`sample_timesteps`, :meth:`predict_noise`, :meth:`decode`) are where
    variants plug in.

    Args:
        unet: The denoising UNet (9 input channels), e.g. ``harmony.nn.latent.build_unet``.
        vae: The latent autoencoder, e.g. ``harmony.nn.latent.build_vae``.
        noise_scheduler: The DDPM training schedule; the Euler-ancestral sampler is derived from it.
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
        num_inference_steps: Euler-ancestral sampling steps.
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
        super().__init__(compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, ("unet", "vae", "noise_scheduler", "optimizer"))
        self.unet = unet
        self.vae = vae.requires_grad_(False)
        self.null_text = NullTextEmbedding(unet.config.cross_attention_dim)
        self.noise_scheduler = noise_scheduler
        self.sampler = build_sampler(noise_scheduler)
        self.pretrained = pretrained
        self.unet_pretrained = unet_pretrained
        self.vae_pretrained = vae_pretrained
        self.text_encoder_pretrained = text_encoder_pretrained
        self.optimizer = optimizer
        self.num_inference_steps = num_inference_steps
        self.num_samples = num_samples
        self.seed = seed
        self.loss_min_foreground = loss_min_foreground
        self.ema_decay = ema_decay
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        grid = vae_scale_factor(vae) * 2 ** (len(unet.config.block_out_channels) - 1)
        if inference_size % grid:
            raise HarmonyInputError(
                None, f"inference_size {inference_size} must be a multiple of {grid} for this UNet/VAE"
            )

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

    # --- hooks ------------------------------------------------------------------------------------
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
    ) -> torch.Tensor:
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
    ) -> torch.Tensor:
        """The UNet's output for (already scaled) noisy latents under the harmonization condition."""
        text = self.null_text(latents.shape[0]).to(latents.dtype)
        return self.unet(
            unet_input(latents, mask, composite_latents), timesteps, encoder_hidden_states=text
        ).sample

    def decode(self, latents: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decode denoised latents to ``[0, 1]`` images (the composite and mask are unused here)."""
        return decode_latents(self.vae, latents)

    # --- training ---------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One denoising step on the real image's latent with the foreground-weighted latent MSE."""
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[keys.TARGET].shape[0])
        return loss

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The denoising loss of a batch (what :meth:`training_step` logs and returns)."""
        with torch.no_grad():
            latents = self.encode(batch[keys.TARGET])
            composite_latents = self.encode(batch[keys.COMPOSITE])
        mask = latent_mask(batch[keys.MASK], latents.shape[-2:])
        noise = torch.randn_like(latents)
        timesteps = self.sample_timesteps(latents.shape[0])
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict_noise(noisy, timesteps, mask, composite_latents)
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

    # --- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: Batch, seed: int) -> torch.Tensor:
        """Harmonize a batch with one seed: ``B×3×H×W`` in ``[0, 1]`` at the batch's resolution."""
        composite, mask = batch[keys.COMPOSITE], batch[keys.MASK]
        working, working_mask = resize_for_inference(composite.float(), mask.float(), self.inference_size)
        generators = seeded_generators(seed, composite.shape[0])
        composite_latents = self.encode(working, generators)
        grid_mask = latent_mask(working_mask, composite_latents.shape[-2:])

        def predict(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.predict_noise(latents, timestep, grid_mask, composite_latents)

        latents = sample_latents(
            predict,
            self.sampler,
            composite_latents.shape,
            self.num_inference_steps,
            generators,
            composite.device,
        )
        images = self.decode(latents.to(composite_latents.dtype), working, working_mask).float()
        if images.shape[-2:] != composite.shape[-2:]:
            images = F.interpolate(
                images, size=composite.shape[-2:], mode="bilinear", align_corners=False, antialias=True
            )
        return paste_background(images.clamp(0, 1), composite, mask)

    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Harmonize with the first seed."""
        return self.generate(batch, self.seed)

    def predict_step(self, batch: Batch, batch_idx: int) -> list[Path]:
        """Write ``<name>.png``, or ``<name>_<k>.png`` for each of ``num_samples`` seeds."""
        if self.num_samples == 1:
            return super().predict_step(batch, batch_idx)
        written = []
        for k in range(self.num_samples):
            prediction = self.generate(batch, self.seed + k)
            for index, name in enumerate(batch[keys.NAME]):
                output = self._to_original_resolution(
                    prediction[index], batch[keys.COMPOSITE_PATH][index], batch[keys.MASK_PATH][index]
                )
                path = self.predictions_dir / f"{name}_{k}.png"
                save_rgb(path, output)
                written.append(path)
        return written


class DiffHarmonyPlusPlus(DiffHarmony):
    """DiffHarmony++: DiffHarmony whose latents are decoded by a trained Harmony-VAE.

    Only decoding changes: the Harmony-VAE (made from ``vae``, loaded from ``harmony_vae_pretrained``)
    decodes with the working-size composite and mask as condition. Without trained weights it decodes
    exactly like ``vae``. The paper reuses a trained DiffHarmony UNet (``unet_pretrained``).

    Args:
        unet: See :class:`DiffHarmony`.
        vae: See :class:`DiffHarmony`; the Harmony-VAE has the same architecture.
        noise_scheduler: See :class:`DiffHarmony`.
        harmony_vae_pretrained: Hub id or folder of a trained Harmony-VAE in the diffusers format (what
            :class:`HarmonyVAE` exports to ``<log_dir>/pretrained/harmony_vae``).
        **kwargs: The other arguments of :class:`DiffHarmony`.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        harmony_vae_pretrained: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(unet, vae, noise_scheduler, **kwargs)
        self.harmony_vae = HarmonyVAEModel.from_vae(vae).requires_grad_(False)
        self.harmony_vae_pretrained = harmony_vae_pretrained

    def load_pretrained(self) -> None:
        """Load DiffHarmony's weights, then the Harmony-VAE (or derive it from the loaded VAE)."""
        super().load_pretrained()
        if self.harmony_vae_pretrained:
            load_pretrained_weights(self.harmony_vae, self.harmony_vae_pretrained)
        else:
            rank_zero_warn("DiffHarmonyPlusPlus: no harmony_vae_pretrained; decoding like the plain VAE")
            self.harmony_vae.initialize_from_vae(self.vae)

    def decode(self, latents: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decode with the Harmony-VAE, conditioned on the working-size composite and mask."""
        images = self.harmony_vae.decode(unscale_latents(self.vae, latents), composite * 2 - 1, mask).sample
        return ((images + 1) / 2).clamp(0, 1)


class HarmonyVAE(_DiffusersModule):
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
        inference_size: Working resolution of :meth:`harmonize_image`.
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
        super().__init__(compute_lpips, predictions_dir, inference_size)
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
        self.ema_decay = ema_decay
        self.loss = loss
        self.seed = seed

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

    @torch.no_grad()
    def harmonize(self, batch: Batch) -> torch.Tensor:
        """The conditioned reconstruction of the real image, background pasted from the composite.

        Raises:
            HarmonyInputError: The batch has no ground truth (this module does not harmonize on its own;
                use :class:`DiffHarmonyPlusPlus`).
        """
        if keys.TARGET not in batch:
            raise HarmonyInputError(
                None, "HarmonyVAE reconstructs the real image and needs it; use DiffHarmonyPlusPlus"
            )
        generators = seeded_generators(self.seed, batch[keys.COMPOSITE].shape[0])
        images = ((self.reconstruct(batch, generators).float() + 1) / 2).clamp(0, 1)
        return paste_background(images, batch[keys.COMPOSITE], batch[keys.MASK])


class DiffHarmonyRefinement(_DiffusersModule):
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
        super().__init__(compute_lpips, predictions_dir, inference_size)
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
            model = DiffHarmony.load_from_checkpoint(path, map_location="cpu").requires_grad_(False).eval()
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

    @torch.no_grad()
    def harmonize(self, batch: Batch) -> torch.Tensor:
        """Stage 1, then the refiner; the composite's background is pasted back."""
        harmonized = self.stage1_outputs(batch)
        refined = ((self.refine(harmonized, batch[keys.COMPOSITE], batch[keys.MASK]).float() + 1) / 2).clamp(
            0, 1
        )
        return paste_background(refined, batch[keys.COMPOSITE], batch[keys.MASK])
