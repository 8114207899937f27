"""The authors' released DiffHarmony / DiffHarmony++ weights, read into harmony's modules.

The release (``nicecv/DiffHarmony``) is a folder with ``base/``, a diffusers Stable-Diffusion inpainting
pipeline whose ``unet/`` is the trained 9-channel UNet, and ``condition_vae/``, the Harmony-VAE in the
official code's own class (``ConditionVAE``). The UNet and VAE are diffusers models and load as they
are; the Harmony-VAE's parameters are renamed onto :class:`~harmony.methods.diffharmony.HarmonyVAEModel`:

- ``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv`` are the plain VAE's (``vae.*``);
- ``conditional_encoder.*`` is the condition's encoder, its ``down_block_skip_convs`` and
  ``mid_block_skip_conv`` the skip convolutions, ``latent_skip_conv`` the latent skip;
- the official encoder reads the mask through a convolution of its own (``add_conv_in``, added to
  ``conv_in``'s output) where harmony's ``conv_in`` takes RGB and mask together. A sum of two
  convolutions of the same size is one convolution over the concatenated input, so the import
  concatenates the weights and adds the biases: the imported model decodes as the released one (checked
  against the official class to 2e-6 on random weights). Only the paper's initialisation differs
  (zero mask weights, Sec. 3.2, against the code's default initialisation), and it does not matter for
  trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harmony.errors import HarmonyInputError, load_strictly
from harmony.methods.diffharmony.harmony_vae import HarmonyVAEModel

RELEASE_PREFIXES = {
    "encoder.": "vae.encoder.",
    "decoder.": "vae.decoder.",
    "quant_conv.": "vae.quant_conv.",
    "post_quant_conv.": "vae.post_quant_conv.",
    "latent_skip_conv.": "condition.latent_skip_conv.",
    "conditional_encoder.down_block_skip_convs.": "condition.skip_convs.",
    "conditional_encoder.mid_block_skip_conv.": "condition.mid_skip_conv.",
    "conditional_encoder.": "condition.encoder.",
}
"""Released name prefix → harmony name prefix, most specific first (``add_conv_in`` is merged apart)."""

MASK_CONV = "conditional_encoder.add_conv_in."
CONDITION_CONV = "conditional_encoder.conv_in."


def _renamed(name: str) -> str:
    for released, ours in RELEASE_PREFIXES.items():
        if name.startswith(released):
            return ours + name[len(released) :]
    raise KeyError(name)


def harmony_vae_state_from_release(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released ``ConditionVAE`` state dict as a :class:`HarmonyVAEModel` state dict.

    Raises:
        HarmonyInputError: A parameter the release format does not have, or the mask convolution is missing.
    """
    converted = {}
    for name, value in state.items():
        if name.startswith(MASK_CONV):
            continue
        try:
            converted[_renamed(name)] = value
        except KeyError:
            raise HarmonyInputError(
                None, f"unexpected parameter {name!r} in a DiffHarmony condition_vae"
            ) from None
    try:
        mask_weight, mask_bias = state[MASK_CONV + "weight"], state[MASK_CONV + "bias"]
        rgb_weight, rgb_bias = state[CONDITION_CONV + "weight"], state[CONDITION_CONV + "bias"]
    except KeyError as error:
        raise HarmonyInputError(None, f"DiffHarmony condition_vae without {error.args[0]}") from None
    converted["condition.encoder.conv_in.weight"] = torch.cat([rgb_weight, mask_weight], dim=1)
    converted["condition.encoder.conv_in.bias"] = rgb_bias + mask_bias
    return converted


def release_state_from_harmony_vae(
    state: dict[str, torch.Tensor], image_channels: int = 3
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`harmony_vae_state_from_release` (the mask convolution gets a zero bias)."""
    ours_to_release = {ours: released for released, ours in RELEASE_PREFIXES.items()}
    released = {}
    for name, value in state.items():
        if name.startswith("condition.encoder.conv_in."):
            continue
        prefix = next(ours for ours in ours_to_release if name.startswith(ours))
        released[ours_to_release[prefix] + name[len(prefix) :]] = value
    weight, bias = state["condition.encoder.conv_in.weight"], state["condition.encoder.conv_in.bias"]
    released[CONDITION_CONV + "weight"] = weight[:, :image_channels]
    released[CONDITION_CONV + "bias"] = bias
    released[MASK_CONV + "weight"] = weight[:, image_channels:]
    released[MASK_CONV + "bias"] = torch.zeros_like(bias)
    return released


def read_diffusers_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a diffusers model folder (``diffusion_pytorch_model.safetensors`` or ``.bin``)."""
    safetensors_file = folder / "diffusion_pytorch_model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(safetensors_file)
    pickle_file = folder / "diffusion_pytorch_model.bin"
    if pickle_file.is_file():
        return torch.load(pickle_file, map_location="cpu", weights_only=True)
    raise HarmonyInputError(folder, "no diffusion_pytorch_model.safetensors or .bin in this folder")


def load_released_condition_vae(folder: str | Path) -> HarmonyVAEModel:
    """The released ``condition_vae/`` folder as a :class:`HarmonyVAEModel`, loaded strictly.

    Raises:
        HarmonyInputError: The folder, its config or its weights are missing or do not fit.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise HarmonyInputError(
            folder / "config.json", f"cannot read the condition_vae config ({error})"
        ) from None
    arguments = {key: config[key] for key in HarmonyVAEModel.config_arguments() if key in config}
    arguments["mask_channels"] = config.get("additional_in_channels", 1)
    model = HarmonyVAEModel(**arguments)
    state = harmony_vae_state_from_release(read_diffusers_weights(folder))
    load_strictly(model, state, folder, "weights do not fit the Harmony-VAE")
    return model
