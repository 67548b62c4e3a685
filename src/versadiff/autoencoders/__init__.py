"""Latent spaces: the KL autoencoder (SD / LDM kl-f8) and the VQ autoencoder (VQGAN) with their losses."""

from versadiff.autoencoders.kl import AutoencoderKL, DiagonalGaussian, KLConfig
from versadiff.autoencoders.losses import AutoencoderLoss, PatchDiscriminator
from versadiff.autoencoders.vq import VectorQuantizer, VQAutoencoder, VQConfig

__all__ = [
    "AutoencoderKL",
    "AutoencoderLoss",
    "DiagonalGaussian",
    "KLConfig",
    "PatchDiscriminator",
    "VQAutoencoder",
    "VQConfig",
    "VectorQuantizer",
]
