"""Network building blocks shared by the methods."""

from harmony.nn.harmony_vae import HarmonyVAEModel as HarmonyVAEModel
from harmony.nn.latent import NullTextEmbedding as NullTextEmbedding
from harmony.nn.latent import build_noise_scheduler as build_noise_scheduler
from harmony.nn.latent import build_unet as build_unet
from harmony.nn.latent import build_vae as build_vae
from harmony.nn.refinement import RefinementUNet as RefinementUNet
