"""Operations that make composites: pasting, appearance changes, inpainting and object placement.

Every data source that builds composites — the SyntheticHarmony generator
(:mod:`harmony.data.synthetic`), the dual-stream real composites and retouch pairs
(:mod:`harmony.data.real_composites`) — and the training-free baselines take these operations from here,
so each exists once. The inverse-harmonization generator will land here next.

- :mod:`~harmony.data.composites.blending`: soft-mask pasting of ``uint8`` images and of tensors.
- :mod:`~harmony.data.composites.appearance`: Reinhard colour transfer in Lab (its statistics and their
  application apart) and random low-frequency shading.
- :mod:`~harmony.data.composites.color_transfer`: iHarmony4's four colour-transfer families
  (parametric / non-parametric × correlated / decorrelated) from a reference photo's statistics.
- :mod:`~harmony.data.composites.global_edits`: retoucher-like tone edits (HAdobe5k) and day/night-like
  illumination changes (Hday2night).
- :mod:`~harmony.data.composites.segments`: object-like foreground masks from an image segmentation.
- :mod:`~harmony.data.composites.inpainting`: filling the hole an object leaves (OpenCV, LaMa).
- :mod:`~harmony.data.composites.placement`: fitting a pasted object into another object's box.
- :mod:`~harmony.data.composites.poisson_blending`: R2R's Random Poisson Blending, which makes the
  RPHarmony composites (:mod:`harmony.commands.build_rpharmony` builds such a data set).
"""

from harmony.data.composites.appearance import (
    random_shading,
    reinhard_transfer,
)
from harmony.data.composites.blending import blend, paste_background
from harmony.data.composites.color_transfer import (
    COLOR_TRANSFERS,
    transfer_distribution,
    transfer_histograms,
    transfer_lab_moments,
    transfer_rgb_covariance,
)
from harmony.data.composites.global_edits import Edit, random_illumination, random_retouch
from harmony.data.composites.inpainting import Inpainter, LamaInpainter, OpenCVInpainter, dilate
from harmony.data.composites.placement import bounding_box, fit_into_box
from harmony.data.composites.poisson_blending import random_poisson_blending
from harmony.data.composites.segments import segment_mask

__all__ = [
    "COLOR_TRANSFERS",
    "Edit",
    "Inpainter",
    "LamaInpainter",
    "OpenCVInpainter",
    "blend",
    "bounding_box",
    "dilate",
    "fit_into_box",
    "paste_background",
    "random_illumination",
    "random_poisson_blending",
    "random_retouch",
    "random_shading",
    "reinhard_transfer",
    "segment_mask",
    "transfer_distribution",
    "transfer_histograms",
    "transfer_lab_moments",
    "transfer_rgb_covariance",
]
