"""Post-processes that any harmonization method's output can go through, measured on their own."""

from harmony.postprocess.color_transfer import (
    ColorTransfer,
    ColorTransferCallback,
    ColorTransferSpace,
    LightnessMatch,
    LightnessSpace,
    make_color_transfer,
    transfer_lightness,
)

__all__ = [
    "ColorTransfer",
    "ColorTransferCallback",
    "ColorTransferSpace",
    "LightnessMatch",
    "LightnessSpace",
    "make_color_transfer",
    "transfer_lightness",
]
