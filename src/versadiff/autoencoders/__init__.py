"""Latent spaces: codecs (identity, KL, VQ latents, VQ tokens) over the KL autoencoder (SD / LDM kl-f8) and the VQ
autoencoder (VQGAN), with their losses and loaders."""

from versadiff.autoencoders.base import CODECS, Codec, IdentityCodec
from versadiff.autoencoders.codecs import KLCodec, VQLatentCodec, VQTokenCodec, build_codec
from versadiff.autoencoders.kl import AutoencoderKL, DiagonalGaussian, KLConfig
from versadiff.autoencoders.loading import AUTOENCODERS, build_autoencoder, load_autoencoder
from versadiff.autoencoders.losses import AutoencoderLoss, PatchDiscriminator
from versadiff.autoencoders.vq import VectorQuantizer, VQAutoencoder, VQConfig

__all__ = [
    "AUTOENCODERS",
    "AutoencoderKL",
    "AutoencoderLoss",
    "CODECS",
    "Codec",
    "DiagonalGaussian",
    "IdentityCodec",
    "KLCodec",
    "KLConfig",
    "PatchDiscriminator",
    "VQAutoencoder",
    "VQConfig",
    "VQLatentCodec",
    "VQTokenCodec",
    "VectorQuantizer",
    "build_autoencoder",
    "build_codec",
    "load_autoencoder",
]
