"""Li et al. 2023's main model: a ControlNet on frozen Stable Diffusion, appearance guidance, colour transfer.

Choices the paper leaves open (it has no official code), each an option:

* **Hint.** The ControlNet is "conditioned on the composite"; the mask is given as a fourth hint channel
  (``hint_mask``) because without it the network cannot tell which region to change — the paper does not
  say. The hint is in ``[0, 1]``, as ControlNet's hints are.
* **Prompt.** The empty prompt (the paper mentions no text).
* **Training loss.** The plain latent-diffusion noise MSE over the whole latent, as ControlNet trains;
  only the ControlNet's parameters train (Adam, lr 1e-5, batch 4, 256 px — the paper's values).
* **Sampling.** DDIM with η = 0 (Algorithm 1's deterministic step), ``num_inference_steps`` 50 (not given).
* **Guidance** (:mod:`.appearance_guidance`): on by default with the scale ``s`` and ``n`` copies chosen
  by the sweep in ``README.md`` (the paper gives no values), on the whole image.
* **Colour transfer** (:mod:`harmony.postprocess`): applied to every output, HSV by default (the paper
  names HSV/HSL without preferring one).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from harmony.data import types as keys
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, save_config_hyperparameters
from harmony.methods.classifier_guided_ldm.appearance_guidance import (
    AppearanceGuidance,
    DecodedLatent,
    Region,
)
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.nn.latent import (
    Generators,
    NullTextEmbedding,
    SamplerName,
    build_sampler,
    decode_latents,
    diffusion_target,
    encode_images,
    initialize_controlnet_from_unet,
    load_pretrained_weights,
    sample_latents,
    unet_prediction,
    vae_scale_factor,
)
from harmony.postprocess import ColorTransferSpace, make_color_transfer


class ClassifierGuidedLDM(LatentDiffusionModule):
    """Li et al. 2023: a ControlNet on a frozen SD-1.5 text-to-image UNet, guided by appearance consistency.

    The ControlNet (a trainable copy of the UNet's encoder and mid block with zero-initialised residual
    convolutions) reads the noisy latent and a pixel-resolution hint — the composite and, with
    ``hint_mask``, the mask — and adds its residuals to the frozen UNet. Generation: seeded DDIM from pure
    noise, each step corrected by the appearance-consistency guidance (``guidance_scale`` s,
    ``guidance_copies`` n), decoded by the VAE, then the HSV/HSL colour transfer, and the composite's
    background pasted back. ``num_samples`` writes several harmonizations per input (the paper shows 5).

    Args:
        unet: The SD-1.5 text-to-image UNet (4 input channels), frozen.
        vae: The SD VAE, frozen.
        noise_scheduler: The DDPM training schedule; the sampler is derived from it.
        controlnet: The ControlNet, built from the UNet's config with ``3 + hint_mask`` hint channels
            (``harmony.nn.latent.build_controlnet``; 361M at SD-1.5 size).
        pretrained: Hub id or folder of an SD-1.5 pipeline (``unet/``, ``vae/``, ``text_encoder/``,
            ``tokenizer/``); ``None`` keeps random weights (tests).
        controlnet_pretrained: Folder of a trained ControlNet (what ``fit`` exports to
            ``<log_dir>/pretrained/controlnet``); without it the ControlNet is made from the UNet.
        hint_mask: Give the mask to the ControlNet as a fourth hint channel (not in the paper).
        optimizer: Optimizer of the ControlNet; default Adam, lr 1e-5 (paper).
        sampler: Sampler made from ``noise_scheduler``'s config (``ddim``: Algorithm 1).
        eta: DDIM's η (0: deterministic, as Algorithm 1).
        num_inference_steps: Sampling steps.
        guidance: Apply the appearance-consistency guidance.
        guidance_scale: ``s``; 300 and ``n`` = 4 were chosen by the sweep in ``README.md`` (tiny model on
            SyntheticHarmony; the paper gives no values, and at SD-1.5 size they are a starting point).
        guidance_copies: ``n``, noisy copies of the composite per step.
        guidance_region: Where the discriminator looks: ``image``, ``background`` or ``foreground``.
        guidance_decodes: ``noisy_latent`` (Algorithm 1) or ``predicted_original``.
        color_transfer: ``hsv``, ``hsl`` or ``none``: the Sec. 3.3 post-process of every output.
        num_samples: Outputs per input for ``predict`` (consecutive seeds).
        seed: Seed of the sampling noise.
        ema_decay: Decay of an EMA of the ControlNet; ``None`` (default, as ControlNet) disables it.
        gradient_checkpointing: Trade compute for memory in the UNet and the ControlNet.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Square working resolution (the paper: 256).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        controlnet: ControlNetModel,
        pretrained: str | None = None,
        controlnet_pretrained: str | None = None,
        hint_mask: bool = True,
        optimizer: OptimizerCallable | None = None,
        sampler: SamplerName = "ddim",
        eta: float = 0.0,
        num_inference_steps: int = 50,
        guidance: bool = True,
        guidance_scale: float = 300.0,
        guidance_copies: int = 4,
        guidance_region: Region = "image",
        guidance_decodes: DecodedLatent = "noisy_latent",
        color_transfer: ColorTransferSpace = "hsv",
        num_samples: int = 1,
        seed: int = 0,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(ema_decay, num_samples, seed, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, ("unet", "vae", "noise_scheduler", "controlnet", "optimizer"))
        hint_channels = 3 + int(hint_mask)
        if controlnet.config.conditioning_channels != hint_channels:
            raise HarmonyInputError(
                None,
                f"the ControlNet takes {controlnet.config.conditioning_channels} hint channels; "
                f"hint_mask={hint_mask} gives {hint_channels}",
            )
        if unet.config.in_channels != vae.config.latent_channels:
            raise HarmonyInputError(None, "ClassifierGuidedLDM needs a text-to-image UNet (4 input channels)")
        self.unet = unet.requires_grad_(False)
        self.vae = vae.requires_grad_(False)
        self.controlnet = controlnet
        self.null_text = NullTextEmbedding(unet.config.cross_attention_dim)
        self.noise_scheduler = noise_scheduler
        self.sampler = build_sampler(noise_scheduler, sampler)
        self.pretrained = pretrained
        self.controlnet_pretrained = controlnet_pretrained
        self.hint_mask = hint_mask
        self.optimizer = optimizer
        self.eta = eta
        self.num_inference_steps = num_inference_steps
        self.guidance = guidance
        self.guidance_scale = guidance_scale
        self.guidance_copies = guidance_copies
        self.guidance_region = guidance_region
        self.guidance_decodes = guidance_decodes
        self.color_transfer = make_color_transfer(color_transfer)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            controlnet.enable_gradient_checkpointing()
        self.check_inference_size(
            vae_scale_factor(vae) * 2 ** (len(unet.config.block_out_channels) - 1), "this UNet/VAE"
        )

    # --- weights ----------------------------------------------------------------------------------
    def load_pretrained(self) -> None:
        """Load Stable Diffusion, then the trained ControlNet or its copy of the UNet's encoder."""
        if self.pretrained:
            load_pretrained_weights(self.unet, self.pretrained, "unet")
            load_pretrained_weights(self.vae, self.pretrained, "vae")
            self.null_text.compute(self.pretrained)
        else:
            rank_zero_warn(
                "ClassifierGuidedLDM: no pretrained pipeline; random UNet/VAE, zero prompt embedding"
            )
        if self.controlnet_pretrained:
            load_pretrained_weights(self.controlnet, self.controlnet_pretrained)
        else:
            initialize_controlnet_from_unet(self.controlnet, self.unet)

    def ema_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The ControlNet's parameters (the only trained part)."""
        return [(f"controlnet.{name}", p) for name, p in self.controlnet.named_parameters()]

    def export_pretrained(self, directory: str | Path) -> None:
        """Save the ControlNet as ``<directory>/controlnet`` (load it with ``controlnet_pretrained``)."""
        self.controlnet.save_pretrained(Path(directory) / "controlnet")

    # --- the model --------------------------------------------------------------------------------
    def hint(self, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The ControlNet's pixel-resolution hint in ``[0, 1]``: ``cat[composite, mask]`` or the composite."""
        parts = [composite.float()] + ([mask.float()] if self.hint_mask else [])
        return torch.cat(parts, dim=1)

    def predict_noise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, hint: torch.Tensor
    ) -> torch.Tensor:
        """The frozen UNet's output with the ControlNet's residuals, under the empty prompt."""
        text = self.null_text(latents.shape[0]).to(latents.dtype)
        return unet_prediction(self.unet, latents, timesteps, text, self.controlnet, hint)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The latent-diffusion noise loss on the real image's latent, the composite as the hint."""
        with torch.no_grad():
            latents = encode_images(self.vae, batch[keys.TARGET]).float()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=self.device
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict_noise(noisy, timesteps, self.hint(batch[keys.COMPOSITE], batch[keys.MASK]))
        loss = F.mse_loss(
            prediction.float(), diffusion_target(self.noise_scheduler, latents, noise, timesteps)
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=latents.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer of the ControlNet; default Adam, lr 1e-5 (paper)."""
        parameters = list(self.controlnet.parameters())
        if self.optimizer is None:
            return torch.optim.Adam(parameters, lr=1e-5)
        return self.optimizer(parameters)

    # --- generation -------------------------------------------------------------------------------
    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The working-size composite and mask, and the hint made from them."""
        condition = self.working_condition(batch)
        condition.extras["hint"] = self.hint(condition.composite, condition.mask)
        return condition

    def guidance_hook(
        self, condition: GenerationCondition, generators: Generators
    ) -> AppearanceGuidance | None:
        """Algorithm 1's per-step correction, or ``None`` when guidance is off (or its scale is 0)."""
        if not self.guidance or self.guidance_scale == 0:
            return None
        return AppearanceGuidance(
            self.vae,
            condition.composite,
            condition.mask,
            self.guidance_scale,
            self.guidance_copies,
            self.guidance_region,
            self.guidance_decodes,
            generators,
        )

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """Guided DDIM from seeded noise (gradients are enabled only inside the guidance)."""
        hint = condition.extras["hint"]
        batch, _, height, width = condition.composite.shape
        scale = vae_scale_factor(self.vae)
        shape = (batch, self.unet.config.in_channels, height // scale, width // scale)

        def predict(latents: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.predict_noise(latents, timestep, hint)

        return sample_latents(
            predict,
            self.sampler,
            shape,
            self.num_inference_steps,
            generators,
            condition.composite.device,
            eta=self.eta,
            hook=self.guidance_hook(condition, generators),
        )

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """Decode with the VAE, then the colour transfer (foreground only; ``color_transfer: none``: off)."""
        images = decode_latents(self.vae, latents)
        if self.color_transfer is None:
            return images
        return self.color_transfer(images, condition.composite, condition.mask)
