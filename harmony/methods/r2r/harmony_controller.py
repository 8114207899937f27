"""The Harmony Controller (R2R): a ControlNet with MACA, fed a 7-channel hint of edges, composite and mask.

The controller is a diffusers ``ControlNetModel`` — a trainable copy of the (DiffHarmony-trained) UNet's
encoder and mid block, a hint encoder whose last convolution starts at zero, and zero-initialised 1×1
convolutions that add its 12 skip residuals and its mid-block residual to the frozen UNet's. R2R changes
how it runs (:func:`controller_residuals`):

* a :class:`~harmony.methods.r2r.maca.MaskAwareChannelAttention` at the end of each of the four encoder
  scales replaces that scale's last feature (which also feeds the next scale);
* by default the controller reads only the hint: the first feature is the hint embedding, and the noisy
  latent reaches the controller only through the timestep. The paper's Fig. 1 feeds the controller the
  "additional image conditions" alone and the official code does exactly this (its copy of the UNet's
  ``conv_in`` is never used); ``reads_noisy_latents=True`` is the original ControlNet's
  ``conv_in(latents) + hint embedding``.

The hint (:func:`controller_hint`) is, in the official channel order, ``cat[edges (3), composite (3),
mask (1)]`` at pixel resolution: the Canny edges of the foreground (pasted over white) inside the mask
and the composite outside it, then the composite, both in ``[-1, 1]``, then the binary mask.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from diffusers import ControlNetModel

from harmony.methods.base import to_uint8
from harmony.methods.r2r.maca import MACABank
from harmony.nn.latent import resize_for_inference, resize_images


def canny_edges(composite: np.ndarray, mask: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """The hint's edge image: Canny edges of the foreground inside the mask, the composite outside.

    The foreground is pasted over white so the mask's outline is an edge, as in the official code, which
    also converts to grey with OpenCV's BGR weights on RGB data; we do the same so the controller sees what
    the released weights were trained on.

    Args:
        composite: ``H×W×3`` ``uint8`` RGB composite.
        mask: ``H×W`` binary mask (``bool`` or ``{0, 1}``).
        low: Canny's lower hysteresis threshold.
        high: Canny's upper hysteresis threshold.

    Returns:
        ``H×W×3`` ``uint8``: white edges on black inside the mask, the composite outside.
    """
    inside = mask.astype(bool)[..., None]
    foreground = np.where(inside, composite, np.uint8(255))
    edges = cv2.Canny(cv2.cvtColor(np.ascontiguousarray(foreground), cv2.COLOR_BGR2GRAY), low, high)
    return np.where(inside, edges[..., None], composite).astype(np.uint8)


def controller_hint(
    composite: torch.Tensor,
    mask: torch.Tensor,
    size: int | None = None,
    low: int = 100,
    high: int = 200,
) -> torch.Tensor:
    """The Harmony Controller's 7-channel hint for a batch.

    The edges are found at the batch's own resolution (the official code runs Canny on the original
    image, before any resizing), then everything is resized to ``size``.

    Args:
        composite: ``B×3×H×W`` composite in ``[0, 1]``.
        mask: ``B×1×H×W`` mask (binarised at 0.5).
        size: Square output size (the working resolution); ``None`` keeps ``H×W``.
        low: Canny's lower threshold.
        high: Canny's upper threshold.

    Returns:
        ``B×7×size×size``: ``cat[edges, composite]`` in ``[-1, 1]`` and the binary mask.
    """
    binary = mask >= 0.5
    pixels = to_uint8(composite).permute(0, 2, 3, 1).cpu()
    regions = binary[:, 0].cpu().numpy()
    edges = np.stack(
        [canny_edges(image, region, low, high) for image, region in zip(pixels.numpy(), regions, strict=True)]
    )
    edge_images = torch.from_numpy(edges).permute(0, 3, 1, 2).to(composite.device, torch.float32) / 255
    composite, binary_mask = composite.float(), binary.to(torch.float32)
    if size is not None:
        edge_images = resize_images(edge_images, size)
        composite, binary_mask = resize_for_inference(composite, binary_mask, size)
    return torch.cat([edge_images * 2 - 1, composite * 2 - 1, binary_mask], dim=1)


def controller_residuals(
    controlnet: ControlNetModel,
    maca: MACABank | None,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    hint: torch.Tensor,
    mask: torch.Tensor,
    reads_noisy_latents: bool = False,
    conditioning_scale: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the Harmony Controller: the UNet's 12 skip residuals and its mid-block residual.

    Follows ``ControlNetModel.forward`` (time embedding, hint embedding, down blocks, mid block, zero
    convolutions) with R2R's two changes: a MACA at the end of each down block, and the hint embedding
    alone as the first feature unless ``reads_noisy_latents``.

    Args:
        controlnet: The controller's ControlNet (without class or additional embeddings, as SD-1.x).
        maca: One MACA per down block; ``None`` runs the plain ControlNet blocks ("w/o MACA").
        sample: The UNet's input (the 9-channel inpainting concatenation).
        timestep: Diffusion timestep(s).
        text: ``B×L×D`` text embedding (the empty prompt's).
        hint: ``B×7×H×W`` pixel-resolution hint (:func:`controller_hint`).
        mask: ``B×1×h×w`` mask on the latent grid, for MACA.
        reads_noisy_latents: Add ``conv_in(sample)`` to the hint embedding (the original ControlNet).
        conditioning_scale: Factor on every residual.
    """
    timesteps = torch.as_tensor(timestep, device=sample.device)
    timesteps = timesteps.reshape(-1).expand(sample.shape[0])
    embedding = controlnet.time_embedding(controlnet.time_proj(timesteps).to(sample.dtype))
    hidden = controlnet.controlnet_cond_embedding(hint.to(sample.dtype))
    if reads_noisy_latents:
        hidden = controlnet.conv_in(sample) + hidden
    features = [hidden]
    for index, block in enumerate(controlnet.down_blocks):
        if getattr(block, "has_cross_attention", False):
            hidden, block_features = block(hidden_states=hidden, temb=embedding, encoder_hidden_states=text)
        else:
            hidden, block_features = block(hidden_states=hidden, temb=embedding)
        block_features = list(block_features)
        if maca is not None:
            # The block's last feature is also its output; MACA's result replaces both.
            hidden = maca(index, hidden, mask)
            block_features[-1] = hidden
        features += block_features
    hidden = controlnet.mid_block(hidden, embedding, encoder_hidden_states=text)
    down = [
        zero_conv(feature) * conditioning_scale
        for zero_conv, feature in zip(controlnet.controlnet_down_blocks, features, strict=True)
    ]
    return down, controlnet.controlnet_mid_block(hidden) * conditioning_scale
