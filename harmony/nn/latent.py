"""The latent-diffusion harmonization core shared by DiffHarmony, R2R and the classifier-guided LDM.

The diffusers components are used as they are (``UNet2DConditionModel``, ``AutoencoderKL``,
``DDPMScheduler``, ``EulerAncestralDiscreteScheduler``); this module adds what harmonization needs around
them:

* building the Stable-Diffusion-1.x inpainting architecture offline from the configs shipped in
  ``harmony/configs`` (:func:`build_unet`, :func:`build_vae`, :func:`build_noise_scheduler`), and loading
  pretrained weights into it later, from a hub id or a local folder (:func:`load_pretrained_weights`);
* VAE encoding/decoding of ``[0, 1]`` images with the scale factor of the VAE's config;
* the 9-channel UNet input ``cat[noisy latent, latent-grid mask, latent of the full composite]``;
* the empty-prompt text embedding (:class:`NullTextEmbedding`);
* the foreground-weighted latent MSE and the training target of the scheduler's prediction type;
* seeded ancestral sampling (:func:`sample_latents`).

Pretrained weights are never touched when a model is built: methods load them when training or
inference starts, so building a model (``harmony summary``, the tests) needs no network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from harmony.errors import HarmonyInputError

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
"""Folder of the component configs shipped with harmony (``<preset>/<component>/config.json``)."""

TEXT_SEQUENCE_LENGTH = 77
"""Token length of the CLIP text encoder of Stable Diffusion 1.x."""

Generators = torch.Generator | list[torch.Generator] | None


# --- building the architecture offline ------------------------------------------------------------
def component_config_path(config: str, component: str) -> Path:
    """Find the folder holding a component's config.

    Args:
        config: A preset name under ``harmony/configs`` (``sd15_inpainting``), or a local folder that is
            either a diffusers pipeline (with a ``<component>/`` subfolder) or the component itself.
        component: ``unet``, ``vae`` or ``scheduler``.

    Raises:
        HarmonyInputError: Neither a preset nor a folder with the component's config.
    """
    for root in (CONFIGS_DIR / config, Path(config)):
        for folder in (root / component, root):
            if (folder / "config.json").is_file() or (folder / "scheduler_config.json").is_file():
                return folder
    presets = sorted(path.name for path in CONFIGS_DIR.iterdir() if path.is_dir())
    raise HarmonyInputError(
        config, f"no {component} config here; use a folder or one of the presets {presets}"
    )


def build_unet(config: str = "sd15_inpainting") -> UNet2DConditionModel:
    """Build a denoising UNet with random weights from a shipped or local config.

    Args:
        config: Preset name (``sd15_inpainting``: the Stable-Diffusion-1.x inpainting UNet, 9 input
            channels, 859.54M parameters) or a local pipeline/UNet folder.
    """
    return UNet2DConditionModel.from_config(
        UNet2DConditionModel.load_config(component_config_path(config, "unet"))
    )


def build_vae(config: str = "sd15_inpainting") -> AutoencoderKL:
    """Build the latent autoencoder with random weights from a shipped or local config.

    Args:
        config: Preset name (``sd15_inpainting``: the Stable-Diffusion-1.x VAE, 83.65M parameters) or a
            local pipeline/VAE folder.
    """
    return AutoencoderKL.from_config(AutoencoderKL.load_config(component_config_path(config, "vae")))


def build_noise_scheduler(config: str = "sd15_inpainting") -> DDPMScheduler:
    """Build the DDPM training noise schedule from a shipped or local config.

    Args:
        config: Preset name (``sd15_inpainting``: scaled-linear betas 0.00085–0.012, 1000 steps,
            epsilon prediction) or a local pipeline/scheduler folder.
    """
    return DDPMScheduler.from_config(DDPMScheduler.load_config(component_config_path(config, "scheduler")))


def build_sampler(noise_scheduler: SchedulerMixin) -> EulerAncestralDiscreteScheduler:
    """The Euler-ancestral sampler matching a training noise schedule.

    ``linspace`` timestep spacing is what the Stable-Diffusion pipelines get when they swap a DDIM/DDPM
    config for Euler-ancestral (the SD configs do not set a spacing), so 5 steps start at t = 999.
    """
    config = noise_scheduler.config
    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        trained_betas=config.trained_betas,
        prediction_type=config.prediction_type,
        timestep_spacing="linspace",
        steps_offset=config.steps_offset,
    )


def load_pretrained_weights(module: ModelMixin, source: str, subfolder: str | None = None) -> None:
    """Copy pretrained weights into an already built diffusers model.

    The architecture stays the one that was built (from a config), so a checkpoint that does not fit
    it is an error instead of a silently different model; the latent ``scaling_factor``/``shift_factor``
    of a VAE are taken from the pretrained config.

    Args:
        module: The model to fill (``UNet2DConditionModel``, ``AutoencoderKL``, any ``ModelMixin``).
        source: Hub id or local folder in the diffusers layout.
        subfolder: The component's subfolder in ``source`` (``unet``, ``vae``), or ``None`` when
            ``source`` is the component itself.

    Raises:
        HarmonyInputError: The weights cannot be read or do not fit the architecture.
    """
    where = f"{source}/{subfolder}" if subfolder else source
    try:
        pretrained = type(module).from_pretrained(source, subfolder=subfolder, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise HarmonyInputError(
            where, f"cannot load pretrained {type(module).__name__} weights ({error})"
        ) from None
    try:
        module.load_state_dict(pretrained.state_dict())
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise HarmonyInputError(
            where, f"weights do not fit the configured architecture ({first_line})"
        ) from None
    # The latent scale belongs to the trained weights, not to the architecture.
    for key in ("scaling_factor", "shift_factor"):
        value = pretrained.config.get(key)
        if key in module.config and value is not None and module.config[key] != value:
            module.register_to_config(**{key: value})
    log.info("loaded pretrained %s weights from %s", type(module).__name__, where)


# --- images <-> latents -----------------------------------------------------------------------------
def vae_scale_factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent cell covers along each side (8 for the SD VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_images(
    vae: AutoencoderKL, images: torch.Tensor, generator: Generators = None, sample: bool = True
) -> torch.Tensor:
    """Encode ``[0, 1]`` images into scaled latents (the diffusion model's space).

    Args:
        vae: The autoencoder; its config's ``scaling_factor`` (and ``shift_factor``) are applied.
        images: ``B×3×H×W`` in ``[0, 1]``.
        generator: Generator(s) for the posterior sample (one per image for batch-independent results).
        sample: Draw from the posterior (as Stable Diffusion does) instead of taking its mean.
    """
    posterior = vae.encode(images * 2 - 1).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Undo the scaling of :func:`encode_images`, giving what ``vae.decode`` expects."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Decode scaled latents into ``[0, 1]`` images (clamped)."""
    images = vae.decode(unscale_latents(vae, latents)).sample
    return ((images + 1) / 2).clamp(0, 1)


def latent_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Downsample a ``B×1×H×W`` mask to the latent grid with nearest-neighbour sampling."""
    return F.interpolate(mask, size=tuple(size), mode="nearest")


def unet_input(
    noisy_latents: torch.Tensor, mask: torch.Tensor, composite_latents: torch.Tensor
) -> torch.Tensor:
    """The 9-channel input of an inpainting UNet used for harmonization.

    Args:
        noisy_latents: ``B×4×h×w`` noisy latents of the target (already scaled by the sampler).
        mask: ``B×1×h×w`` foreground mask on the latent grid (:func:`latent_mask`).
        composite_latents: ``B×4×h×w`` latents of the *full* composite (not masked: the foreground's
            content is exactly what harmonization keeps).

    Returns:
        ``cat[noisy_latents, mask, composite_latents]`` along channels, in that order.
    """
    return torch.cat(
        [noisy_latents, mask.to(noisy_latents.dtype), composite_latents.to(noisy_latents.dtype)], dim=1
    )


def resize_for_inference(
    composite: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch to the square working size of a latent model.

    Images are resized bilinearly (antialiased when shrinking); the mask is resized bilinearly too and
    re-thresholded at 0.5, so it stays binary at any scale.
    """
    if composite.shape[-2:] == (size, size):
        return composite, (mask >= 0.5).to(composite.dtype)
    composite = F.interpolate(
        composite, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    mask = F.interpolate(mask.to(composite.dtype), size=(size, size), mode="bilinear", align_corners=False)
    return composite.clamp(0, 1), (mask >= 0.5).to(composite.dtype)


# --- text conditioning ------------------------------------------------------------------------------
class NullTextEmbedding(nn.Module):
    """The CLIP embedding of the empty prompt, kept as a buffer.

    Harmonization uses no text ("null text" adaptation): the embedding of ``""`` is computed once by
    :meth:`compute` (at the start of training/inference) and saved with the model, so the text encoder
    is never held afterwards. Until then it is all zeros, which is what a model built without a text
    encoder (tests, ``harmony summary``) uses.

    Args:
        dim: Width of the text embedding (the UNet's ``cross_attention_dim``; 768 for SD-1.x).
        length: Token length (77 for CLIP).
    """

    def __init__(self, dim: int, length: int = TEXT_SEQUENCE_LENGTH) -> None:
        super().__init__()
        self.register_buffer("embedding", torch.zeros(1, length, dim))

    @torch.no_grad()
    def compute(
        self,
        source: str,
        text_encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
    ) -> None:
        """Encode ``""`` with a CLIP text encoder and keep the result; the encoder is dropped afterwards.

        Args:
            source: Hub id or local folder of a pipeline holding the text encoder and tokenizer.
            text_encoder_subfolder: The text encoder's subfolder.
            tokenizer_subfolder: The tokenizer's subfolder.

        Raises:
            HarmonyInputError: They cannot be loaded, or the embedding's shape does not fit.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder=tokenizer_subfolder)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder=text_encoder_subfolder)
        except (OSError, ValueError) as error:
            raise HarmonyInputError(
                source, f"cannot load the CLIP text encoder/tokenizer ({error})"
            ) from None
        tokens = tokenizer(
            [""],
            padding="max_length",
            max_length=self.embedding.shape[1],
            truncation=True,
            return_tensors="pt",
        )
        embedding = text_encoder(tokens.input_ids)[0]
        if embedding.shape != self.embedding.shape:
            raise HarmonyInputError(
                source,
                f"text embedding shape {tuple(embedding.shape)} does not fit {tuple(self.embedding.shape)}",
            )
        self.embedding.copy_(embedding.to(self.embedding))
        log.info("computed the empty-prompt embedding with the text encoder of %s", source)

    def forward(self, batch_size: int) -> torch.Tensor:
        """The embedding repeated for a batch: ``B×length×dim``."""
        return self.embedding.expand(batch_size, -1, -1)


# --- training ---------------------------------------------------------------------------------------
def foreground_weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_foreground: float = 0.2
) -> torch.Tensor:
    """Foreground-weighted MSE: the masked MSE divided by ``max(foreground fraction, min_foreground)``.

    Each sample's squared error is averaged over all its elements with the background zeroed, then
    divided by its foreground fraction (clamped below at ``min_foreground``), so a small foreground is
    weighted up to ``1 / min_foreground`` times; the batch mean is returned.

    Args:
        prediction: ``B×C×h×w`` model output.
        target: ``B×C×h×w`` training target.
        mask: ``B×1×h×w`` binary foreground mask on the same grid.
        min_foreground: ``A_min`` (0.2 in DiffHarmony and R2R); 1.0 gives the plain masked MSE.
    """
    mask = mask.to(prediction.dtype)
    squared = (prediction.float() - target.float()).pow(2) * mask
    fraction = mask.float().mean(dim=(1, 2, 3))
    return (squared.mean(dim=(1, 2, 3)) / fraction.clamp(min=min_foreground)).mean()


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to predict under the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {kind!r}")


# --- sampling ---------------------------------------------------------------------------------------
def seeded_generators(seed: int, count: int) -> list[torch.Generator]:
    """``count`` CPU generators all seeded with ``seed``.

    One generator per image makes an image's result independent of the batch it is in, and CPU
    generators make it independent of the device.
    """
    return [torch.Generator("cpu").manual_seed(seed) for _ in range(count)]


@torch.no_grad()
def sample_latents(
    predict_noise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    shape: Sequence[int],
    num_steps: int,
    generator: Generators = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run a diffusers sampler from pure noise to clean latents.

    Args:
        predict_noise: ``(scaled noisy latents, t) -> model output``; the caller builds the UNet input
            around the latents (condition channels, text embedding, control residuals, guidance).
        scheduler: Any diffusers sampler (Euler-ancestral for DiffHarmony and R2R); stateful, so it is
            reset here.
        shape: ``B×C×h×w`` of the latents.
        num_steps: Denoising steps (5 in DiffHarmony, 10 in R2R).
        generator: Seeds the initial noise and the ancestral noise of every step.
        device: Device of the latents.

    Returns:
        The ``float32`` denoised latents.
    """
    scheduler.set_timesteps(num_steps, device=device)
    latents = randn_tensor(
        tuple(shape), generator=generator, device=torch.device(device), dtype=torch.float32
    )
    latents = latents * scheduler.init_noise_sigma
    for timestep in scheduler.timesteps:
        model_output = predict_noise(scheduler.scale_model_input(latents, timestep), timestep)
        latents = scheduler.step(model_output.float(), timestep, latents, generator=generator).prev_sample
    return latents
