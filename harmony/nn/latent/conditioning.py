"""Conditioning a denoising UNet: the two kinds the papers use, the empty prompt, the working size.

* **Inpainting concatenation** (DiffHarmony, R2R): the UNet's input is
  ``cat[noisy latent, latent-grid mask, latent of the full composite]`` (:func:`inpainting_input`).
* **ControlNet residuals** (R2R's Harmony Controller, Li et al.'s ControlNet on a frozen SD UNet): a
  ControlNet reads the same input plus a pixel-resolution hint and adds its residuals to the UNet's
  skip connections and mid block (:func:`unet_prediction`).
* Text: harmonization uses none, only the empty prompt's embedding (:class:`NullTextEmbedding`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from harmony.errors import HarmonyInputError

log = logging.getLogger(__name__)

TEXT_SEQUENCE_LENGTH = 77
"""Token length of the CLIP text encoder of Stable Diffusion 1.x."""


class NullTextEmbedding(nn.Module):
    """The CLIP embedding of the empty prompt, kept as a buffer.

    Harmonization uses no text ("null text" adaptation): the embedding of ``""`` is computed once by
    :meth:`compute` (at the start of training/inference) and saved with the model, so the text encoder
    is never held afterwards. Until then it is all zeros, which is what a model built without a text
    encoder (tests, ``harmony summary``) uses.

    Args:
        dim: Width of the text embedding (the UNet's ``cross_attention_dim``; 768 for SD-1.x).
        length: Token length (77 for CLIP).
    """

    def __init__(self, dim: int, length: int = TEXT_SEQUENCE_LENGTH) -> None:
        super().__init__()
        self.register_buffer("embedding", torch.zeros(1, length, dim))

    @torch.no_grad()
    def compute(
        self,
        source: str,
        text_encoder_subfolder: str = "text_encoder",
        tokenizer_subfolder: str = "tokenizer",
    ) -> None:
        """Encode ``""`` with a CLIP text encoder and keep the result; the encoder is dropped afterwards.

        Args:
            source: Hub id or local folder of a pipeline holding the text encoder and tokenizer.
            text_encoder_subfolder: The text encoder's subfolder.
            tokenizer_subfolder: The tokenizer's subfolder.

        Raises:
            HarmonyInputError: They cannot be loaded, or the embedding's shape does not fit.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder=tokenizer_subfolder)
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder=text_encoder_subfolder)
        except (OSError, ValueError) as error:
            raise HarmonyInputError(
                source, f"cannot load the CLIP text encoder/tokenizer ({error})"
            ) from None
        tokens = tokenizer(
            [""],
            padding="max_length",
            max_length=self.embedding.shape[1],
            truncation=True,
            return_tensors="pt",
        )
        embedding = text_encoder(tokens.input_ids)[0]
        if embedding.shape != self.embedding.shape:
            raise HarmonyInputError(
                source,
                f"text embedding shape {tuple(embedding.shape)} does not fit {tuple(self.embedding.shape)}",
            )
        self.embedding.copy_(embedding.to(self.embedding))
        log.info("computed the empty-prompt embedding with the text encoder of %s", source)

    def forward(self, batch_size: int) -> torch.Tensor:
        """The embedding repeated for a batch: ``B×length×dim``."""
        return self.embedding.expand(batch_size, -1, -1)


def latent_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Downsample a ``B×1×H×W`` mask to the latent grid with nearest-neighbour sampling."""
    return F.interpolate(mask, size=tuple(size), mode="nearest")


def inpainting_input(
    noisy_latents: torch.Tensor, mask: torch.Tensor, composite_latents: torch.Tensor
) -> torch.Tensor:
    """The 9-channel input of an inpainting UNet used for harmonization.

    Args:
        noisy_latents: ``B×4×h×w`` noisy latents of the target (already scaled by the sampler).
        mask: ``B×1×h×w`` foreground mask on the latent grid (:func:`latent_mask`).
        composite_latents: ``B×4×h×w`` latents of the *full* composite (not masked: the foreground's
            content is exactly what harmonization keeps).

    Returns:
        ``cat[noisy_latents, mask, composite_latents]`` along channels, in that order.
    """
    return torch.cat(
        [noisy_latents, mask.to(noisy_latents.dtype), composite_latents.to(noisy_latents.dtype)], dim=1
    )


def unet_prediction(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    controlnet: ControlNetModel | None = None,
    hint: torch.Tensor | None = None,
    control_scale: float = 1.0,
) -> torch.Tensor:
    """The UNet's output for one denoising step, with a ControlNet's residuals when one is given.

    Args:
        unet: The denoising UNet.
        sample: Its input (the scaled noisy latents, with any concatenated condition channels).
        timestep: The diffusion timestep(s).
        text: ``B×L×D`` text embedding (the empty prompt's).
        controlnet: A ControlNet reading ``sample`` and ``hint``; ``None``: the UNet alone.
        hint: ``B×C×H×W`` pixel-resolution conditioning image of the ControlNet.
        control_scale: Factor on the ControlNet's residuals.
    """
    residuals = {}
    if controlnet is not None:
        if hint is None:
            raise ValueError("a ControlNet needs its hint image")
        down, mid = controlnet(
            sample,
            timestep,
            encoder_hidden_states=text,
            controlnet_cond=hint.to(sample.dtype),
            conditioning_scale=control_scale,
            return_dict=False,
        )
        residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    return unet(sample, timestep, encoder_hidden_states=text, **residuals).sample


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``B×C×H×W`` images in ``[0, 1]`` to ``size×size`` (bilinear, antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0, 1)


def resize_for_inference(
    composite: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch to the square working size of a latent model.

    Images are resized with :func:`resize_images`; the mask is resized bilinearly and re-thresholded at
    0.5, so it stays binary at any scale.
    """
    if composite.shape[-2:] == (size, size):
        return composite, (mask >= 0.5).to(composite.dtype)
    mask = F.interpolate(mask.to(composite.dtype), size=(size, size), mode="bilinear", align_corners=False)
    return resize_images(composite, size), (mask >= 0.5).to(composite.dtype)
