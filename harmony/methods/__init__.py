"""LightningModules: one package per paper, plus the training-free baselines.

How a paper is added: see ``harmony/methods/README.md``. Names load on first use (:mod:`harmony.lazy`):
``import harmony.methods`` alone imports no method.
"""

from harmony.lazy import attach

__getattr__, __dir__, __all__ = attach(
    __name__,
    {
        "ClassifierFreeDDPM": ".classifier_guided_ldm",
        "ClassifierGuidedLDM": ".classifier_guided_ldm",
        "ClearVAE": ".r2r",
        "Composite": ".baselines",
        "DiffHarmony": ".diffharmony",
        "DiffHarmonyPlusPlus": ".diffharmony",
        "DiffHarmonyRefinement": ".diffharmony",
        "HarmonizationModule": ".base",
        "HarmonyVAE": ".diffharmony",
        "HistogramMatching": ".baselines",
        "LatentDiffusionModule": ".latent_diffusion",
        "R2R": ".r2r",
        "ReinhardLabTransfer": ".baselines",
        "SemiSupervisedParametric": ".semi_supervised_parametric",
    },
)
