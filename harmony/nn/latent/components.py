"""Building the diffusers components offline from shipped configs, and loading pretrained weights later.

Presets live in ``harmony/configs/<preset>/<component>/``:

* ``sd15_inpainting`` — Stable Diffusion 1.x inpainting: a 9-channel UNet (859.54M), the SD VAE (83.65M)
  and the DDPM training schedule (DiffHarmony, R2R);
* ``sd15_text_to_image`` — Stable Diffusion 1.5 text-to-image: the same UNet with 4 input channels
  (859.52M), the same VAE and schedule (Li et al. put their ControlNet on it);
* ``tiny_inpainting`` / ``tiny_text_to_image`` — diffusers test-sized mirrors of the two, for tests and
  CPU runs.

Each preset also has a ``controlnet/config.json`` with the widths of the ControlNet's hint encoder, whose
stride-2 stages must bring the pixel-resolution hint down to the latent grid (3 for the SD VAE's 8×, 1
for the tiny VAE's 2×).

Pretrained weights are never touched when a component is built: methods load them when training or
inference starts (:func:`load_pretrained_weights`, :func:`initialize_controlnet_from_unet`), so building a
model (``harmony summary``, the tests) needs no network.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin

from harmony.errors import HarmonyInputError, load_strictly

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
"""Folder of the component configs shipped with harmony (``<preset>/<component>/config.json``)."""


def component_config_path(config: str, component: str) -> Path:
    """Find the folder holding a component's config.

    Args:
        config: A preset name under ``harmony/configs`` (``sd15_inpainting``), or a local folder that is
            either a diffusers pipeline (with a ``<component>/`` subfolder) or the component itself.
        component: ``unet``, ``vae``, ``scheduler`` or ``controlnet``.

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
            channels, 859.54M parameters; ``sd15_text_to_image``: 4 input channels, 859.52M) or a local
            pipeline/UNet folder.
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


def build_controlnet(
    config: str = "sd15_inpainting", conditioning_channels: int = 3, in_channels: int | None = None
) -> ControlNetModel:
    """Build a ControlNet with random weights: a trainable copy of a UNet's encoder plus a hint encoder.

    The architecture is the UNet config's (same input channels, blocks and attention); the hint
    encoder's widths come from the preset's ``controlnet/config.json``. The ControlNet's zero
    convolutions start at zero, so until it trains it leaves the UNet's prediction unchanged. Its copy of
    the UNet's weights is made by :func:`initialize_controlnet_from_unet` once the UNet's pretrained
    weights are loaded, not here.

    Args:
        config: Preset name or a local pipeline folder (its ``unet/`` config, and ``controlnet/`` if any).
            ``sd15_inpainting`` with a 7-channel hint is R2R's Harmony Controller size (361.29M).
        conditioning_channels: Channels of the pixel-resolution hint image.
        in_channels: Channels of its latent input ``conv_in`` (default: the UNet's). R2R's release has 4
            where its UNet has 9; a controller that does not read the noisy latents never uses it.
    """
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    unet_config = UNet2DConditionModel.load_config(component_config_path(config, "unet"))
    options = {key: value for key, value in unet_config.items() if key in accepted}
    try:
        controlnet_config = ControlNetModel.load_config(component_config_path(config, "controlnet"))
    except HarmonyInputError:
        controlnet_config = {}
    options.update({key: value for key, value in controlnet_config.items() if key in accepted})
    options["conditioning_channels"] = conditioning_channels
    if in_channels is not None:
        options["in_channels"] = in_channels
    return ControlNetModel.from_config(options)


@torch.no_grad()
def initialize_controlnet_from_unet(controlnet: ControlNetModel, unet: UNet2DConditionModel) -> None:
    """Copy a UNet's input, time-embedding, encoder and mid-block weights into a ControlNet.

    This is how a ControlNet starts (Zhang & Agrawala 2023): a copy of the (pretrained) UNet's encoder;
    its hint encoder and zero convolutions keep their own initialisation. ``conv_in`` is copied only
    when the two take the same input channels.

    Raises:
        HarmonyInputError: The ControlNet was not built from this UNet's architecture.
    """
    pairs = [
        (controlnet.time_proj, unet.time_proj),
        (controlnet.time_embedding, unet.time_embedding),
        (controlnet.down_blocks, unet.down_blocks),
        (controlnet.mid_block, unet.mid_block),
    ]
    if controlnet.conv_in.weight.shape == unet.conv_in.weight.shape:
        pairs.append((controlnet.conv_in, unet.conv_in))
    for name in ("class_embedding", "add_embedding"):
        if getattr(controlnet, name, None) is not None and getattr(unet, name, None) is not None:
            pairs.append((getattr(controlnet, name), getattr(unet, name)))
    for target, source in pairs:
        load_strictly(
            target, source.state_dict(), None, "the ControlNet does not match the UNet's architecture"
        )


def load_pretrained_weights(module: ModelMixin, source: str, subfolder: str | None = None) -> None:
    """Copy pretrained weights into an already built diffusers model.

    The architecture stays the one that was built (from a config), so a checkpoint that does not fit
    it is an error instead of a silently different model; the latent ``scaling_factor``/``shift_factor``
    of a VAE are taken from the pretrained config.

    Args:
        module: The model to fill (``UNet2DConditionModel``, ``AutoencoderKL``, ``ControlNetModel``, any
            ``ModelMixin``).
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
    load_strictly(module, pretrained.state_dict(), where, "weights do not fit the configured architecture")
    # The latent scale belongs to the trained weights, not to the architecture.
    for key in ("scaling_factor", "shift_factor"):
        value = pretrained.config.get(key)
        if key in module.config and value is not None and module.config[key] != value:
            module.register_to_config(**{key: value})
    log.info("loaded pretrained %s weights from %s", type(module).__name__, where)
