"""Latent spaces: codecs (identity, KL, VQ latents, VQ tokens, text VAE) over the KL autoencoder (SD / LDM kl-f8),
the VQ autoencoder (VQGAN) and the Optimus text VAE, with their losses and loaders."""

from versadiff.autoencoders.base import CODECS, Codec, IdentityCodec
from versadiff.autoencoders.codecs import KLCodec, VQLatentCodec, VQTokenCodec, build_codec
from versadiff.autoencoders.kl import AutoencoderKL, DiagonalGaussian, KLConfig
from versadiff.autoencoders.loading import AUTOENCODERS, build_autoencoder, load_autoencoder
from versadiff.autoencoders.losses import AutoencoderLoss, PatchDiscriminator
from versadiff.autoencoders.text_vae import TextVAE, TextVAECodec, TextVAEConfig, frange_cycle_zero_linear, kl_beta
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
    "TextVAE",
    "TextVAECodec",
    "TextVAEConfig",
    "VQAutoencoder",
    "VQConfig",
    "VQLatentCodec",
    "VQTokenCodec",
    "VectorQuantizer",
    "build_autoencoder",
    "build_codec",
    "frange_cycle_zero_linear",
    "kl_beta",
    "load_autoencoder",
]
