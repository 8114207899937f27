"""The one batch format every dataset, method and evaluator in harmony speaks.

A *sample* (one item of a dataset) is a dict with these keys:

``composite``
    ``float32`` tensor ``3×H×W`` in ``[0, 1]``: the unharmonized input.
``mask``
    ``float32`` tensor ``1×H×W`` in ``{0, 1}`` (binarised at 0.5): 1 marks the foreground.
``target``
    ``float32`` tensor ``3×H×W`` in ``[0, 1]``: the ground-truth (real) image. Absent for data without
    ground truth (``predict`` folders, stream-2 real composites).
``name``
    ``str``: the composite's file stem, e.g. ``a0001_1_2``. Predictions are written as ``<name>.png``.
``subset``
    ``str``: the subset the sample belongs to (``HCOCO``, ``HAdobe5k``, ``HFlickr``, ``Hday2night``,
    ``R-ADE20K``, ``HSynthetic`` …). Results are reported per subset.

Evaluation samples (``val``/``test``) also carry the protocol-size copies the evaluator scores against,
prepared from the original files exactly as :mod:`harmony.metrics.protocol` prescribes (PIL bilinear +
antialias to 256×256 for images, nearest for the mask):

``eval_composite``, ``eval_target``
    ``uint8`` tensors ``3×S×S`` at the protocol size ``S`` (256): exactly the pixels a file-based
    evaluation would compare, so ``harmony test`` and ``harmony score`` agree.
``eval_mask``
    ``float32`` ``1×S×S`` in ``{0, 1}``.

Training samples of the semi-supervised parametric method's second stream also carry:

``background``
    ``float32`` ``3×H×W``: the background the model takes as input (the inpainted background, Eq. 5);
    when absent, methods use ``composite·(1 − mask)``.
``real``
    ``float32`` ``3×H×W``: the discriminator's "real" image (Eq. 6), in place of a ground truth.

Samples read from files also carry ``composite_path`` and ``mask_path`` (``str``), ``target_path`` when
they have a ground truth, and ``original_size`` (``(H, W)`` of the file, an ``int64`` tensor), so
predictions can be written at full resolution.

Images are ``[0, 1]`` everywhere; methods that need ``[-1, 1]`` (diffusion VAEs) convert on entry and
exit. Collated batches have the same keys with a leading batch dimension (strings become lists).
"""

from __future__ import annotations

from typing import Final

COMPOSITE: Final = "composite"
MASK: Final = "mask"
TARGET: Final = "target"
NAME: Final = "name"
SUBSET: Final = "subset"
EVAL_COMPOSITE: Final = "eval_composite"
EVAL_MASK: Final = "eval_mask"
EVAL_TARGET: Final = "eval_target"
BACKGROUND: Final = "background"
REAL: Final = "real"
COMPOSITE_PATH: Final = "composite_path"
MASK_PATH: Final = "mask_path"
TARGET_PATH: Final = "target_path"
ORIGINAL_SIZE: Final = "original_size"

IHARMONY4_SUBSETS: Final = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
