"""LightningModules: one package per paper, plus the training-free baselines.

How a paper is added: see ``harmony/methods/README.md``.
"""

from harmony.methods.base import HarmonizationModule
from harmony.methods.baselines import Composite, HistogramMatching, ReinhardLabTransfer
from harmony.methods.classifier_guided_ldm import ClassifierFreeDDPM, ClassifierGuidedLDM
from harmony.methods.diffharmony import DiffHarmony, DiffHarmonyPlusPlus, DiffHarmonyRefinement, HarmonyVAE
from harmony.methods.latent_diffusion import LatentDiffusionModule
from harmony.methods.r2r import R2R, ClearVAE
from harmony.methods.semi_supervised_parametric import SemiSupervisedParametric

__all__ = [
    "ClassifierFreeDDPM",
    "ClassifierGuidedLDM",
    "ClearVAE",
    "Composite",
    "DiffHarmony",
    "DiffHarmonyPlusPlus",
    "DiffHarmonyRefinement",
    "HarmonizationModule",
    "HarmonyVAE",
    "HistogramMatching",
    "LatentDiffusionModule",
    "R2R",
    "ReinhardLabTransfer",
    "SemiSupervisedParametric",
]
