"""Operations that make composites: pasting, appearance changes, inpainting and object placement.

Every data source that builds composites — the SyntheticHarmony generator
(:mod:`harmony.data.synthetic`), the dual-stream real composites and retouch pairs
(:mod:`harmony.data.real_composites`) — and the training-free baselines take these operations from here,
so each exists once. Random Poisson Blending (R2R's RPHarmony) and the inverse-harmonization generator
will land here next.

- :mod:`~harmony.data.composites.blending`: soft-mask pasting of ``uint8`` images and of tensors.
- :mod:`~harmony.data.composites.appearance`: Reinhard colour transfer in Lab and the random tone,
  colour, white-balance and shading edits of the synthetic generator.
- :mod:`~harmony.data.composites.inpainting`: filling the hole an object leaves (OpenCV, LaMa).
- :mod:`~harmony.data.composites.placement`: fitting a pasted object into another object's box.
"""

from harmony.data.composites.appearance import (
    random_color_adjustment,
    random_reinhard_transfer,
    random_shading,
    random_tone_curves,
    random_white_balance,
    reinhard_transfer,
)
from harmony.data.composites.blending import blend, paste_background
from harmony.data.composites.inpainting import Inpainter, LamaInpainter, OpenCVInpainter, dilate
from harmony.data.composites.placement import bounding_box, fit_into_box

__all__ = [
    "Inpainter",
    "LamaInpainter",
    "OpenCVInpainter",
    "blend",
    "bounding_box",
    "dilate",
    "fit_into_box",
    "paste_background",
    "random_color_adjustment",
    "random_reinhard_transfer",
    "random_shading",
    "random_tone_curves",
    "random_white_balance",
    "reinhard_transfer",
]
