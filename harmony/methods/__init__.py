"""LightningModules: one per paper, plus the training-free baselines."""

from harmony.methods.base import HarmonizationModule
from harmony.methods.baselines import Composite, HistogramMatching, ReinhardLabTransfer
from harmony.methods.diffharmony import DiffHarmony, DiffHarmonyPlusPlus, DiffHarmonyRefinement, HarmonyVAE
from harmony.methods.semi_supervised_parametric import SemiSupervisedParametric

__all__ = [
    "Composite",
    "DiffHarmony",
    "DiffHarmonyPlusPlus",
    "DiffHarmonyRefinement",
    "HarmonizationModule",
    "HarmonyVAE",
    "HistogramMatching",
    "ReinhardLabTransfer",
    "SemiSupervisedParametric",
]
