"""Per-image harmonization metrics on batched tensors, vectorised in torch (float64, exact integer sums).

Definitions (all on the 0–255 scale, per image, then averaged over images by the evaluator):

* ``mse``: mean over H·W·3 of the squared error.
* ``psnr``: ``10·log10(R² / mse)``, ``R = 255`` (``iharmony4``) or the prediction's own
  ``max − min`` (``bcmi``). Clipped to ±:data:`PSNR_CAP_DB`: an exact match (``mse = 0``) scores
  +100 dB instead of +inf, a constant prediction under the ``bcmi`` rule (``R = 0``) −100 dB.
* ``fmse``: sum of the squared error over foreground pixels and the 3 channels / (3 · N_fg); NaN
  for an empty mask.
* ``ssim``: the SSIM of Wang et al. (2004) with scikit-image's default window, which is what the
  R2R evaluation reports: a 7×7 uniform window, sample covariance (N/(N−1)), K1 = 0.01, K2 = 0.03,
  data range fixed at 255 (never the per-batch range torchmetrics would use), averaged over the
  valid region (3 px border dropped) and the 3 channels. Equal to
  ``skimage.metrics.structural_similarity(prediction, target, data_range=255, channel_axis=-1)``.
* ``fg_ratio``: N_fg / (H·W), used for the foreground-ratio buckets.
* ``lpips`` (optional): LPIPS v0.1 with the AlexNet trunk, inputs scaled to ``[-1, 1]``
  (:class:`LpipsScorer`). Its ImageNet weights must already be on disk: nothing is downloaded, and
  random weights are never used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Final

import torch

from harmony.metrics.protocol import PROTOCOLS, EvaluationProtocol

PSNR_CAP_DB: Final = 100.0
"""PSNR values are clipped to ±100 dB (an exact match would be +inf) and counted as capped."""

SSIM_WINDOW: Final = 7
SSIM_DATA_RANGE: Final = 255.0
_SSIM_K1: Final = 0.01
_SSIM_K2: Final = 0.03


def _check_image(name: str, image: torch.Tensor, shape: torch.Size | None = None) -> None:
    if image.dtype != torch.uint8:
        raise TypeError(f"{name} must be a uint8 tensor on 0–255 (got {image.dtype}); see to_uint8_image")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be B×3×H×W (got {tuple(image.shape)})")
    if shape is not None and image.shape != shape:
        raise ValueError(f"{name} is {tuple(image.shape)} but prediction is {tuple(shape)}")


def to_uint8_image(image: torch.Tensor) -> torch.Tensor:
    """Quantise an image batch to ``uint8`` on 0–255, the way saving it as a PNG would.

    Args:
        image: ``uint8`` (returned unchanged) or floating point in ``[0, 1]``; values slightly outside
            are clipped.

    Returns:
        The ``uint8`` batch.

    Raises:
        ValueError: A floating batch lies clearly outside ``[0, 1]`` (e.g. on 0–255 or ``[-1, 1]``).
    """
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise TypeError(f"expected a uint8 or floating image batch, got {image.dtype}")
    low, high = float(image.min()), float(image.max())
    # A wrong scale would not fail later, it would silently give tiny or huge errors.
    if low < -0.5 or high > 1.5:
        raise ValueError(f"floating images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]")
    return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


class LpipsUnavailableError(RuntimeError):
    """LPIPS cannot be computed here; the message says why (e.g. weights not downloaded)."""


class LpipsScorer:
    """LPIPS distance (v0.1, AlexNet trunk) for ``uint8`` image batches.

    Images are scaled from 0–255 to ``[-1, 1]``, the range the network was trained on (feeding
    ``[0, 1]`` silently gives optimistic scores). The scorer is a plain object, not a module, so its
    weights never end up in a checkpoint of the model that owns the evaluator.

    Args:
        network: A loaded ``lpips.LPIPS`` network (see :meth:`load`).
    """

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network.eval().requires_grad_(False)

    @classmethod
    def load(cls) -> LpipsScorer:
        """Load LPIPS from weights already on disk, never downloading anything.

        Raises:
            LpipsUnavailableError: The ``lpips`` package or a weight file is missing, or loading failed.
        """
        try:
            import lpips
            from torchvision.models import AlexNet_Weights
        except ImportError as error:
            raise LpipsUnavailableError(f"cannot import lpips/torchvision ({error})") from None
        linear_weights = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
        if not linear_weights.is_file():
            raise LpipsUnavailableError(f"the lpips package has no linear-layer weights at {linear_weights}")
        trunk_url = AlexNet_Weights.IMAGENET1K_V1.url
        trunk_weights = Path(torch.hub.get_dir()) / "checkpoints" / Path(trunk_url).name
        if not trunk_weights.is_file():
            raise LpipsUnavailableError(
                f"the ImageNet AlexNet weights are not at {trunk_weights} (nothing is downloaded; "
                f"copy {trunk_url} there)"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                network = lpips.LPIPS(net="alex", version="0.1", verbose=False)
        except Exception as error:  # noqa: BLE001 - any loading failure means "unavailable", said once
            raise LpipsUnavailableError(f"loading LPIPS failed ({error})") from None
        return cls(network)

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS per image for ``uint8`` ``B×3×H×W`` batches, as ``float64`` of shape ``B``."""
        network = self.network.to(prediction.device)
        with torch.no_grad():
            distance = network(prediction.float() / 127.5 - 1.0, target.float() / 127.5 - 1.0)
        return distance.flatten().to(torch.float64)


def psnr_db(mse: torch.Tensor, data_range: torch.Tensor | float) -> torch.Tensor:
    """PSNR in dB from per-image MSEs, clipped to ±:data:`PSNR_CAP_DB` instead of ±inf.

    Args:
        mse: Per-image mean squared errors (float64).
        data_range: The peak value ``R`` (a number or one per image).

    Returns:
        ``10·log10(R² / mse)`` per image; ``+PSNR_CAP_DB`` when ``mse == 0``.
    """
    data_range = torch.as_tensor(data_range, dtype=torch.float64, device=mse.device)
    psnr = 10.0 * torch.log10(data_range.square() / mse)
    psnr = torch.where(mse == 0, torch.full_like(psnr, PSNR_CAP_DB), psnr)
    return psnr.clamp(-PSNR_CAP_DB, PSNR_CAP_DB)


def _window_sums(planes: torch.Tensor, window: int) -> torch.Tensor:
    """Sums over every ``window×window`` patch that fits inside each plane (a "valid" box filter)."""
    height, width = planes.shape[-2:]
    rows = planes[..., : height - window + 1, :].clone()
    for offset in range(1, window):
        rows += planes[..., offset : offset + height - window + 1, :]
    sums = rows[..., : width - window + 1].clone()
    for offset in range(1, window):
        sums += rows[..., offset : offset + width - window + 1]
    return sums


def _ssim_chunk(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = prediction.to(torch.int32)
    y = target.to(torch.int32)
    stacked = torch.cat([x, y, x * x + y * y, x * y], dim=1)
    sum_x, sum_y, sum_squares, sum_xy = _window_sums(stacked, SSIM_WINDOW).split(3, dim=1)
    # With window sums S over n pixels, SSIM = (2·Sx·Sy + a)(2·(n·Sxy − Sx·Sy) + b) /
    # ((Sx² + Sy² + a)(n·(Sxx + Syy) − Sx² − Sy² + b)), a = C1·n², b = C2·n·(n − 1) (sample
    # covariance). For 8-bit inputs every integer term is below 2^31, so the means, variances and
    # covariances are exact: no float cancellation in the variance terms.
    count = SSIM_WINDOW**2
    sums_product = sum_x * sum_y
    squared_sums = sum_x * sum_x
    squared_sums += sum_y * sum_y
    scaled_covariance = sum_xy * count
    scaled_covariance -= sums_product
    scaled_variance_sum = sum_squares * count
    scaled_variance_sum -= squared_sums
    a = (_SSIM_K1 * SSIM_DATA_RANGE) ** 2 * count * count
    b = (_SSIM_K2 * SSIM_DATA_RANGE) ** 2 * count * (count - 1)
    numerator = (2.0 * sums_product.to(torch.float64) + a) * (2.0 * scaled_covariance.to(torch.float64) + b)
    denominator = (squared_sums.to(torch.float64) + a) * (scaled_variance_sum.to(torch.float64) + b)
    # Row sums, then an exactly rounded sum per image: the result does not depend on how many threads
    # split the reduction, so `harmony test` and `harmony score` agree to the last bit.
    row_sums = (numerator / denominator).sum(dim=-1).flatten(1)
    return torch.tensor(
        [math.fsum(rows.tolist()) / rows.numel() / denominator.shape[-1] for rows in row_sums],
        dtype=torch.float64,
        device=prediction.device,
    )


def structural_similarity(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM per image (7×7 uniform window, sample covariance, data range 255; see the module docstring).

    Args:
        prediction: ``uint8`` ``B×3×H×W``.
        target: ``uint8`` ``B×3×H×W``.

    Returns:
        ``float64`` SSIM per image, shape ``B``.
    """
    _check_image("prediction", prediction)
    _check_image("target", target, prediction.shape)
    if min(prediction.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels")
    # On CPU one image's intermediates fit in cache and a per-image loop is about 3× faster than one
    # batched pass; accelerators prefer the whole batch.
    chunk = 1 if prediction.device.type == "cpu" else prediction.shape[0]
    return torch.cat(
        [_ssim_chunk(p, t) for p, t in zip(prediction.split(chunk), target.split(chunk), strict=True)]
    )


def per_image_metrics(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    composite: torch.Tensor | None = None,
    protocol: EvaluationProtocol = PROTOCOLS["iharmony4"],
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """MSE, PSNR, fMSE, SSIM and foreground ratio per image, under an evaluation protocol.

    Inputs are already at the protocol's size (see :mod:`harmony.metrics.protocol`). The mask is
    thresholded at 0.5 again here, so a soft mask can never leak into the scores.

    Args:
        prediction: ``uint8`` ``B×3×S×S`` harmonized images.
        target: ``uint8`` ``B×3×S×S`` ground-truth (real) images.
        mask: ``B×1×S×S`` foreground mask in ``{0, 1}``.
        composite: ``uint8`` ``B×3×S×S`` input composites; required when the protocol pastes the
            composite's background into the prediction.
        protocol: How to score (background paste, PSNR data range).
        lpips: Optional scorer of ``uint8`` batches (e.g. :class:`LpipsScorer`); it sees the prediction
            after the background paste, like every other metric.

    Returns:
        ``float64`` tensors of shape ``B``: ``mse``, ``psnr``, ``fmse`` (NaN for an empty mask),
        ``ssim``, ``fg_ratio``, and ``lpips`` when a scorer is given.
    """
    _check_image("prediction", prediction)
    _check_image("target", target, prediction.shape)
    batch, _, height, width = prediction.shape
    if mask.shape != (batch, 1, height, width):
        raise ValueError(f"mask must be {(batch, 1, height, width)} (got {tuple(mask.shape)})")
    foreground = mask >= 0.5
    if protocol.paste_background:
        if composite is None:
            raise ValueError(f"protocol {protocol.name!r} pastes the composite's background: pass composite")
        _check_image("composite", composite, prediction.shape)
        prediction = torch.where(foreground, prediction, composite)

    predicted = prediction.to(torch.float64)
    squared_error = (predicted - target.to(torch.float64)).square()
    mse = squared_error.mean(dim=(1, 2, 3))
    foreground_pixels = foreground.sum(dim=(1, 2, 3)).to(torch.float64)
    foreground_error = (squared_error * foreground).sum(dim=(1, 2, 3))
    fmse = torch.where(
        foreground_pixels > 0,
        foreground_error / (3.0 * foreground_pixels).clamp_min(1.0),
        torch.full_like(mse, math.nan),
    )
    if protocol.psnr_range == "fixed":
        data_range: torch.Tensor | float = 255.0
    else:
        data_range = predicted.amax(dim=(1, 2, 3)) - predicted.amin(dim=(1, 2, 3))
    metrics = {
        "mse": mse,
        "psnr": psnr_db(mse, data_range),
        "fmse": fmse,
        "ssim": structural_similarity(prediction, target),
        "fg_ratio": foreground_pixels / float(height * width),
    }
    if lpips is not None:
        metrics["lpips"] = lpips(prediction, target)
    return metrics
