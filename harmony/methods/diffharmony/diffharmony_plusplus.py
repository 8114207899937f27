"""DiffHarmony++ (Zhou et al. 2024): DiffHarmony whose latents are decoded by a trained Harmony-VAE."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.utilities import rank_zero_warn

from harmony.methods.diffharmony.diffharmony import DiffHarmony
from harmony.methods.diffharmony.harmony_vae import HarmonyVAEModel
from harmony.nn.latent import LatentDecoder, load_pretrained_weights


class DiffHarmonyPlusPlus(DiffHarmony):
    """DiffHarmony++: DiffHarmony whose latents are decoded by a trained Harmony-VAE.

    Only decoding changes: the Harmony-VAE (made from ``vae``, loaded from ``harmony_vae_pretrained``)
    decodes with the working-size composite and mask as condition. Without trained weights it decodes
    exactly like ``vae``. The paper reuses a trained DiffHarmony UNet (``unet_pretrained``).

    Args:
        unet: See :class:`DiffHarmony`.
        vae: See :class:`DiffHarmony`; the Harmony-VAE has the same architecture.
        noise_scheduler: See :class:`DiffHarmony`.
        harmony_vae_pretrained: Hub id or folder of a trained Harmony-VAE in the diffusers format (what
            :class:`~harmony.methods.diffharmony.HarmonyVAE` exports to ``<log_dir>/pretrained/harmony_vae``).
        **kwargs: The other arguments of :class:`DiffHarmony`.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        noise_scheduler: DDPMScheduler,
        harmony_vae_pretrained: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(unet, vae, noise_scheduler, **kwargs)
        self.harmony_vae = HarmonyVAEModel.from_vae(vae).requires_grad_(False)
        self.harmony_vae_pretrained = harmony_vae_pretrained

    def load_pretrained(self) -> None:
        """Load DiffHarmony's weights, then the Harmony-VAE (or derive it from the loaded VAE)."""
        super().load_pretrained()
        if self.harmony_vae_pretrained:
            load_pretrained_weights(self.harmony_vae, self.harmony_vae_pretrained)
        else:
            rank_zero_warn(f"{type(self).__name__}: no harmony_vae_pretrained; decoding like the plain VAE")
            self.harmony_vae.initialize_from_vae(self.vae)

    @property
    def latent_decoder(self) -> LatentDecoder:
        """The Harmony-VAE, conditioned on the working-size composite and mask."""
        return self.harmony_vae
