"""R2R's Adaptive Filter (Clear-VAE, paper Fig. 1): a learnable mix of fixed high-frequency filters.

Every skip feature of the Clear-VAE passes through one before it reaches the decoder. It mixes eight
fixed 3×3 edge kernels and a Gaussian high-pass with one learnable weight each, plus a learnable
identity term, so training picks which kinds of detail the decoder gets from the composite. All weights
are scalars shared across channels, so one filter fits a feature of any width (10 parameters).

After training, :meth:`AdaptiveFilter.merge` folds it into a :class:`MergedAdaptiveFilter`: one
depthwise 3×3 convolution and the high-pass (the paper's reparameterisation).
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import nn

KERNEL_NAMES = (
    "sobel_x",
    "sobel_y",
    "laplacian_4",
    "edge_8",
    "roberts_x",
    "roberts_y",
    "sobel_xy",
    "sobel_yx",
)
"""The fixed kernels in the order of their weights ``alpha[0..7]`` (``alpha[8]`` weighs the high-pass)."""

_KERNELS = (
    ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)),
    ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),
    ((0, 1, 0), (1, -4, 1), (0, 1, 0)),
    ((-1, -1, -1), (-1, 8, -1), (-1, -1, -1)),
    # Roberts' 2×2 cross sits in the top-left corner of a 3×3 kernel (padding 1), as in the official code.
    ((1, 0, 0), (0, -1, 0), (0, 0, 0)),
    ((0, 1, 0), (-1, 0, 0), (0, 0, 0)),
    ((0, 1, 2), (-1, 0, 1), (-2, -1, 0)),
    ((-2, -1, 0), (-1, 0, 1), (0, 1, 2)),
)


def fixed_kernels(scale: float = 1e-3) -> torch.Tensor:
    """The eight fixed kernels (``8×3×3``, float32) in :data:`KERNEL_NAMES` order, times ``scale``."""
    return torch.tensor(_KERNELS, dtype=torch.float32) * scale


def _depthwise(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x`` with the same 3×3 ``kernel`` (zero padding 1)."""
    channels = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(channels, 1, 3, 3)
    return F.conv2d(x, weight, padding=1, groups=channels)


class _HighPass(nn.Module):
    """``x − GaussianBlur(x)`` (kornia, reflected borders)."""

    def __init__(self, blur_kernel_size: int, blur_sigma: float) -> None:
        super().__init__()
        self.blur_kernel_size = blur_kernel_size
        self.blur_sigma = blur_sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, sigma = self.blur_kernel_size, float(self.blur_sigma)
        return x - kornia.filters.gaussian_blur2d(x, (size, size), (sigma, sigma))


class AdaptiveFilter(nn.Module):
    """R2R's Adaptive Filter: ``Σᵢ αᵢ·(Kᵢ ∗ x) + α₈·(x − GaussianBlur(x)) + β·x``.

    ``Kᵢ`` are eight fixed depthwise 3×3 kernels (Sobel x/y, 4-neighbour Laplacian, 8-neighbour edge,
    Roberts x/y, the two diagonal Sobels; :data:`KERNEL_NAMES`), each multiplied by ``kernel_scale``
    and stored as non-trainable buffers; ``α ∈ R⁹`` (ones at first) and ``β`` (zero at first) are
    learnt and shared across channels. At initialisation the output is the high-pass plus ``10⁻³``-sized
    edge responses, so the decoder first receives mostly the composite's fine detail.

    The paper names the filter families but gives no kernel scale or blur; ``kernel_scale`` 1e-3, the
    15×15 blur with σ 5 and the initial values of ``α``/``β`` are the official code's.

    Args:
        kernel_scale: Factor on the fixed kernels (official: 1e-3), so that at the start they add
            little next to the high-pass.
        blur_kernel_size: Side of the Gaussian kernel of the high-pass (odd).
        blur_sigma: Standard deviation of the Gaussian of the high-pass.
    """

    def __init__(
        self, kernel_scale: float = 1e-3, blur_kernel_size: int = 15, blur_sigma: float = 5.0
    ) -> None:
        super().__init__()
        # Derived from the arguments, so not saved: a checkpoint holds only alpha and beta.
        self.register_buffer("kernels", fixed_kernels(kernel_scale), persistent=False)
        self.high_pass = _HighPass(blur_kernel_size, blur_sigma)
        self.alpha = nn.Parameter(torch.ones(len(KERNEL_NAMES) + 1))
        self.beta = nn.Parameter(torch.zeros(1))

    def mixed_kernel(self) -> torch.Tensor:
        """``Σᵢ αᵢ·Kᵢ`` (``3×3``)."""
        return torch.einsum("k,kij->ij", self.alpha[: len(KERNEL_NAMES)], self.kernels.to(self.alpha.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a ``B×C×H×W`` feature map (any ``C``, any floating dtype; same shape and dtype out)."""
        # Σ αᵢ(Kᵢ ∗ x) = (Σ αᵢKᵢ) ∗ x: one convolution gives the values and the α gradients of eight,
        # without eight feature maps in memory.
        filtered = _depthwise(x, self.mixed_kernel())
        alpha_high, beta = self.alpha[-1].to(x.dtype), self.beta.to(x.dtype)
        return filtered + alpha_high * self.high_pass(x) + beta * x

    @torch.no_grad()
    def merge(self) -> MergedAdaptiveFilter:
        """The reparameterised filter: one 3×3 kernel ``Σᵢ αᵢ·Kᵢ + β·δ`` and ``α₈``·high-pass.

        ``β·x`` is the centre tap ``β`` of a 3×3 kernel, so it joins the mixed kernel. The official
        code's ``Combine`` pairs ``α₄, α₅`` with the Roberts kernels and ``α₆, α₇`` with the diagonal
        Sobels while its forward pairs them the other way round, so its merged filter differs from the
        trained one once those weights part; here both use the one kernel order of :data:`KERNEL_NAMES`.
        """
        kernel = self.mixed_kernel().detach().clone()
        kernel[1, 1] += self.beta[0]
        return MergedAdaptiveFilter(
            kernel, float(self.alpha[-1]), self.high_pass.blur_kernel_size, self.high_pass.blur_sigma
        )


class MergedAdaptiveFilter(nn.Module):
    """A trained :class:`AdaptiveFilter` reparameterised: ``K ∗ x + a·(x − GaussianBlur(x))``.

    Made by :meth:`AdaptiveFilter.merge`; it has no trainable parameters.

    Args:
        kernel: The ``3×3`` depthwise kernel shared by all channels.
        high_pass_weight: The weight ``a`` of the high-pass.
        blur_kernel_size: Side of the Gaussian kernel of the high-pass.
        blur_sigma: Standard deviation of the Gaussian of the high-pass.
    """

    def __init__(
        self,
        kernel: torch.Tensor,
        high_pass_weight: float,
        blur_kernel_size: int = 15,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.detach().clone().float().reshape(3, 3))
        self.register_buffer("high_pass_weight", torch.tensor(float(high_pass_weight)))
        self.high_pass = _HighPass(blur_kernel_size, blur_sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter a ``B×C×H×W`` feature map (same shape and dtype out)."""
        return _depthwise(x, self.kernel) + self.high_pass_weight.to(x.dtype) * self.high_pass(x)
