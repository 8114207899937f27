"""Global RGB curves: three per-channel piecewise-linear tone curves, predicted, applied and exported.

A set of curves is a ``…×3×K`` tensor of output values ``y`` at ``K`` fixed, uniformly spaced input
knots ``x_k = k/(K−1)`` (``K = 32`` in Wang et al. 2023). The paper writes its curve parameters θ1 as
32 two-dimensional control points per channel; as in the official code, only the ``y`` coordinates are
predicted and the ``x`` coordinates are fixed, which keeps every curve a function and makes it exactly
representable by a 3D LUT whose grid contains the knots.

The authors' release (``adobe/PIH``, ``ckpt_g39.pth``) places its 32 values at the centres of the cells
of a 32-point LUT instead, ``(i + ½)/32``, and holds them flat below the first centre and above the
last (the LUT is read with ``grid_sample``, ``align_corners=False``, border padding). That curve is
piecewise linear with every breakpoint on the grid ``k/64``, so 65 uniform knots represent it exactly
(:func:`cell_centre_curves`); the released curve predictor exposes its curves that way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def identity_knots(num_knots: int, device: torch.device | None = None) -> torch.Tensor:
    """The fixed input knots ``k/(K−1)``, ``k = 0…K−1``."""
    return torch.linspace(0.0, 1.0, num_knots, device=device)


def apply_curves(images: torch.Tensor, curves: torch.Tensor) -> torch.Tensor:
    """Apply per-channel piecewise-linear curves to images of any size.

    Args:
        images: ``B×3×H×W`` in ``[0, 1]``.
        curves: ``B×3×K`` output values at the knots ``k/(K−1)``.

    Returns:
        ``B×3×H×W`` curved images (differentiable in both arguments).
    """
    batch, channels, height, width = images.shape
    num_knots = curves.shape[-1]
    position = images.clamp(0, 1).reshape(batch, channels, -1) * (num_knots - 1)
    lower = position.detach().floor().clamp(max=num_knots - 2).long()
    fraction = position - lower
    curves = curves.to(images.dtype)
    y0 = torch.gather(curves, 2, lower)
    y1 = torch.gather(curves, 2, lower + 1)
    return (y0 + (y1 - y0) * fraction).reshape(batch, channels, height, width)


def cell_centre_curves(values: torch.Tensor) -> torch.Tensor:
    """Exact uniform-knot curves of values given at the centres of ``N`` LUT cells (the release's curves).

    Value ``i`` sits at ``(i + ½)/N``; the curve is linear between neighbouring centres and flat outside
    the first and the last. Its breakpoints all lie on ``k/(2N)``, so the ``2N + 1`` knots ``k/(2N)``
    hold it exactly: the odd knots are the values, the inner even ones the means of their neighbours and
    the two ends repeat the outer values.

    Args:
        values: ``…×N`` curve values at the cell centres.

    Returns:
        ``…×(2N+1)`` values at the knots ``k/(2N)`` (differentiable).
    """
    between = torch.cat([values[..., :1], (values[..., :-1] + values[..., 1:]) / 2], dim=-1)
    return torch.cat([torch.stack([between, values], dim=-1).flatten(-2), values[..., -1:]], dim=-1)


class CurvePredictor(nn.Module):
    """Predicts global RGB curves (stage t1) from the low-resolution input stack.

    By default (``values="identity_residual"``) the head predicts a residual on the identity curve
    ``y = x`` at the ``num_knots`` knots and starts at zero, so an untrained predictor leaves images
    unchanged; values are clamped to ``[0, 1]``.

    ``values="lut_cell_centres"`` is the release's parameterisation (``adobe/PIH`` ``ckpt_g39.pth``): the
    head's sigmoid outputs are the absolute curve values at the centres of ``(num_knots − 1)/2`` LUT
    cells, exposed exactly as ``num_knots`` uniform knots by :func:`cell_centre_curves`. The release has
    32 values per channel, so it is built with ``num_knots=65``; its head is then ``Linear(F, 96)``
    like the official ``fc``. Untrained, the head starts at the identity at the cell centres.

    Args:
        encoder: Maps ``B×C×H×W`` inputs to ``B×F`` features and exposes ``out_features`` (``F``),
            e.g. :class:`.ResNetEncoder` (ResNet-50 in the paper).
        num_knots: Knots of the predicted curves (32 in the paper; 65, odd, for ``lut_cell_centres``).
        values: What the head predicts: ``identity_residual`` or the release's ``lut_cell_centres``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_knots: int = 32,
        values: Literal["identity_residual", "lut_cell_centres"] = "identity_residual",
    ) -> None:
        super().__init__()
        if values not in ("identity_residual", "lut_cell_centres"):
            raise ValueError(f"values must be 'identity_residual' or 'lut_cell_centres', got {values!r}")
        if num_knots < 2:
            raise ValueError("a curve needs at least 2 knots")
        if values == "lut_cell_centres" and num_knots % 2 == 0:
            raise ValueError(f"lut_cell_centres curves have an odd number of knots (2N + 1), got {num_knots}")
        self.encoder = encoder
        self.num_knots = num_knots
        self.values = values
        self.num_outputs = num_knots if values == "identity_residual" else (num_knots - 1) // 2
        self.head = nn.Linear(int(encoder.out_features), 3 * self.num_outputs)
        nn.init.zeros_(self.head.weight)
        if values == "identity_residual":
            nn.init.zeros_(self.head.bias)
            self.register_buffer("knots", identity_knots(num_knots), persistent=False)
        else:
            centres = (torch.arange(self.num_outputs, dtype=torch.float32) + 0.5) / self.num_outputs
            with torch.no_grad():
                self.head.bias.copy_(torch.logit(centres).repeat(3))

    @property
    def in_channels(self) -> int | None:
        """Channels the encoder expects, when it says."""
        return getattr(self.encoder, "in_channels", None)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predict ``B×3×num_knots`` curves from ``B×C×H×W`` inputs."""
        # float32 even under bf16 autocast: bf16 cannot even hold the identity knots k/31 exactly.
        outputs = self.head(self.encoder(inputs)).float().view(-1, 3, self.num_outputs)
        if self.values == "lut_cell_centres":
            return cell_centre_curves(torch.sigmoid(outputs))
        # min/max, not clamp: the identity's end knots sit exactly on the bounds, where clamp passes no
        # gradient and they could never move inward; min/max pass half of it there.
        return torch.maximum(
            torch.minimum(self.knots + outputs, self.knots.new_ones(())), self.knots.new_zeros(())
        )
