"""iHarmony4 test-split numbers printed in the seed papers (per subset: PSNR, MSE, fMSE).

Sources: R2R (Zhang et al. 2025) Table 1 — which evaluates like DiffHarmony (PIL bilinear to 256, PSNR
range 255, ground-truth background pasted), i.e. our ``iharmony4`` protocol; Li et al. 2023 Table 1 —
PSNR and MSE only, and its Composite PSNRs match the ``bcmi`` protocol (PSNR range = prediction
max − min) rather than ``iharmony4``; Wang et al. 2023 Table 1 — overall numbers only. DiffHarmony++'s
own Table 1 labels S²AM's numbers as "Composite", so its Composite column is not used here.

RPHarmony's test split (R2R Table 2) is printed for the whole set only (R-ADE20K and R-DUTS together).
"""

from __future__ import annotations

SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "all")

# {row: {source: {group: (psnr, mse, fmse)}}}; None where the paper prints nothing.
PAPER_NUMBERS: dict[str, dict[str, dict[str, tuple[float | None, float | None, float | None]]]] = {
    "Composite": {
        "R2R Tab. 1 (iharmony4)": {
            "HCOCO": (33.94, 69.37, 996.59),
            "HAdobe5k": (28.16, 345.54, 2051.61),
            "HFlickr": (28.32, 264.35, 1574.37),
            "Hday2night": (34.01, 109.65, 1409.98),
            "all": (31.63, 172.47, 1376.42),
        },
        "Li et al. Tab. 1 (bcmi)": {
            "HCOCO": (33.70, 70.39, None),
            "HAdobe5k": (28.31, 345.54, None),
            "HFlickr": (28.43, 264.35, None),
            "Hday2night": (34.36, 109.65, None),
            "all": (31.78, 172.47, None),
        },
        "Wang et al. Tab. 1": {"all": (31.74, 172.3, None)},
    },
    "DiffHarmony": {
        "R2R Tab. 1": {
            "HCOCO": (41.71, 9.18, 170.44),
            "HAdobe5k": (41.08, 19.51, 120.78),
            "HFlickr": (37.10, 30.89, 216.27),
            "Hday2night": (39.45, 22.42, 470.846),
            "all": (40.97, 14.86, 166.48),
        }
    },
    "DiffHarmonyPlusPlus": {
        "R2R Tab. 1": {
            "HCOCO": (42.42, 8.43, 155.73),
            "HAdobe5k": (41.78, 18.81, 113.18),
            "HFlickr": (37.74, 28.77, 201.52),
            "Hday2night": (39.49, 22.48, 464.35),
            "all": (41.66, 13.98, 153.98),
        }
    },
    "R2R": {
        "R2R Tab. 1": {
            "HCOCO": (42.62, 7.93, 146.81),
            "HAdobe5k": (42.22, 15.70, 102.14),
            "HFlickr": (38.04, 26.28, 185.38),
            "Hday2night": (39.42, 22.64, 497.185),
            "all": (41.94, 12.51, 144.38),
        }
    },
    "ClassifierGuidedLDM": {
        "Li et al. Tab. 1": {
            "HCOCO": (34.33, 59.55, None),
            "HAdobe5k": (33.18, 161.36, None),
            "HFlickr": (29.21, 224.05, None),
            "Hday2night": (34.08, 122.41, None),
            "all": (32.70, 141.84, None),
        }
    },
    "SemiSupervisedParametric": {"Wang et al. Tab. 1": {"all": (38.30, 20.57, None)}},
}

RPHARMONY_SUBSETS = ("R-ADE20K", "R-DUTS", "all")

RPHARMONY_PAPER_NUMBERS: dict[str, dict[str, dict[str, tuple[float | None, float | None, float | None]]]] = {
    "Composite": {"R2R Tab. 2": {"all": (25.91, 366.32, 2362.08)}},
    "DiffHarmonyPlusPlus": {"R2R Tab. 2": {"all": (36.03, 42.16, 203.45)}},
    "R2R": {"R2R Tab. 2": {"all": (36.32, 40.25, 192.66)}},
}
"""RPHarmony test-split numbers of R2R Table 2 (PSNR, MSE, fMSE), each method fine-tuned on RPHarmony."""

BUCKET_PAPER_NUMBERS: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "DiffHarmonyPlusPlus": {
        "DiffHarmony++ Tab. 3": {
            "fg_0_5": (3.67, 173.40),
            "fg_5_15": (11.31, 128.27),
            "fg_15_100": (41.94, 136.67),
        }
    },
}
"""``{row: {source: {bucket: (mse, fmse)}}}`` on the iHarmony4 test split."""

BUCKET_PAPER_SAMPLES: dict[str, int] = {"fg_0_5": 3835, "fg_5_15": 1951, "fg_15_100": 1618}
"""DiffHarmony++ Table 3's ``N_samples`` per bucket on the iHarmony4 test split."""
