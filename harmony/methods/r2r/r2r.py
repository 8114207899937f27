"""R2R (Zhang et al. 2025): a frozen DiffHarmony UNet, the Harmony Controller and the Clear-VAE."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from harmony.data import types as keys
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch
from harmony.methods.diffharmony import DiffHarmony
from harmony.methods.latent_diffusion import GenerationCondition
from harmony.methods.r2r.clear_vae import ClearVAEDecoder, ClearVAESkips, load_clear_vae
from harmony.methods.r2r.harmony_controller import controller_hint, controller_residuals
from harmony.methods.r2r.maca import MACABank, Pooling
from harmony.nn.latent import (
    Generators,
    LatentDecoder,
    VAEDecoder,
    initialize_controlnet_from_unet,
    inpainting_input,
    load_pretrained_weights,
)

HINT_KEY = "controller_hint"
"""Where the Harmony Controller's hint travels in a :class:`GenerationCondition`'s ``extras``."""


def load_unet_from_checkpoint(unet: UNet2DConditionModel, path: str | Path) -> None:
    """Load the UNet of a harmony DiffHarmony checkpoint (its EMA weights when it has them).

    Raises:
        HarmonyInputError: The file cannot be read or holds no UNet that fits ``unet``.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise HarmonyInputError(
            path, f"not a readable harmony checkpoint ({str(error).splitlines()[0]})"
        ) from None
    state = {
        name.removeprefix("unet."): tensor
        for name, tensor in checkpoint.get("state_dict", {}).items()
        if name.startswith("unet.")
    }
    if not state:
        raise HarmonyInputError(path, "holds no DiffHarmony UNet (no 'unet.' weights)")
    ema = checkpoint.get("ema")
    if ema is not None:
        # DiffHarmony averages exactly the UNet's parameters, in named_parameters order.
        names = [name for name, _ in unet.named_parameters()]
        if len(names) == len(ema["shadow_params"]):
            state.update(zip(names, ema["shadow_params"], strict=True))
    try:
        unet.load_state_dict(state)
    except RuntimeError as error:
        raise HarmonyInputError(path, f"its UNet does not fit ({str(error).splitlines()[0]})") from None
    rank_zero_info(f"R2R: loaded the stage-1 UNet from {path}")


class R2R(DiffHarmony):
    """R2R, stage 2: the Harmony Controller (ControlNet + MACA) trained on a frozen DiffHarmony UNet.

    Stage 1 is DiffHarmony itself (``experiments/diffharmony.yaml``); its UNet is loaded here from a
    harmony checkpoint (``diffharmony_checkpoint``) or a diffusers folder (``unet_pretrained``) and frozen.
    The controller starts as a copy of that UNet's encoder (:func:`initialize_controlnet_from_unet`), its
    hint encoder's last convolution and its residual convolutions at zero, and MACA as the identity, so an
    untrained R2R predicts exactly what its UNet does. Training uses DiffHarmony's foreground-weighted
    latent MSE on the controller's and MACA's parameters only. Generation is DiffHarmony's (Euler
    ancestral, 10 steps in the paper, 1024 px) with the controller's residuals, decoded by the Clear-VAE
    with the composite's skips (``experiments/r2r_clear_vae.yaml`` trains it).

    Timesteps: with probability ``low_timestep_probability`` a training timestep is drawn from
    ``[0, low_timestep_limit)``, otherwise from the whole schedule. The paper does not say how it samples
    them; this is the official code's choice (0.3, 500). ``low_timestep_probability=0`` is uniform.

    Args:
        unet: The stage-1 UNet (9 input channels), frozen.
        vae: The latent autoencoder; with ``clear_vae_pretrained`` it becomes the Clear-VAE's VAE (same
            frozen encoder, its fine-tuned decoder).
        noise_scheduler: The DDPM training schedule; the sampler is derived from it.
        controlnet: The controller's ControlNet, built from the UNet's config with a 7-channel hint
            (``harmony.nn.latent.build_controlnet``; 361.29M at SD-1.5 size).
        use_maca: Put a MACA at the end of each encoder scale (``False``: the paper's "w/o MACA").
        maca_pooling: How MACA averages its features (see :class:`~harmony.methods.r2r.maca.MACABank`).
        reads_noisy_latents: Feed the noisy latents to the controller as the original ControlNet does;
            ``False`` (paper Fig. 1, official code) lets it see the hint alone.
        use_clear_vae: Decode with the Clear-VAE (``False``: the plain VAE, "w/o Clear-VAE").
        diffharmony_checkpoint: A harmony DiffHarmony checkpoint whose UNet (EMA weights) is stage 1.
        clear_vae_pretrained: Folder of a trained Clear-VAE (``vae/`` and ``skips/``, what
            :class:`~harmony.methods.r2r.ClearVAE` exports to ``<log_dir>/pretrained/clear_vae``).
        controller_pretrained: Folder of a trained controller (``controlnet/`` and ``maca/``, what this
            module exports to ``<log_dir>/pretrained/controller``); without it the controller is made
            from the UNet.
        low_timestep_probability: Share of training timesteps drawn below ``low_timestep_limit``.
        low_timestep_limit: Upper end (exclusive) of those timesteps.
        canny_thresholds: Canny's hysteresis thresholds for the hint's edges (official: 100, 200).
        control_scale: Factor on the controller's residuals at inference and in training.
        **kwargs: The other arguments of :class:`~harmony.methods.diffharmony.DiffHarmony` (pretrained
            folders, optimizer — default here AdamW lr 1e-5 —, sampler, steps, seeds, EMA, working size).
    """

    injected_parts = (*DiffHarmony.injected_parts, "controlnet")

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        controlnet: ControlNetModel,
        use_maca: bool = True,
        maca_pooling: Pooling = "global",
        reads_noisy_latents: bool = False,
        use_clear_vae: bool = True,
        diffharmony_checkpoint: str | None = None,
        clear_vae_pretrained: str | None = None,
        controller_pretrained: str | None = None,
        low_timestep_probability: float = 0.3,
        low_timestep_limit: int = 500,
        canny_thresholds: tuple[int, int] = (100, 200),
        control_scale: float = 1.0,
        **kwargs: object,
    ) -> None:
        super().__init__(unet, vae, noise_scheduler, **kwargs)
        hint_channels = controlnet.config.conditioning_channels
        if hint_channels != 7:
            raise HarmonyInputError(
                None, f"the Harmony Controller takes a 7-channel hint, not {hint_channels}"
            )
        if not 0.0 <= low_timestep_probability <= 1.0:
            raise HarmonyInputError(
                None, f"low_timestep_probability must be in [0, 1], got {low_timestep_probability}"
            )
        if reads_noisy_latents and controlnet.config.in_channels != unet.config.in_channels:
            raise HarmonyInputError(
                None,
                f"reads_noisy_latents needs a ControlNet taking the UNet's {unet.config.in_channels} input "
                f"channels, not {controlnet.config.in_channels}",
            )
        self.unet.requires_grad_(False)
        self.controlnet = controlnet
        self.maca = MACABank.from_controlnet(controlnet, maca_pooling) if use_maca else None
        self.clear_vae = ClearVAESkips.from_vae(vae).requires_grad_(False) if use_clear_vae else None
        self.reads_noisy_latents = reads_noisy_latents
        self.diffharmony_checkpoint = diffharmony_checkpoint
        self.clear_vae_pretrained = clear_vae_pretrained
        self.controller_pretrained = controller_pretrained
        self.low_timestep_probability = low_timestep_probability
        self.low_timestep_limit = low_timestep_limit
        self.canny_thresholds = tuple(canny_thresholds)
        self.control_scale = control_scale

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load stage 1 (pipeline, UNet), the Clear-VAE, then the controller or its copy of the UNet."""
        super().load_pretrained()
        if self.diffharmony_checkpoint:
            load_unet_from_checkpoint(self.unet, self.diffharmony_checkpoint)
        if self.clear_vae_pretrained and self.clear_vae is not None:
            load_clear_vae(self.clear_vae_pretrained, self.vae, self.clear_vae)
        if self.controller_pretrained:
            load_pretrained_weights(self.controlnet, self.controller_pretrained, "controlnet")
            if self.maca is not None:
                load_pretrained_weights(self.maca, self.controller_pretrained, "maca")
        else:
            initialize_controlnet_from_unet(self.controlnet, self.unet)

    def controller_modules(self) -> list[tuple[str, nn.Module]]:
        """The trained parts: the ControlNet and the MACAs."""
        parts: list[tuple[str, nn.Module]] = [("controlnet", self.controlnet)]
        if self.maca is not None:
            parts.append(("maca", self.maca))
        return parts

    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The controller's parameters (the UNet stays frozen)."""
        return [
            (f"{prefix}.{name}", p)
            for prefix, module in self.controller_modules()
            for name, p in module.named_parameters()
        ]

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the controller as ``<directory>/controller/{controlnet,maca}`` (diffusers format)."""
        for name, module in self.controller_modules():
            module.save_pretrained(Path(directory) / "controller" / name)

    # --- the model --------------------------------------------------------------------------------
    @property
    def latent_decoder(self) -> LatentDecoder:
        """The Clear-VAE guided by the composite's skips (or the plain VAE)."""
        if self.clear_vae is None:
            return VAEDecoder(self.vae)
        return ClearVAEDecoder(self.vae, self.clear_vae)

    def hint(self, composite: torch.Tensor, mask: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The controller's 7-channel hint (edges found at the input's resolution, then resized)."""
        low, high = self.canny_thresholds
        return controller_hint(composite, mask, size, low, high)

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor,
        composite_latents: torch.Tensor,
        extras: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The frozen UNet's output with the Harmony Controller's residuals (``extras`` holds the hint)."""
        if not extras or HINT_KEY not in extras:
            raise ValueError("R2R needs the controller hint in extras")
        sample = inpainting_input(latents, mask, composite_latents)
        text = self.null_text(latents.shape[0]).to(sample.dtype)
        down, mid = controller_residuals(
            self.controlnet,
            self.maca,
            sample,
            timesteps,
            text,
            extras[HINT_KEY],
            mask,
            self.reads_noisy_latents,
            self.control_scale,
        )
        return self.unet(
            sample,
            timesteps,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    # --- training ---------------------------------------------------------------------------------
    def sample_timesteps(self, batch_size: int) -> torch.Tensor:
        """A mixture: below ``low_timestep_limit`` with ``low_timestep_probability``, else uniform."""
        total = self.noise_scheduler.config.num_train_timesteps
        uniform = torch.randint(0, total, (batch_size,), device=self.device)
        low = torch.randint(0, min(self.low_timestep_limit, total), (batch_size,), device=self.device)
        pick_low = torch.rand(batch_size, device=self.device) < self.low_timestep_probability
        return torch.where(pick_low, low, uniform)

    def training_extras(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The hint at the training resolution."""
        return {HINT_KEY: self.hint(batch[keys.COMPOSITE], batch[keys.MASK])}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the controller; default AdamW, lr 1e-5 (paper)."""
        parameters = [p for _, p in self.ema_named_parameters() if p.requires_grad]
        if self.optimizer is None:
            return torch.optim.AdamW(parameters, lr=1e-5)
        return self.optimizer(parameters)

    # --- generation -------------------------------------------------------------------------------
    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """DiffHarmony's condition plus the hint, its edges found at the input's own resolution."""
        condition = super().condition(batch, generators)
        condition.extras[HINT_KEY] = self.hint(batch[keys.COMPOSITE], batch[keys.MASK], self.inference_size)
        return condition
