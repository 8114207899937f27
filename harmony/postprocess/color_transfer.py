r"""The colour-transfer post-process of Li et al. 2023, *Image Harmonization with Diffusion Model* (Sec. 3.3).

A latent diffusion model's autoencoder loses fine detail (the paper's Fig. 3: text on a glove becomes
unreadable), while what harmonization should change is colour. The paper therefore keeps only the
generated image's colour: it converts the generated image to HSV or HSL, replaces the lightness channel
(V or L) by the unharmonized composite's, and linearly transforms that channel "based on the lightness
channel of the background" so the foreground's brightness agrees with the background's. There is no
official code; the readings this module makes are:

- **Which pixels.** The foreground is ``mask >= 0.5`` and the background the rest; the result replaces
  the foreground only and is blended in with the soft mask, so pixels whose mask is 0 keep the
  composite's value bit for bit.
- **The linear transformation** (``match``). ``"mean_std"`` (default) shifts and scales the composite's
  foreground lightness so its mean and standard deviation over the foreground equal the mean and
  standard deviation of the composite's lightness over the background (Reinhard-style moment matching on
  one channel); ``"mean"`` only shifts it to the background's mean; ``"none"`` keeps the composite's
  lightness as it is. The result is clamped to ``[0, 1]``.
- **Degenerate masks.** An image with no foreground is returned as its composite. An image with no
  background has nothing to match, so its lightness is the composite's unmatched (as ``"none"``). A
  foreground of constant lightness has no deviation to scale and is only shifted.
- Hue and saturation stay the generated image's, in the chosen space. Where they are undefined (a grey
  or black generated pixel) the output is grey at the new lightness.

Every method can use it as an output post-process (:attr:`HarmonizationModule.output_postprocess
<harmony.methods.base.HarmonizationModule>`), measured on its own:

- ``harmony harmonize ... --color-transfer hsv`` (or ``hsl``);
- ``harmony test``/``validate``/``predict`` through :class:`ColorTransferCallback`::

      harmony test --config X.yaml --trainer.callbacks+=harmony.postprocess.ColorTransferCallback \
          --trainer.callbacks.space=hsl --trainer.callbacks.match=mean

  (``--trainer.callbacks.KEY=VALUE`` sets an argument of the callback added last), or in YAML::

      trainer:
        callbacks:
          - class_path: harmony.postprocess.ColorTransferCallback
            init_args: {space: hsl, match: mean_std}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import kornia
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

LightnessSpace = Literal["hsv", "hsl"]
"""The colour space whose lightness channel is transferred: V of HSV or L of HSL."""

ColorTransferSpace = Literal["none", "hsv", "hsl"]
"""A colour-transfer post-process by name, as the command line gives it (``none``: no post-process)."""

LightnessMatch = Literal["mean_std", "mean", "none"]
"""How the composite's foreground lightness is matched to the background's (see the module docstring)."""

# Below this deviation a foreground's lightness is taken as constant (a 1/255 step is 3.9e-3).
_FLAT_STD = 1e-6


def _check_options(space: str, match: str) -> None:
    if space not in get_args(LightnessSpace):
        raise ValueError(f"space must be one of {get_args(LightnessSpace)}, got {space!r}")
    if match not in get_args(LightnessMatch):
        raise ValueError(f"match must be one of {get_args(LightnessMatch)}, got {match!r}")


def _masked_mean_std(values: torch.Tensor, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean and (population) standard deviation of ``B×1×H×W`` values over a boolean region."""
    weights = region.float()
    count = weights.sum(dim=(-3, -2, -1), keepdim=True).clamp_min(1)
    mean = (values * weights).sum(dim=(-3, -2, -1), keepdim=True) / count
    variance = ((values - mean).square() * weights).sum(dim=(-3, -2, -1), keepdim=True) / count
    return mean, variance.sqrt()


def transfer_lightness(
    generated: torch.Tensor,
    composite: torch.Tensor,
    mask: torch.Tensor,
    space: LightnessSpace = "hsv",
    match: LightnessMatch = "mean_std",
) -> torch.Tensor:
    """Keep the generated image's hue and saturation and the composite's lightness, matched to the background.

    Li et al. 2023 (Sec. 3.3) convert the generated image to HSV/HSL, replace its lightness channel by
    the composite's and transform that channel linearly from the background's lightness. Here, per image:
    with ``F`` the foreground (``mask >= 0.5``) and ``B`` the background pixels, the composite's lightness
    ``c`` becomes ``(c - mean_F(c)) * std_B(c) / std_F(c) + mean_B(c)`` (``match="mean_std"``),
    ``c - mean_F(c) + mean_B(c)`` (``"mean"``) or stays ``c`` (``"none"``), clamped to ``[0, 1]``; it is
    combined with the generated image's hue and saturation and converted back to RGB. The result is
    blended into the composite with the soft mask, so the background is the composite's exactly. An image
    without foreground is returned unchanged, one without background gets no matching and a flat
    foreground (no deviation) is only shifted. Computed in ``float32`` on the inputs' device.

    Args:
        generated: ``B×3×H×W`` harmonized images in ``[0, 1]`` (any float dtype).
        composite: ``B×3×H×W`` composites they were made from, in ``[0, 1]``.
        mask: ``B×1×H×W`` soft foreground masks in ``[0, 1]``.
        space: ``"hsv"`` transfers V (the largest RGB channel), ``"hsl"`` transfers L (the mean of the
            largest and smallest).
        match: The linear transformation of the transferred lightness (see above).

    Returns:
        ``B×3×H×W`` images in ``[0, 1]``, in the promoted dtype of ``generated`` and ``composite``.

    Raises:
        ValueError: On an unknown ``space`` or ``match``, or inputs of mismatched shapes.
    """
    _check_options(space, match)
    if generated.ndim != 4 or generated.shape[1] != 3 or composite.shape != generated.shape:
        raise ValueError(
            f"generated and composite must both be B×3×H×W, got {tuple(generated.shape)} and "
            f"{tuple(composite.shape)}"
        )
    if mask.shape != (generated.shape[0], 1, *generated.shape[-2:]):
        raise ValueError(f"mask must be B×1×H×W for images {tuple(generated.shape)}, got {tuple(mask.shape)}")
    dtype = torch.promote_types(generated.dtype, composite.dtype)
    generated, original = generated.float().clamp(0, 1), composite.float()
    alpha = mask.float().clamp(0, 1)
    foreground = alpha >= 0.5
    has_foreground = foreground.any(dim=(-3, -2, -1), keepdim=True)
    has_background = (~foreground).any(dim=(-3, -2, -1), keepdim=True)

    to_space, from_space, channel = (
        (kornia.color.rgb_to_hsv, kornia.color.hsv_to_rgb, 2)
        if space == "hsv"
        else (kornia.color.rgb_to_hls, kornia.color.hls_to_rgb, 1)
    )
    lightness = to_space(original.clamp(0, 1))[:, channel : channel + 1]
    if match != "none":
        foreground_mean, foreground_std = _masked_mean_std(lightness, foreground)
        background_mean, background_std = _masked_mean_std(lightness, ~foreground)
        gain = torch.ones_like(foreground_std)
        if match == "mean_std":
            flat = foreground_std <= _FLAT_STD
            gain = torch.where(flat, gain, background_std / foreground_std.clamp_min(_FLAT_STD))
        matched = (lightness - foreground_mean) * gain + background_mean
        lightness = torch.where(has_background, matched, lightness)
    channels = list(to_space(generated).unbind(dim=1))
    channels[channel] = lightness.clamp(0, 1)[:, 0]
    transferred = from_space(torch.stack(channels, dim=1)).clamp(0, 1)

    # lerp is exact at weight 1 (a full-foreground pixel is the transferred one); `where` keeps every
    # mask-0 pixel the composite's, bit for bit.
    alpha = torch.where(has_foreground, alpha, torch.zeros_like(alpha))
    output = torch.lerp(original, transferred, alpha)
    return torch.where(alpha > 0, output, original).to(dtype)


@dataclass(frozen=True)
class ColorTransfer:
    """Li et al. 2023's colour transfer as an output post-process (:func:`transfer_lightness`, fixed options).

    Args:
        space: ``"hsv"`` (transfer V) or ``"hsl"`` (transfer L).
        match: How the transferred lightness is matched to the background's: ``"mean_std"``,
            ``"mean"`` or ``"none"``.
    """

    space: LightnessSpace = "hsv"
    match: LightnessMatch = "mean_std"

    def __post_init__(self) -> None:
        _check_options(self.space, self.match)

    def __call__(self, generated: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply :func:`transfer_lightness` to ``B×3×H×W`` outputs, composites and ``B×1×H×W`` masks."""
        return transfer_lightness(generated, composite, mask, space=self.space, match=self.match)


def make_color_transfer(
    space: ColorTransferSpace, match: LightnessMatch = "mean_std"
) -> ColorTransfer | None:
    """The post-process a name stands for: ``None`` for ``"none"``, else a :class:`ColorTransfer`.

    Args:
        space: ``"none"``, ``"hsv"`` or ``"hsl"``.
        match: See :class:`ColorTransfer`.

    Raises:
        ValueError: On an unknown ``space``, or an unknown ``match`` with a colour space.
    """
    return None if space == "none" else ColorTransfer(space=space, match=match)


class ColorTransferCallback(Callback):
    """Apply Li et al. 2023's colour transfer to a harmonization method's outputs during a Trainer run.

    On ``setup`` it sets the module's ``output_postprocess`` (so ``test``, ``validate``, ``predict`` and
    the validation of ``fit`` all score or write post-processed outputs) and on ``teardown`` it puts back
    what was there. Add it from the command line with
    ``--trainer.callbacks+=harmony.postprocess.ColorTransferCallback --trainer.callbacks.space=hsl``.

    Args:
        space: ``"hsv"`` (transfer V), ``"hsl"`` (transfer L) or ``"none"`` (no post-process).
        match: How the transferred lightness is matched to the background's: ``"mean_std"`` (mean and
            standard deviation), ``"mean"`` or ``"none"``.
    """

    def __init__(self, space: ColorTransferSpace = "hsv", match: LightnessMatch = "mean_std") -> None:
        super().__init__()
        self.space = space
        self.match = match
        self.postprocess = make_color_transfer(space, match)
        self._replaced: ColorTransfer | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Set the module's ``output_postprocess``, remembering the one it had."""
        if not hasattr(pl_module, "output_postprocess"):
            raise TypeError(
                f"ColorTransferCallback needs a harmony HarmonizationModule, got {type(pl_module).__name__}"
            )
        self._replaced = pl_module.output_postprocess
        pl_module.output_postprocess = self.postprocess

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Give the module back the ``output_postprocess`` it had before :meth:`setup`."""
        pl_module.output_postprocess = self._replaced
