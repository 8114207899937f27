"""Images ↔ latents: VAE encoding with the config's scale, and the decoders behind one protocol.

A latent-diffusion method denoises *scaled* latents (the VAE's latents times its ``scaling_factor``);
:func:`encode_images` and :func:`unscale_latents` convert between the two. Decoding goes through a
:class:`LatentDecoder`: the plain VAE (:class:`VAEDecoder`), DiffHarmony++'s Harmony-VAE and R2R's
Clear-VAE all turn unscaled latents into an image, the latter two with the composite and mask as
condition, so a method swaps its decoder without touching its sampling.
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput

from harmony.nn.latent.sampling import Generators


class LatentDecoder(Protocol):
    """Anything that decodes VAE latents into an image, optionally conditioned on the composite."""

    def decode(
        self, z: torch.Tensor, composite: torch.Tensor | None, mask: torch.Tensor | None
    ) -> DecoderOutput:
        """Decode latents.

        Args:
            z: ``B×C×h×w`` unscaled latents (what ``AutoencoderKL.decode`` takes: :func:`unscale_latents`).
            composite: ``B×3×H×W`` composite in ``[-1, 1]`` at the output size (``None``: no condition,
                for decoders that need none).
            mask: ``B×1×H×W`` foreground mask in ``{0, 1}`` (or ``None``, as ``composite``).

        Returns:
            ``DecoderOutput`` whose ``sample`` is the ``B×3×H×W`` image in ``[-1, 1]``.
        """


class VAEDecoder:
    """The plain VAE as a :class:`LatentDecoder`: the composite and mask are not used.

    Not a module of its own: it decodes with the VAE it is given, so the weights stay where they are
    registered (and saved) once.

    Args:
        vae: The autoencoder.
    """

    def __init__(self, vae: AutoencoderKL) -> None:
        self.vae = vae

    def decode(
        self, z: torch.Tensor, composite: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> DecoderOutput:
        """Decode ``z`` with the VAE alone."""
        return self.vae.decode(z)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """How many pixels one latent cell covers along each side (8 for the SD VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_images(
    vae: AutoencoderKL, images: torch.Tensor, generator: Generators = None, sample: bool = True
) -> torch.Tensor:
    """Encode ``[0, 1]`` images into scaled latents (the diffusion model's space).

    Args:
        vae: The autoencoder; its config's ``scaling_factor`` (and ``shift_factor``) are applied.
        images: ``B×3×H×W`` in ``[0, 1]``.
        generator: Generator(s) for the posterior sample (one per image for batch-independent results).
        sample: Draw from the posterior (as Stable Diffusion does) instead of taking its mean.
    """
    posterior = vae.encode(images * 2 - 1).latent_dist
    latents = posterior.sample(generator) if sample else posterior.mode()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def unscale_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Undo the scaling of :func:`encode_images`, giving what ``vae.decode`` expects."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


def decode_latents(
    vae: AutoencoderKL,
    latents: torch.Tensor,
    decoder: LatentDecoder | None = None,
    composite: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode scaled latents into ``[0, 1]`` images (clamped).

    Args:
        vae: The VAE that encoded the latents: its scale is undone.
        latents: ``B×C×h×w`` scaled latents.
        decoder: The decoder; default: ``vae`` itself (:class:`VAEDecoder`).
        composite: ``B×3×H×W`` composite in ``[0, 1]``, the condition of a conditional decoder.
        mask: ``B×1×H×W`` foreground mask, the condition of a conditional decoder.
    """
    decoder = decoder if decoder is not None else VAEDecoder(vae)
    condition = None if composite is None else composite * 2 - 1
    images = decoder.decode(unscale_latents(vae, latents), condition, mask).sample
    return ((images + 1) / 2).clamp(0, 1)
