"""DiffHarmony and DiffHarmony++ (Zhou et al. 2024): Stable-Diffusion inpainting fine-tuned for harmonization.

* :mod:`.diffharmony` — :class:`DiffHarmony`: the inpainting UNet learns to denoise the real image's
  latent given the composite's latent and the mask (foreground-weighted latent MSE); inference runs 5
  Euler-ancestral steps at a high working resolution (the paper's best: 1024) and pastes the composite's
  background.
* :mod:`.refinement_stage` — DiffHarmony's second stage: :class:`RefinementUNet`, a time-free UNet
  correcting stage-1 outputs, and :class:`DiffHarmonyRefinement`, which trains it (MSE at 256 px).
* :mod:`.harmony_vae` — DiffHarmony++'s Harmony-VAE: :class:`HarmonyVAEModel`, a VAE decoder that also
  sees the composite and mask, and :class:`HarmonyVAE`, which trains it (the real image is reconstructed
  from its latent with the composite and mask as condition, L1).
* :mod:`.diffharmony_plusplus` — :class:`DiffHarmonyPlusPlus`: DiffHarmony decoding with a trained
  Harmony-VAE.
* :mod:`.inverse_harmonization` — the inverse task (Sec. 4.1): :class:`InverseHarmonization` generates a
  composite from a real image and its mask, decoding with its own :class:`InverseHarmonyVAE`; both are the
  forward modules with the composite and real image of every batch exchanged.
* :mod:`.harmony_classifier` — DiffHarmony++'s :class:`HarmonyClassifier`: composite (1) or real (0),
  a linear probe on pooled ResNet-50 features; it selects the generated composites of Human Harmony.

The diffusion modules (forward and inverse) are
:class:`~harmony.methods.latent_diffusion.LatentDiffusionModule` subclasses. Heavy parts are injected
(built from the presets in ``harmony/configs`` with random weights); the pretrained weights (hub id or
local folder) are loaded when a run starts and nothing was restored from a checkpoint, so building a
model never downloads anything (the classifier's ImageNet weights too).
"""

from harmony.methods.diffharmony.diffharmony import DiffHarmony
from harmony.methods.diffharmony.diffharmony_plusplus import DiffHarmonyPlusPlus
from harmony.methods.diffharmony.harmony_classifier import HarmonyClassifier
from harmony.methods.diffharmony.harmony_vae import HarmonyVAE, HarmonyVAEModel
from harmony.methods.diffharmony.inverse_harmonization import InverseHarmonization, InverseHarmonyVAE
from harmony.methods.diffharmony.refinement_stage import DiffHarmonyRefinement, RefinementUNet

__all__ = [
    "DiffHarmony",
    "DiffHarmonyPlusPlus",
    "DiffHarmonyRefinement",
    "HarmonyClassifier",
    "HarmonyVAE",
    "HarmonyVAEModel",
    "InverseHarmonization",
    "InverseHarmonyVAE",
    "RefinementUNet",
]
