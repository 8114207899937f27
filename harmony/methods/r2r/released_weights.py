"""The authors' released R2R weights, read into harmony's modules.

The release (Hugging Face ``1243asdad/region2region``, laid out as the official ``inference/checkpoints``)
has two folders:

- ``stable-diffusion-inpainting/``: a diffusers inpainting pipeline whose ``unet/`` is the frozen
  DiffHarmony UNet and whose ``controlnet/`` is the Harmony Controller in the official code's own class
  (a diffusers ControlNet with the four MACAs inside, as ``PCCAs.<i>``);
- ``clear_vae/``: the Clear-VAE in the official class ``AutoencoderKL_Skip`` (the SD VAE, a 1×1
  ``skip_connect`` convolution in each decoder resnet and an Adaptive Filter per encoder skip).

Harmony keeps the plain diffusers modules and puts R2R's additions beside them, so the import splits
each folder in two (what :meth:`~harmony.methods.r2r.ClearVAE.export_pretrained` and
:meth:`~harmony.methods.r2r.R2R.export_pretrained` write, and ``clear_vae_pretrained`` /
``controller_pretrained`` read):

- ``clear_vae/`` → ``vae/`` (the VAE's own names) and ``skips/``
  (:class:`~harmony.methods.r2r.ClearVAESkips`):
  ``decoder.up_blocks.<b>.resnets.<r>.skip_connect.conv.weight`` is ``zero_convs.<3b + r>`` (decoding
  order, three resnets per up block), ``filters.<k>.alpha/beta`` are the filters' weights. The release
  also stores each filter's fixed kernels (fp16, times 1e-3); harmony rebuilds them, so they are only
  checked against harmony's, not loaded.
- The official filter's forward pairs ``alpha[4], alpha[5]`` with the diagonal Sobels and ``alpha[6],
  alpha[7]`` with the Roberts kernels, and its Sobel x/y kernels have the opposite sign of harmony's
  (``kornia``'s convention). The import reorders and negates those weights, so the imported filter
  computes what the released one does.
- ``controlnet/`` → ``controlnet/`` (every name but ``PCCAs.*``) and ``maca/``
  (:class:`~harmony.methods.r2r.MACABank`: ``PCCAs.<i>.conv1`` is the foreground convolution, ``conv2``
  the background one, ``mlp`` the MLP). The released ControlNet's ``conv_in`` takes the 4-channel latent
  where harmony's, made from the inpainting UNet's config, takes 9; the controller never reads the noisy
  latents (``reads_noisy_latents: false``), so the import builds the released variant
  (``build_controlnet(in_channels=4)``) and the weights load strictly.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel

from harmony.errors import HarmonyInputError, load_strictly
from harmony.methods.diffharmony.released_weights import read_diffusers_weights
from harmony.methods.r2r.adaptive_filter import fixed_kernels
from harmony.methods.r2r.clear_vae import ClearVAESkips
from harmony.methods.r2r.maca import MACABank
from harmony.nn.latent import encoder_feature_channels

RELEASED_KERNEL_NAMES = (
    "Sobel_x",
    "Sobel_y",
    "Laplation",
    "Edge",
    "Roberts_x",
    "Roberts_y",
    "Sobel_xy",
    "Sobel_yx",
)
"""The official names of the fixed kernels, in harmony's ``adaptive_filter.KERNEL_NAMES`` order."""

RELEASED_KERNEL_SIGNS = torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
"""Released kernel = sign × harmony's kernel (the Sobel x/y kernels are mirrored)."""

RELEASED_ALPHA_ORDER = [0, 1, 2, 3, 6, 7, 4, 5, 8]
"""``alpha_harmony[i]`` weighs the kernel the official forward weighs with ``alpha_release[order[i]]``."""

MACA_PARTS = {"conv1": "foreground_conv", "conv2": "background_conv", "mlp": "mlp"}
"""Names inside a released ``PCCAs.<i>`` → names inside a :class:`MACABank` block."""

_KERNEL_SCALE = 1e-3
# The release keeps its kernels in float16, where every tap (±1, 2, 4, 8 × 1e-3) is the float32 one times
# the same factor; folding that factor into the kernels' weights makes the imported filter the released one.
_FLOAT16_KERNEL_FACTOR = float(torch.tensor(_KERNEL_SCALE, dtype=torch.float16)) / _KERNEL_SCALE


def _alpha_factors() -> torch.Tensor:
    """Harmony's ``alpha[i]`` = the released weight of its kernel ``i`` × factor ``i`` (the high-pass: 1)."""
    return torch.cat([RELEASED_KERNEL_SIGNS * _FLOAT16_KERNEL_FACTOR, torch.ones(1)])


def _released_kernels(channels: int) -> dict[str, torch.Tensor]:
    kernels = fixed_kernels(_KERNEL_SCALE) * RELEASED_KERNEL_SIGNS[:, None, None]
    return {
        name: kernel.expand(channels, 1, 3, 3).to(torch.float16)
        for name, kernel in zip(RELEASED_KERNEL_NAMES, kernels, strict=True)
    }


def clear_vae_state_from_release(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a released ``AutoencoderKL_Skip`` state dict into the VAE's and :class:`ClearVAESkips`'.

    Raises:
        HarmonyInputError: A fixed kernel is not the one harmony rebuilds, or a name is not the format's.
    """
    vae, skips = {}, {}
    for name, value in state.items():
        parts = name.split(".")
        if name.endswith(".skip_connect.conv.weight") and parts[:2] == ["decoder", "up_blocks"]:
            block, resnet = int(parts[2]), int(parts[4])
            skips[f"zero_convs.{3 * block + resnet}.weight"] = value
        elif parts[0] == "filters" and len(parts) == 3:
            if parts[2] == "alpha":
                alpha = value.float()[RELEASED_ALPHA_ORDER] * _alpha_factors().to(value.device)
                skips[name] = alpha.to(value.dtype)
            elif parts[2] == "beta":
                skips[name] = value
            elif parts[2] in RELEASED_KERNEL_NAMES:
                expected = _released_kernels(value.shape[0])[parts[2]]
                if value.shape != expected.shape or not torch.allclose(value.float(), expected.float()):
                    raise HarmonyInputError(
                        None, f"the Clear-VAE's fixed kernel {name} is not R2R's {parts[2]}"
                    )
            else:
                raise HarmonyInputError(None, f"unexpected parameter {name!r} in an R2R clear_vae")
        elif parts[0] in ("encoder", "decoder", "quant_conv", "post_quant_conv"):
            vae[name] = value
        else:
            raise HarmonyInputError(None, f"unexpected parameter {name!r} in an R2R clear_vae")
    return vae, skips


def release_state_from_clear_vae(vae: AutoencoderKL, skips: ClearVAESkips) -> dict[str, torch.Tensor]:
    """The inverse of :func:`clear_vae_state_from_release`, with the release's fixed kernels."""
    released = dict(vae.state_dict())
    for name, value in skips.state_dict().items():
        parts = name.split(".")
        if parts[0] == "zero_convs":
            block, resnet = divmod(int(parts[1]), 3)
            released[f"decoder.up_blocks.{block}.resnets.{resnet}.skip_connect.conv.weight"] = value
        elif parts[2] == "alpha":
            # The order is its own inverse (it swaps 4↔6 and 5↔7).
            released[name] = (value.float() / _alpha_factors().to(value.device))[RELEASED_ALPHA_ORDER].to(
                value.dtype
            )
        else:
            released[name] = value
    widths = encoder_feature_channels(tuple(vae.config.block_out_channels), vae.config.layers_per_block)
    for index, channels in enumerate(widths):
        released |= {f"filters.{index}.{kernel}": v for kernel, v in _released_kernels(channels).items()}
    return released


def controller_state_from_release(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a released controller state dict into the ControlNet's and the :class:`MACABank`'s.

    Raises:
        HarmonyInputError: A MACA parameter is not the format's.
    """
    controlnet, maca = {}, {}
    for name, value in state.items():
        if not name.startswith("PCCAs."):
            controlnet[name] = value
            continue
        try:
            _, index, part, rest = name.split(".", 3)
            maca[f"blocks.{int(index)}.{MACA_PARTS[part]}.{rest}"] = value
        except (KeyError, ValueError):
            raise HarmonyInputError(None, f"unexpected parameter {name!r} in an R2R controlnet") from None
    return controlnet, maca


def release_state_from_controller(controlnet: ControlNetModel, maca: MACABank) -> dict[str, torch.Tensor]:
    """The inverse of :func:`controller_state_from_release`."""
    parts = {ours: released for released, ours in MACA_PARTS.items()}
    released = dict(controlnet.state_dict())
    for name, value in maca.state_dict().items():
        _, index, part, rest = name.split(".", 3)
        released[f"PCCAs.{index}.{parts[part]}.{rest}"] = value
    return released


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise HarmonyInputError(folder / "config.json", f"cannot read the config ({error})") from None


def _accepted(config: dict, cls: type) -> dict:
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {key: value for key, value in config.items() if key in names}


def load_released_clear_vae(folder: str | Path) -> tuple[AutoencoderKL, ClearVAESkips]:
    """The released ``clear_vae/`` folder as a diffusers VAE and its :class:`ClearVAESkips`, loaded strictly.

    Raises:
        HarmonyInputError: The folder, its config or its weights are missing or do not fit.
    """
    folder = Path(folder)
    config = _read_config(folder)
    if not config.get("use_skip", False):
        raise HarmonyInputError(folder, "not a Clear-VAE: its config has no use_skip")
    arguments = _accepted(config, AutoencoderKL)
    levels = len(config.get("block_out_channels", ()))
    arguments["down_block_types"] = ("DownEncoderBlock2D",) * levels
    arguments["up_block_types"] = ("UpDecoderBlock2D",) * levels
    vae = AutoencoderKL(**arguments)
    skips = ClearVAESkips.from_vae(vae)
    vae_state, skips_state = clear_vae_state_from_release(read_diffusers_weights(folder))
    load_strictly(vae, vae_state, folder, "weights do not fit the VAE")
    load_strictly(skips, skips_state, folder, "weights do not fit the Clear-VAE's skips")
    return vae, skips


def load_released_controller(folder: str | Path) -> tuple[ControlNetModel, MACABank]:
    """The released ``controlnet/`` folder as a diffusers ControlNet and its :class:`MACABank`, strictly.

    Raises:
        HarmonyInputError: The folder, its config or its weights are missing or do not fit.
    """
    folder = Path(folder)
    config = _read_config(folder)
    if config.get("conditioning_channels") != 7:
        raise HarmonyInputError(folder, "not the Harmony Controller: its hint is not 7 channels")
    controlnet = ControlNetModel(**_accepted(config, ControlNetModel))
    maca = MACABank.from_controlnet(controlnet)
    controlnet_state, maca_state = controller_state_from_release(read_diffusers_weights(folder))
    load_strictly(controlnet, controlnet_state, folder, "weights do not fit the ControlNet")
    load_strictly(maca, maca_state, folder, "weights do not fit the MACAs")
    return controlnet, maca
