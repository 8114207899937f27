"""Li et al. 2023, *Image Harmonization with Diffusion Model*: the paper's two models.

* :mod:`.pixel_ddpm` — :class:`ClassifierFreeDDPM`, the first model: a DDPM in pixel space whose noise
  predictor is ADM's U-Net (:func:`build_adm_unet`) over ``cat[noisy image, composite, mask]``, trained
  end to end, sampled with DDIM.
* :mod:`.classifier_guided_ldm` — :class:`ClassifierGuidedLDM`, the main model: a ControlNet on a frozen
  SD-1.5 text-to-image UNet, sampled with DDIM corrected at every step by the appearance-consistency
  guidance, then the HSV/HSL colour transfer (:mod:`harmony.postprocess`).
* :mod:`.appearance_guidance` — the appearance-consistency discriminator (Sec. 3.1) and
  :class:`AppearanceGuidance`, Algorithm 1 as a hook of the shared sampling loop.

Both are :class:`~harmony.methods.latent_diffusion.LatentDiffusionModule` subclasses. The paper has no
official code: the choices it leaves open are listed, with their reasons, in each model's module
docstring, and each is an option.
"""

from harmony.methods.classifier_guided_ldm.appearance_guidance import (
    AppearanceGuidance,
    appearance_discrepancy,
)
from harmony.methods.classifier_guided_ldm.classifier_guided_ldm import ClassifierGuidedLDM
from harmony.methods.classifier_guided_ldm.pixel_ddpm import ClassifierFreeDDPM, build_adm_unet

__all__ = [
    "AppearanceGuidance",
    "ClassifierFreeDDPM",
    "ClassifierGuidedLDM",
    "appearance_discrepancy",
    "build_adm_unet",
]
