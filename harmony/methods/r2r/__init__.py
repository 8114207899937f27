"""R2R (Zhang et al. 2025, *Region-to-Region*): harmonization by injecting regions into the foreground.

* :mod:`.adaptive_filter` — :class:`AdaptiveFilter`, the learnable mix of fixed high-frequency filters
  on each skip feature, and :class:`MergedAdaptiveFilter`, its reparameterised form.
* :mod:`.clear_vae` — the Clear-VAE: :class:`ClearVAESkips` (filters and zero convolutions),
  :class:`ClearVAEDecoder` (a VAE decoding with the composite's filtered skips), :class:`ClearVAE` (the
  LightningModule that trains them, Eq. 3–5), :class:`VGG16Features` (the contrastive loss's features)
  and :func:`load_clear_vae` (reads its export).
* :mod:`.maca` — :class:`MaskAwareChannelAttention` (MACA, Eq. 1–2) and :class:`MACABank`, one per encoder
  scale of the controller.
* :mod:`.harmony_controller` — the Harmony Controller's 7-channel hint (:func:`controller_hint`: Canny
  edges of the foreground, composite, mask) and its ControlNet pass with MACA
  (:func:`controller_residuals`).
* :mod:`.r2r` — :class:`R2R`, stage 2: the controller trained on a frozen DiffHarmony UNet, decoded by
  the Clear-VAE. Random Poisson Blending lives with the other composite operations
  (:func:`harmony.data.composites.random_poisson_blending`; ``harmony build-rpharmony`` builds a data set).

Like DiffHarmony, the methods are :class:`~harmony.methods.latent_diffusion.LatentDiffusionModule`
subclasses whose pretrained weights are loaded when a run starts, never when a model is built.
"""

from harmony.methods.r2r.adaptive_filter import AdaptiveFilter, MergedAdaptiveFilter
from harmony.methods.r2r.clear_vae import (
    ClearVAE,
    ClearVAEDecoder,
    ClearVAESkips,
    VGG16Features,
    load_clear_vae,
)
from harmony.methods.r2r.harmony_controller import controller_hint, controller_residuals
from harmony.methods.r2r.maca import MACABank, MaskAwareChannelAttention
from harmony.methods.r2r.r2r import R2R

__all__ = [
    "AdaptiveFilter",
    "ClearVAE",
    "ClearVAEDecoder",
    "ClearVAESkips",
    "MACABank",
    "MaskAwareChannelAttention",
    "MergedAdaptiveFilter",
    "R2R",
    "VGG16Features",
    "controller_hint",
    "controller_residuals",
    "load_clear_vae",
]
