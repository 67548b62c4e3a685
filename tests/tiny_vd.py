"""Tiny random VD components (CLIP pair, text VAE, KL autoencoder) written in the folder layouts the real ones load
from: root/clip, root/tvae, root/kl. One definition for every VD test."""

from __future__ import annotations

from pathlib import Path

import torch

from versadiff.autoencoders import AutoencoderKL, KLConfig
from versadiff.autoencoders.text_vae import TextVAE, TextVAEConfig
from versadiff.encoders.clip import ClipPair, ClipPairConfig


def write_tiny_vd_parts(root: Path) -> Path:
    """Seeded (torch seed 0) tiny parts under root; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ClipPair(ClipPairConfig(text_hidden_size=16, text_layers=1, text_heads=2, text_intermediate_size=32,
                            vision_hidden_size=16, vision_layers=1, vision_heads=2, vision_intermediate_size=32,
                            image_size=16, patch_size=8, projection_dim=16, context_length=12)).save_pretrained(root / "clip")
    TextVAE(TextVAEConfig(latent_size=8, bert_hidden_size=16, bert_layers=1, bert_heads=2, bert_intermediate_size=32,
                          gpt2_hidden_size=16, gpt2_layers=1, gpt2_heads=2, max_decoder_length=24)).save_pretrained(root / "tvae")
    AutoencoderKL(KLConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=4,
                           mid_attention=False, scale_factor=1.0)).save_pretrained(root / "kl")
    return root
