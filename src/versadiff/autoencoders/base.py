"""Codecs: the map between a data modality and the space its diffusion model works in.

    z = codec.encode(data)      # images [B, C, H, W] in [-1, 1], or a list of captions -> latents [B, ...]
    data = codec.decode(z)      # latents -> images in [-1, 1] (not clamped), or a list of captions

Pixel models use the identity; latent models a KL or VQ autoencoder (scaled latents); VQ-Diffusion the VQ
tokens; text the text VAE's mean latent. Codecs wrap frozen, trained modules: they run in float32 outside any
autocast, so training, sampling and evaluation see the same latents.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from versadiff.component import Registry

__all__ = ["Codec", "IdentityCodec", "CODECS", "no_autocast"]

#: every codec kind by name ("identity", "kl", "vq", "vq_tokens", "text_vae", ...)
CODECS: Registry["Codec"] = Registry("codec")


def no_autocast(x: Tensor | torch.device | str):
    """A context where a surrounding (bf16) autocast does not reach a frozen codec."""
    dev = x.device.type if torch.is_tensor(x) else torch.device(x).type
    return torch.autocast(dev, enabled=False)


class Codec:
    """Base of the codecs. `module` is the frozen network behind it (None for the identity)."""

    modality: ClassVar[str] = "image"
    #: "continuous" latents for Gaussian diffusion, "tokens" (integer codes) for discrete diffusion
    space: ClassVar[str] = "continuous"
    module: nn.Module | None = None
    scale: float = 1.0

    def encode(self, data: Any) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor, **options: Any) -> Any:
        raise NotImplementedError

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one latent for one item of shape `data_shape` (images: [C, H, W])."""
        raise NotImplementedError

    def to(self, device: str | torch.device) -> "Codec":
        if self.module is not None:
            self.module.to(device)
        return self


@CODECS.register(name="identity")
class IdentityCodec(Codec):
    """Pixel space: the data is what the diffusion model sees."""

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.scale = 1.0

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, latents: Tensor, **options: Any) -> Tensor:
        return latents

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(data_shape)
