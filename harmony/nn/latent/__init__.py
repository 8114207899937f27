"""The latent-diffusion core shared by DiffHarmony, R2R and the classifier-guided LDM.

The diffusers components are used as they are (``UNet2DConditionModel``, ``ControlNetModel``,
``AutoencoderKL``, the schedulers); this package adds what harmonization needs around them:

* :mod:`.components` — building the Stable-Diffusion architectures offline from shipped presets,
  ControlNets from a UNet config, and loading pretrained weights into them later;
* :mod:`.autoencoder` — images ↔ scaled latents, and the :class:`LatentDecoder` protocol behind which
  the plain VAE, the Harmony-VAE and the Clear-VAE decode;
* :mod:`.conditioning` — the inpainting concatenation, ControlNet residuals, the empty-prompt
  embedding, the working resolution;
* :mod:`.sampling` — samplers by name and the one denoising loop, with a per-step hook for guidance;
* :mod:`.losses` — the foreground-weighted latent MSE and the scheduler's training target;
* :mod:`.skips` — encoder-to-decoder skip connections (the encoder's skip features, the channel counts
  on both sides, zero-initialised 1×1 convolutions), shared by the Harmony-VAE and the Clear-VAE.
"""

from harmony.nn.latent.autoencoder import (
    LatentDecoder,
    VAEDecoder,
    decode_latents,
    encode_images,
    unscale_latents,
    vae_scale_factor,
)
from harmony.nn.latent.components import (
    CONFIGS_DIR,
    build_controlnet,
    build_noise_scheduler,
    build_unet,
    build_vae,
    component_config_path,
    initialize_controlnet_from_unet,
    load_pretrained_weights,
)
from harmony.nn.latent.conditioning import (
    TEXT_SEQUENCE_LENGTH,
    NullTextEmbedding,
    inpainting_input,
    latent_mask,
    resize_for_inference,
    resize_images,
    unet_prediction,
)
from harmony.nn.latent.losses import diffusion_target, foreground_weighted_mse
from harmony.nn.latent.sampling import (
    DenoisingStep,
    Generators,
    SamplerName,
    SamplingHook,
    build_sampler,
    predicted_original,
    sample_latents,
    seeded_generators,
)
from harmony.nn.latent.skips import (
    decoder_resnet_channels,
    decoder_resnet_in_channels,
    encoder_feature_channels,
    encoder_skip_features,
    zero_conv,
)

__all__ = [
    "CONFIGS_DIR",
    "TEXT_SEQUENCE_LENGTH",
    "DenoisingStep",
    "Generators",
    "LatentDecoder",
    "NullTextEmbedding",
    "SamplerName",
    "SamplingHook",
    "VAEDecoder",
    "build_controlnet",
    "build_noise_scheduler",
    "build_sampler",
    "build_unet",
    "build_vae",
    "component_config_path",
    "decode_latents",
    "decoder_resnet_channels",
    "decoder_resnet_in_channels",
    "diffusion_target",
    "encode_images",
    "encoder_feature_channels",
    "encoder_skip_features",
    "foreground_weighted_mse",
    "initialize_controlnet_from_unet",
    "inpainting_input",
    "latent_mask",
    "load_pretrained_weights",
    "predicted_original",
    "resize_for_inference",
    "resize_images",
    "sample_latents",
    "seeded_generators",
    "unet_prediction",
    "unscale_latents",
    "vae_scale_factor",
    "zero_conv",
]
