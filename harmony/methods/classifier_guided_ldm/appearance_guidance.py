"""Li et al.'s appearance-consistency discriminator (Sec. 3.1) and the guidance it gives sampling (Sec. 3.2).

**Discriminator.** Grayscale is the plain mean of R, G and B; ``D(X1, X2)`` is the squared difference of
the two grayscale images. The paper leaves its reduction to a scalar open; here it is the mean over the
pixels of the chosen region (whole image, background or foreground) of each image, summed over the
batch: the mean keeps the guidance scale independent of resolution and region size, the sum keeps each
image's gradient independent of the others in its batch.

**Guidance** (Algorithm 1), as a :class:`~harmony.nn.latent.SamplingHook` of the shared sampling loop: at
each step, ``n`` noisy copies of the composite are drawn at the step's noise level,
``y_t^i ~ N(√ᾱ_t·c, (1−ᾱ_t)·I)`` (so the discriminator compares like with like on noisy inputs, where a
single copy would let the noise itself steer), the current latent ``h_t`` is decoded through the VAE, and
the gradient of ``Σ_i D(decode(h_t), y_t^i)`` with respect to ``h_t`` corrects the noise prediction by
``+s·√(1−ᾱ_t)·∇``. Algorithm 1 prints ``−s·√(1−ᾱ_t)·∇``: with the deterministic DDIM step that follows,
that sign moves the predicted clean latent *up* the gradient, raising the discrepancy the guidance is meant
to lower, so we use the sign that lowers it (Dhariwal & Nichol's rule ``ε̂ = ε − √(1−ᾱ)∇ log p`` with
``log p = −D``). Algorithm 1 decodes the noisy latent itself; ``decode="predicted_original"`` decodes the
x0 the step predicts instead (its gradient also flows through that prediction's dependence on ``h_t``).
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import AutoencoderKL

from harmony.nn.latent import DenoisingStep, Generators, predicted_original, unscale_latents

Region = Literal["image", "background", "foreground"]
DecodedLatent = Literal["noisy_latent", "predicted_original"]


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``B×1×H×W``: the mean of the R, G and B channels (paper Sec. 3.1)."""
    return images.mean(dim=1, keepdim=True)


def region_weights(mask: torch.Tensor, region: Region) -> torch.Tensor:
    """Per-pixel weights of a region: ones, the background ``1 − M`` or the foreground ``M``."""
    if region == "image":
        return torch.ones_like(mask)
    if region == "background":
        return 1 - mask
    if region == "foreground":
        return mask
    raise ValueError(f"region must be 'image', 'background' or 'foreground', got {region!r}")


def appearance_discrepancy(
    first: torch.Tensor, second: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``D(X1, X2)``: squared grayscale difference, averaged over each image's region, summed over the batch.

    Args:
        first: ``B×3×H×W`` images.
        second: ``B×3×H×W`` images in the same range.
        weights: ``B×1×H×W`` region weights (:func:`region_weights`); ``None``: the whole image.

    Returns:
        A 0-dim tensor; 0 when the two grayscale images are equal inside the region.
    """
    squared = (grayscale(first) - grayscale(second)) ** 2
    if weights is None:
        return squared.mean(dim=(1, 2, 3)).sum()
    weights = weights.to(squared.dtype)
    return ((squared * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp_min(1.0)).sum()


def noisy_guidance_copies(
    guide: torch.Tensor, alpha_bar: torch.Tensor, copies: int, generators: Generators = None
) -> torch.Tensor:
    """``copies`` draws of ``y_t ~ N(√ᾱ_t·guide, (1−ᾱ_t)·I)``: ``copies×B×C×H×W``.

    Args:
        guide: ``B×C×H×W`` clean guidance image (the composite, in ``[-1, 1]``).
        alpha_bar: ``ᾱ_t`` of the step.
        copies: ``n``.
        generators: One CPU generator per image (the sampling's own), for batch-independent draws.
    """
    if isinstance(generators, list):
        noise = torch.stack(
            [torch.randn((copies, *guide.shape[1:]), generator=g, dtype=torch.float32) for g in generators],
            dim=1,
        )
    else:
        noise = torch.randn((copies, *guide.shape), generator=generators, dtype=torch.float32)
    noise = noise.to(guide.device, guide.dtype)
    alpha_bar = alpha_bar.to(guide.dtype)
    return alpha_bar.sqrt() * guide + (1 - alpha_bar).sqrt() * noise


class AppearanceGuidance:
    """Algorithm 1's correction of every denoising step, as a sampling hook.

    Args:
        vae: The VAE whose decoder maps latents to images (gradients flow through it; its weights do not
            change).
        composite: ``B×3×H×W`` composite in ``[0, 1]`` at the decoded size (the guidance image).
        mask: ``B×1×H×W`` binary foreground mask at that size.
        scale: ``s``.
        copies: ``n``, noisy copies of the composite per step.
        region: Where the discriminator looks.
        decode: ``noisy_latent`` (Algorithm 1) or ``predicted_original``.
        generators: The sampling's generators (one per image), which also draw the copies.
    """

    # The hook takes its own gradients (below), so the loop need not hand it latents that require them.
    requires_grad = False

    def __init__(
        self,
        vae: AutoencoderKL,
        composite: torch.Tensor,
        mask: torch.Tensor,
        scale: float,
        copies: int = 4,
        region: Region = "image",
        decode: DecodedLatent = "noisy_latent",
        generators: Generators = None,
    ) -> None:
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        self.vae = vae
        self.guide = composite * 2 - 1
        self.weights = region_weights(mask, region)
        self.scale = scale
        self.copies = copies
        self.decode = decode
        self.generators = generators

    def __call__(self, step: DenoisingStep) -> torch.Tensor:
        """The noise prediction moved by ``s·√(1−ᾱ_t)·∇_{h_t} Σ_i D(decode(h_t), y_t^i)``."""
        # Lightning evaluates under inference mode, whose tensors cannot enter autograd: the gradient is
        # taken outside it, on copies.
        with torch.inference_mode(False), torch.enable_grad():
            latents = step.latents.detach().clone().requires_grad_(True)
            decoded_latents = latents
            if self.decode == "predicted_original":
                decoded_latents = predicted_original(
                    latents, step.noise_prediction.clone(), step.alpha_bar.clone(), step.prediction_type
                )
            decoder_dtype = next(self.vae.decoder.parameters()).dtype
            image = unscale_latents(self.vae, decoded_latents).to(decoder_dtype)
            decoded = self.vae.decode(image).sample.float()
            guide = self.guide.clone().to(decoded)
            if guide.shape[-2:] != decoded.shape[-2:]:
                sizes = f"{tuple(guide.shape[-2:])} vs decoded {tuple(decoded.shape[-2:])}"
                raise ValueError(f"the guidance image does not fit the decoded size: {sizes}")
            alpha_bar = step.alpha_bar.clone().float()
            targets = noisy_guidance_copies(guide, alpha_bar, self.copies, self.generators)
            weights = self.weights.clone().to(decoded)
            discrepancy = sum(appearance_discrepancy(decoded, target, weights) for target in targets)
            (gradient,) = torch.autograd.grad(discrepancy, latents)
        delta = self.scale * (1 - step.alpha_bar).sqrt() * gradient.to(step.noise_prediction)
        return step.shift_noise(delta)
