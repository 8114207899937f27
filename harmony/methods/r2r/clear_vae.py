"""R2R's Clear-VAE (paper Sec. "Clear-VAE" and "Training of Clear-VAE", Eq. 3–5, Table 3).

The SD VAE loses fine detail in its latent. The Clear-VAE gives it back from the composite: the frozen
encoder reads the composite, each of its 12 skip features (``conv_in`` output, each down-block resnet
output, each downsampler output) passes through an :class:`~harmony.methods.r2r.AdaptiveFilter`, which
keeps mostly high frequencies (the detail, not the composite's disharmonious colours), and enters one
decoder resnet, last in first out, through a zero-initialised 1×1 convolution. A fresh Clear-VAE
therefore decodes exactly like its VAE. Training (the real image's latent decoded with the composite's
skips) teaches the decoder to use that detail; a contrastive term pushes the reconstruction's
foreground away from disharmonious composites.

Where a decoder resnet takes the skip (the official ``ResnetBlockLoRA``): after its first norm and
activation, ``h ↦ conv1(h) + Dropout(ZeroConv1×1(h + skip))``, the skip tiled along channels where it
is narrower than ``h`` (×2 for the SD VAE). The VAE itself is not altered: the injection is a forward
hook on each ``conv1`` that lives for one decoding, so the VAE's state-dict keys, and pretrained SD VAE
weights, stay as they are.

* :class:`ClearVAESkips` — the filters and zero convolutions (≈1.90M parameters for the SD VAE).
* :class:`ClearVAEDecoder` — a VAE plus its skips as a :class:`~harmony.nn.latent.LatentDecoder`.
* :class:`ClearVAE` — the LightningModule that trains them; :func:`load_clear_vae` reads its export.
* :class:`VGG16Features` — the contrastive loss's feature network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from harmony.data import types as keys
from harmony.errors import HarmonyInputError
from harmony.methods.base import Batch, save_config_hyperparameters, to_uint8
from harmony.methods.latent_diffusion import GenerationCondition, LatentDiffusionModule
from harmony.methods.r2r.adaptive_filter import AdaptiveFilter
from harmony.nn.latent import (
    Generators,
    LatentDecoder,
    VAEDecoder,
    decoder_resnet_channels,
    decoder_resnet_in_channels,
    encoder_feature_channels,
    encoder_skip_features,
    load_pretrained_weights,
    resize_images,
    vae_scale_factor,
    zero_conv,
)


class ClearVAESkips(ModelMixin, ConfigMixin):
    """The Clear-VAE's additions to an SD-style VAE: 12 Adaptive Filters and 12 zero convolutions.

    Filter ``k`` filters encoder skip ``k``; zero convolution ``k`` (1×1, no bias, zero weights) maps
    decoder resnet ``k``'s input channels to its output channels and receives skip ``11 − k``. Saved and
    loaded in the diffusers folder format; made for a VAE with :meth:`from_vae`.

    Args:
        block_out_channels: Block widths of the VAE.
        layers_per_block: Resnets per encoder block of the VAE.
        dropout: Dropout on each injection (the official code's 0.1; the paper does not say).
        kernel_scale: Factor on the Adaptive Filters' fixed kernels (official: 1e-3).
        blur_kernel_size: Gaussian kernel side of the filters' high-pass (official: 15).
        blur_sigma: Gaussian standard deviation of the filters' high-pass (official: 5).
    """

    @register_to_config
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        dropout: float = 0.1,
        kernel_scale: float = 1e-3,
        blur_kernel_size: int = 15,
        blur_sigma: float = 5.0,
    ) -> None:
        super().__init__()
        widths = tuple(block_out_channels)
        skip_channels = encoder_feature_channels(widths, layers_per_block)
        in_channels = decoder_resnet_in_channels(widths, layers_per_block)
        for index, width in enumerate(in_channels):
            skip = skip_channels[-1 - index]
            if width % skip:
                raise HarmonyInputError(
                    None,
                    f"decoder resnet {index} takes {width} channels, not a multiple of its skip's {skip}",
                )
        self.filters = nn.ModuleList(
            AdaptiveFilter(kernel_scale, blur_kernel_size, blur_sigma) for _ in skip_channels
        )
        self.zero_convs = nn.ModuleList(
            zero_conv(width, out, bias=False)
            for width, out in zip(in_channels, decoder_resnet_channels(widths, layers_per_block), strict=True)
        )
        # Not `self.dropout`: diffusers' ModelMixin would answer that name with the config value.
        self.injection_dropout = nn.Dropout(dropout)

    @classmethod
    def from_vae(
        cls,
        vae: AutoencoderKL,
        dropout: float = 0.1,
        kernel_scale: float = 1e-3,
        blur_kernel_size: int = 15,
        blur_sigma: float = 5.0,
    ) -> ClearVAESkips:
        """The skips for ``vae``'s architecture (the other arguments are those of the class)."""
        config = vae.config
        return cls(
            tuple(config.block_out_channels),
            config.layers_per_block,
            dropout,
            kernel_scale,
            blur_kernel_size,
            blur_sigma,
        )

    def filter(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder's skip features (encoder order) through their Adaptive Filters."""
        return [f(feature) for f, feature in zip(self.filters, features, strict=True)]

    def injection(self, index: int, hidden: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """What decoder resnet ``index`` adds to its ``conv1`` output: ``Dropout(ZeroConv(h + skip))``.

        Args:
            index: The resnet, in decoding order.
            hidden: ``h``, the resnet's ``conv1`` input (after its first norm and activation).
            skip: The filtered skip feature it receives, tiled here to ``h``'s channels.
        """
        repeats = hidden.shape[1] // skip.shape[1]
        if repeats > 1:
            skip = skip.repeat(1, repeats, 1, 1)
        return self.injection_dropout(self.zero_convs[index](hidden + skip))


def _decoder_resnets(vae: AutoencoderKL) -> list[nn.Module]:
    """The decoder's up-block resnets, in decoding order."""
    return [resnet for block in vae.decoder.up_blocks for resnet in block.resnets]


class ClearVAEDecoder:
    """A VAE and its :class:`ClearVAESkips` as a :class:`~harmony.nn.latent.LatentDecoder`.

    The composite is encoded by the VAE's (frozen) encoder for its skip features; the mask is not used
    (the official decoder's condition is the composite alone, as in the paper's Fig. 1). Not a module of
    its own: it decodes with the modules it is given, which stay registered (and saved) where they are.

    Args:
        vae: The autoencoder.
        skips: Its Clear-VAE skips.
    """

    def __init__(self, vae: AutoencoderKL, skips: ClearVAESkips) -> None:
        self.vae = vae
        self.skips = skips

    def skip_features(self, composite: torch.Tensor) -> list[torch.Tensor]:
        """The composite's filtered skip features (encoder order).

        Args:
            composite: ``B×3×H×W`` in ``[-1, 1]``.
        """
        return self.skips.filter(encoder_skip_features(self.vae.encoder, composite))

    def decode(
        self, z: torch.Tensor, composite: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> DecoderOutput:
        """Decode latents with the composite's skips injected into the decoder resnets.

        Args:
            z: ``B×C×h×w`` unscaled latents.
            composite: ``B×3×H×W`` composite in ``[-1, 1]`` at the output size.
            mask: Not used.

        Returns:
            ``DecoderOutput`` whose ``sample`` is the ``B×3×H×W`` image in ``[-1, 1]``.

        Raises:
            HarmonyInputError: No composite, a composite of the wrong size, or a decoder with gradient
                checkpointing on (its recomputation would run after the injection is gone).
        """
        if composite is None:
            raise HarmonyInputError(None, "the Clear-VAE decodes with the composite's skips; none was given")
        expected = tuple(side * vae_scale_factor(self.vae) for side in z.shape[-2:])
        if tuple(composite.shape[-2:]) != expected:
            raise HarmonyInputError(
                None, f"the composite is {tuple(composite.shape[-2:])}, the latents decode to {expected}"
            )
        decoder = self.vae.decoder
        if decoder.gradient_checkpointing and torch.is_grad_enabled():
            raise HarmonyInputError(
                None, "the Clear-VAE does not support gradient checkpointing of the decoder"
            )
        skips = self.skip_features(composite)
        handles = []
        try:
            for index, resnet in enumerate(_decoder_resnets(self.vae)):
                skip = skips[-1 - index]

                def inject(
                    conv: nn.Module,
                    inputs: tuple[torch.Tensor, ...],
                    output: torch.Tensor,
                    index: int = index,
                    skip: torch.Tensor = skip,
                ) -> torch.Tensor:
                    return output + self.skips.injection(index, inputs[0], skip)

                handles.append(resnet.conv1.register_forward_hook(inject))
            hidden = z if self.vae.post_quant_conv is None else self.vae.post_quant_conv(z)
            # The decoder itself, not vae.decode: tiling or slicing would cut the latents apart from
            # their skips.
            return DecoderOutput(sample=decoder(hidden))
        finally:
            for handle in handles:
                handle.remove()


def load_clear_vae(folder: str | Path, vae: AutoencoderKL, skips: ClearVAESkips | None = None) -> None:
    """Load an exported Clear-VAE (``<folder>/vae``, ``<folder>/skips``) into built modules, strictly.

    Args:
        folder: The ``clear_vae`` folder :meth:`ClearVAE.export_pretrained` writes.
        vae: The VAE to fill (its latent scale is taken from the export).
        skips: The skips to fill; ``None`` loads the VAE only (a "w/o skips" export has none).

    Raises:
        HarmonyInputError: A part is missing or does not fit the modules' architecture.
    """
    load_pretrained_weights(vae, str(folder), "vae")
    if skips is not None:
        load_pretrained_weights(skips, str(folder), "skips")


class VGG16Features(nn.Module):
    """The first ``num_layers`` layers of torchvision's VGG16 ``features``, frozen (the L_cr features).

    Built with random weights; the ImageNet ones are loaded by :meth:`load_pretrained` when a run starts
    (:class:`ClearVAE` calls it), so building a model needs no network. Like the official code, the
    network reads the ``[-1, 1]`` images as they are; ``imagenet_normalization`` maps them to the
    statistics the ImageNet weights were trained with instead.

    Args:
        num_layers: Layers of ``vgg16().features`` kept; 23 ends at ``relu4_3`` (the official code's).
        weights: ``imagenet`` (downloaded by torchvision on first use) or ``random`` (tests).
        imagenet_normalization: Normalise the inputs with the ImageNet mean and standard deviation.
    """

    def __init__(
        self,
        num_layers: int = 23,
        weights: Literal["imagenet", "random"] = "imagenet",
        imagenet_normalization: bool = False,
    ) -> None:
        super().__init__()
        # Only the convolutional part: vgg16() would also build its 120M-parameter classifier.
        from torchvision.models.vgg import cfgs, make_layers

        self.layers = make_layers(cfgs["D"])[:num_layers]
        self.layers.requires_grad_(False)
        self.weights = weights
        self.imagenet_normalization = imagenet_normalization
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def load_pretrained(self) -> None:
        """Load the ImageNet weights (with ``weights: imagenet``).

        Raises:
            HarmonyInputError: torchvision cannot download (or read from its cache) the weights.
        """
        if self.weights != "imagenet":
            return
        from torchvision.models import VGG16_Weights

        try:
            state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as error:  # a failed download, a corrupt cache: the same one line
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise HarmonyInputError(
                None, f"cannot download the ImageNet VGG16 weights ({reason}); use weights: random offline"
            ) from None
        prefix = "features."
        kept = {
            name[len(prefix) :]: value
            for name, value in state.items()
            if name.startswith(prefix) and int(name.split(".")[1]) < len(self.layers)
        }
        self.layers.load_state_dict(kept)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``B×3×H×W`` images in ``[-1, 1]``."""
        if self.imagenet_normalization:
            images = ((images + 1) / 2 - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.layers(images)


def contrastive_regularization(
    feature_extractor: nn.Module,
    reconstruction: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    mask: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """R2R's contrastive regularisation (Eq. 4): ``D(f, f⁺) / (D(f, f⁺) + Σₖ D(f, f⁻ₖ) + eps)``.

    ``f``, ``f⁺``, ``f⁻ₖ`` are the features of the foregrounds (image × mask) of the reconstruction, the
    real image and the negatives; ``D`` is the mean absolute difference. The ratio is taken per image
    and averaged over the batch, as Eq. 4 is written for one image (the official code divides the
    batch means instead).

    Args:
        feature_extractor: The feature network (frozen; only the reconstruction's features carry
            gradients).
        reconstruction: ``B×3×H×W`` in ``[-1, 1]``.
        positive: ``B×3×H×W`` real images in ``[-1, 1]``.
        negatives: ``B×K×3×H×W`` negatives in ``[-1, 1]``.
        mask: ``B×1×H×W`` foreground mask.
        eps: Added to the denominator.
    """
    batch, count = negatives.shape[:2]
    mask = mask.to(reconstruction.dtype)
    with torch.no_grad():
        targets = feature_extractor(
            torch.cat([positive * mask, (negatives * mask[:, None]).flatten(0, 1)]).to(reconstruction.dtype)
        ).float()
    features = feature_extractor(reconstruction * mask).float()
    positive_features, negative_features = targets[:batch], targets[batch:].unflatten(0, (batch, count))
    to_positive = (features - positive_features).abs().flatten(1).mean(1)
    to_negatives = (features[:, None] - negative_features).abs().flatten(2).mean(2).sum(1)
    return (to_positive / (to_positive + to_negatives + eps)).mean()


def random_poisson_negatives(
    images: torch.Tensor, mask: torch.Tensor, count: int, rng: np.random.Generator, alpha: float = 0.75
) -> torch.Tensor:
    """``count`` Random Poisson Blending composites per image, the other images as references.

    Image ``i``'s foreground is Poisson-blended into a random region of another image of the batch
    (distinct references while the batch has enough; the image itself for a batch of one), and mixed
    with the original by ``alpha`` (:func:`harmony.data.composites.random_poisson_blending`).

    Args:
        images: ``B×3×H×W`` real images in ``[0, 1]``.
        mask: ``B×1×H×W`` foreground masks.
        count: Composites per image.
        rng: Draws the references and the blending positions.
        alpha: Share of the Poisson-blended foreground.

    Returns:
        ``B×count×3×H×W`` in ``[0, 1]``, on ``images``' device. An image with an empty mask gets
        itself (its foreground, all the loss looks at, is empty anyway).
    """
    from harmony.data.composites.poisson_blending import random_poisson_blending

    photos = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    masks = mask[:, 0].detach().float().cpu().numpy() >= 0.5
    batch = len(photos)
    negatives = []
    for index in range(batch):
        others = [other for other in range(batch) if other != index] or [index]
        references = rng.choice(others, size=count, replace=len(others) < count)
        for reference in references:
            if masks[index].any():
                negatives.append(
                    random_poisson_blending(photos[index], masks[index], photos[reference], rng, alpha)
                )
            else:
                negatives.append(photos[index])
    stacked = torch.from_numpy(np.stack(negatives)).to(images.device).permute(0, 3, 1, 2)
    return (stacked.float() / 255).unflatten(0, (batch, count))


class ClearVAE(LatentDiffusionModule):
    """Training of R2R's Clear-VAE (paper Eq. 3–5): decoder, Adaptive Filters and zero convs.

    The frozen encoder encodes the real image (posterior sample ``z``) and the composite (its skips);
    ``z`` is decoded with the filtered skips and compared with the real image:
    ``L = L_rec + contrastive_weight · L_cr`` (:func:`contrastive_regularization`, VGG16 features of
    the foregrounds). Trainable: the decoder and the skips; the encoder and the quant convs stay frozen.
    At the end of ``fit`` the VAE and the skips are exported to ``<log_dir>/pretrained/clear_vae``
    (:func:`load_clear_vae` reads them back).

    Evaluation scores that reconstruction (it needs the ground truth): the decoding quality R2R's
    diffusion stage can reach (Table 3's "real images" columns), not a harmonization.

    Where the paper and the official code differ, the defaults are the paper's and the code's choice is
    an option (or, for the schedule, a comment in ``experiments/r2r_clear_vae.yaml``):

    - reconstruction loss: MSE, Eq. 3 (code: L1, ``reconstruction_loss: l1``);
    - negatives: K = 3 with Random Poisson Blending (code: the composite alone, ``negatives: composite``);
    - AdamW lr 1e-4, batch 4 × 8 accumulated, 30 epochs (code: lr 1e-5, 4 × 4, 5 epochs).

    With ``random_poisson_blending`` the K negatives are the composite and K − 1 Random Poisson
    Blending composites of the real image (the other images of the batch as references): the paper's
    negatives are "the composite images", of which Random Poisson Blending makes *more*, and K = 1 is
    then the official code's single negative.

    Args:
        vae: The SD-style VAE (random weights until ``vae_pretrained`` loads).
        vae_pretrained: Hub id or folder of the VAE's weights (``stabilityai/sd-vae-ft-mse``).
        vae_subfolder: Subfolder of the VAE in ``vae_pretrained`` (``vae`` for a pipeline), or ``None``.
        feature_extractor: Features of L_cr; default (``None``): :class:`VGG16Features` with ImageNet
            weights. Not built when ``contrastive_weight`` is 0.
        optimizer: Optimizer; default AdamW (lr 1e-4, betas 0.9/0.999, as the paper).
        reconstruction_loss: ``mse`` (the paper's Eq. 3) or ``l1`` (the official code's); both are logged.
        contrastive_weight: λ of Eq. 5 (0.3); 0 trains without L_cr (Table 3's "w/o L_cr").
        negatives: ``random_poisson_blending`` (the paper) or ``composite`` (the official code's one
            negative; ``num_negatives`` is then ignored).
        num_negatives: K of Eq. 4.
        blending_alpha: Share of the Poisson-blended foreground in the Random Poisson Blending negatives
            (the paper's value is in its unpublished supplement; 0.75 is the official helper's).
        use_skips: Decode with the composite's skips; ``False`` fine-tunes the plain decoder, the
            "w/o skips" baseline.
        dropout: Dropout on each skip injection (the code's 0.1; the paper does not say).
        kernel_scale: Factor on the Adaptive Filters' fixed kernels (the code's 1e-3).
        blur_kernel_size: Gaussian kernel side of the filters' high-pass (the code's 15).
        blur_sigma: Gaussian standard deviation of the filters' high-pass (the code's 5).
        ema_decay: Maximum decay of an EMA of the trained weights; ``None`` (the code has none) disables it.
        seed: Seed of the posterior sample at evaluation, and of the negatives.
        compute_lpips: Also report LPIPS at test time.
        predictions_dir: Where ``predict`` writes its images.
        inference_size: Working resolution of the reconstruction (evaluation, prediction).
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        vae_pretrained: str | None = None,
        vae_subfolder: str | None = None,
        feature_extractor: nn.Module | None = None,
        optimizer: OptimizerCallable | None = None,
        reconstruction_loss: Literal["mse", "l1"] = "mse",
        contrastive_weight: float = 0.3,
        negatives: Literal["random_poisson_blending", "composite"] = "random_poisson_blending",
        num_negatives: int = 3,
        blending_alpha: float = 0.75,
        use_skips: bool = True,
        dropout: float = 0.1,
        kernel_scale: float = 1e-3,
        blur_kernel_size: int = 15,
        blur_sigma: float = 5.0,
        ema_decay: float | None = None,
        seed: int = 0,
        compute_lpips: bool = False,
        predictions_dir: str = "outputs/predictions",
        inference_size: int = 256,
    ) -> None:
        super().__init__(ema_decay, 1, seed, compute_lpips, predictions_dir, inference_size)
        save_config_hyperparameters(self, ("vae", "feature_extractor", "optimizer"))
        if num_negatives < 1:
            raise HarmonyInputError(None, f"num_negatives must be at least 1, got {num_negatives}")
        self.vae = vae
        for part in (vae.encoder, vae.quant_conv, vae.post_quant_conv):
            if part is not None:
                part.requires_grad_(False)
        self.skips = (
            ClearVAESkips.from_vae(vae, dropout, kernel_scale, blur_kernel_size, blur_sigma)
            if use_skips
            else None
        )
        self.decoder: LatentDecoder = (
            ClearVAEDecoder(vae, self.skips) if self.skips is not None else VAEDecoder(vae)
        )
        if contrastive_weight > 0 and feature_extractor is None:
            feature_extractor = VGG16Features()
        self.feature_extractor = feature_extractor if contrastive_weight > 0 else None
        if self.feature_extractor is not None:
            self.feature_extractor.requires_grad_(False)
        self.vae_pretrained = vae_pretrained
        self.vae_subfolder = vae_subfolder
        self.optimizer = optimizer
        self.reconstruction_loss = reconstruction_loss
        self.contrastive_weight = contrastive_weight
        self.negatives = negatives
        self.num_negatives = num_negatives
        self.blending_alpha = blending_alpha

    def load_pretrained(self) -> None:
        """Load the VAE's weights and the feature network's (the skips start at zero)."""
        if self.vae_pretrained:
            load_pretrained_weights(self.vae, self.vae_pretrained, self.vae_subfolder)
        else:
            rank_zero_warn("ClearVAE: no vae_pretrained; starting from a randomly initialised VAE")
        loader = getattr(self.feature_extractor, "load_pretrained", None)
        if callable(loader):
            loader()

    def export_pretrained(self, directory: str | Path) -> None:
        """Save ``<directory>/clear_vae/vae`` and ``<directory>/clear_vae/skips`` (:func:`load_clear_vae`)."""
        folder = Path(directory) / "clear_vae"
        self.vae.save_pretrained(folder / "vae")
        if self.skips is not None:
            self.skips.save_pretrained(folder / "skips")

    def negative_images(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """The negatives of L_cr: ``B×K×3×H×W`` in ``[0, 1]`` (K = 1 for ``composite``)."""
        composite = batch[keys.COMPOSITE].float()[:, None]
        if self.negatives == "composite" or self.num_negatives == 1:
            return composite
        # Seeded per step, so a run repeats; the rank keeps the devices' draws apart.
        rng = np.random.default_rng((self.seed, self.current_epoch, batch_idx, self.global_rank))
        blended = random_poisson_negatives(
            batch[keys.TARGET], batch[keys.MASK], self.num_negatives - 1, rng, self.blending_alpha
        )
        return torch.cat([composite, blended], dim=1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Eq. 5: reconstruction loss of the real image plus λ times the contrastive regularisation."""
        real = batch[keys.TARGET] * 2 - 1
        latents = self.vae.encode(real).latent_dist.sample()
        reconstruction = self.decoder.decode(latents, batch[keys.COMPOSITE] * 2 - 1, batch[keys.MASK]).sample
        reconstruction, target = reconstruction.float(), real.float()
        size = target.shape[0]
        losses = {"l1": F.l1_loss(reconstruction, target), "mse": F.mse_loss(reconstruction, target)}
        loss = losses[self.reconstruction_loss]
        if self.feature_extractor is not None:
            negatives = self.negative_images(batch, batch_idx) * 2 - 1
            losses["cr"] = contrastive_regularization(
                self.feature_extractor, reconstruction, target, negatives, batch[keys.MASK]
            )
            loss = loss + self.contrastive_weight * losses["cr"]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=size)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW (lr 1e-4, betas 0.9/0.999) over the decoder and the skips, unless ``optimizer`` is given."""
        parameters = [p for _, p in self.ema_named_parameters()]
        if self.optimizer is None:
            return torch.optim.AdamW(parameters, lr=1e-4, betas=(0.9, 0.999))
        return self.optimizer(parameters)

    def condition(self, batch: Batch, generators: Generators) -> GenerationCondition:
        """The working-size composite and mask, and the real image to reconstruct.

        Raises:
            HarmonyInputError: The batch has no ground truth (the Clear-VAE reconstructs; it does not
                harmonize on its own).
        """
        if keys.TARGET not in batch:
            raise HarmonyInputError(
                None, "ClearVAE reconstructs the real image and needs it (it does not harmonize on its own)"
            )
        condition = self.working_condition(batch)
        condition.extras[keys.TARGET] = resize_images(batch[keys.TARGET].float(), self.inference_size)
        return condition

    def sample(self, condition: GenerationCondition, generators: Generators) -> torch.Tensor:
        """A posterior sample of the real image's (unscaled) latent from the frozen encoder."""
        target = condition.extras[keys.TARGET] * 2 - 1
        return self.vae.encode(target).latent_dist.sample(generators)

    def decode(self, latents: torch.Tensor, condition: GenerationCondition) -> torch.Tensor:
        """The real image's latent decoded with the composite's skips, in ``[0, 1]``."""
        images = self.decoder.decode(latents, condition.composite * 2 - 1, condition.mask).sample
        return ((images.float() + 1) / 2).clamp(0, 1)
