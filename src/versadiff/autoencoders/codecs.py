"""The codecs of images: KL latents, VQ latents and VQ tokens over a trained, frozen autoencoder.

    kl          (mode(E(x)) - shift) * scale            (LDM / SD; the posterior mean, so latents can be cached)
    vq          pre-quantisation latents * scale, snapped to the codebook before decoding (LDM's VQ first stage)
    vq_tokens   code indices [B, h, w] for discrete (VQ-Diffusion) models
A codec spec is {"type": kl | vq | vq_tokens, "path": <autoencoder run or folder>, "scale_factor": ...}; the
legacy `autoencoder` section of a run config ({path, kind, scale_factor}) is the image codec.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from versadiff.autoencoders.base import CODECS, Codec, no_autocast
from versadiff.autoencoders.kl import AutoencoderKL
from versadiff.autoencoders.vq import VQAutoencoder

__all__ = ["AutoencoderCodec", "KLCodec", "VQLatentCodec", "VQTokenCodec", "build_codec", "codec_spec_from_autoencoder"]

_SPEC_KEYS = {"type", "path", "scale_factor", "kind"}


class AutoencoderCodec(Codec):
    """A frozen convolutional autoencoder with downsampling factor f, seen as a codec of images."""

    autoencoder_class: type[nn.Module] = nn.Module

    def __init__(self, autoencoder: nn.Module, scale_factor: float | None = None) -> None:
        if not isinstance(autoencoder, self.autoencoder_class):
            raise ValueError(f"a {type(self).__name__} needs a {self.autoencoder_class.__name__}, got "
                             f"{type(autoencoder).__name__}")
        self.module = autoencoder.eval().requires_grad_(False)
        self.scale = float(self.default_scale() if scale_factor is None else scale_factor)
        if self.scale <= 0:
            raise ValueError(f"autoencoder.scale_factor must be > 0, got {self.scale}")
        self.factor = autoencoder.config.downsample_factor

    def default_scale(self) -> float:
        return 1.0

    @property
    def latent_channels(self) -> int:
        raise NotImplementedError

    def grid(self, data_shape: tuple[int, ...]) -> tuple[int, int]:
        _, h, w = data_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor {self.factor}")
        return h // self.factor, w // self.factor

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.latent_channels, *self.grid(data_shape))


@CODECS.register(name="kl")
class KLCodec(AutoencoderCodec):
    autoencoder_class = AutoencoderKL

    def default_scale(self) -> float:
        return float(self.module.config.scale_factor)

    @property
    def latent_channels(self) -> int:
        return self.module.config.z_channels

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        with no_autocast(data):
            return (self.module.encode(data.float()).mode() - self.module.config.shift_factor) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor, **options: Any) -> Tensor:
        with no_autocast(latents):
            return self.module.decode(latents.float() / self.scale + self.module.config.shift_factor)


@CODECS.register(name="vq")
class VQLatentCodec(AutoencoderCodec):
    autoencoder_class = VQAutoencoder

    @property
    def latent_channels(self) -> int:
        return self.module.config.embed_dim

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        with no_autocast(data):
            return self.module.encode_pre_quant(data.float()) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor, **options: Any) -> Tensor:
        q = self.module.quantize
        with no_autocast(latents):
            return self.module.decode(q.lookup(q.indices(latents.float() / self.scale)))


@CODECS.register(name="vq_tokens")
class VQTokenCodec(AutoencoderCodec):
    """Code indices [B, h, w] in 0..K-1: the data of discrete (mask-and-replace) diffusion."""

    space = "tokens"
    autoencoder_class = VQAutoencoder

    @property
    def num_codes(self) -> int:
        return self.module.config.n_embed

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.grid(data_shape)

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        with no_autocast(data):
            return self.module.quantize.indices(self.module.encode_pre_quant(data.float()))

    @torch.no_grad()
    def decode(self, latents: Tensor, **options: Any) -> Tensor:
        with no_autocast(latents):
            return self.module.decode(self.module.quantize.lookup(latents))


def codec_spec_from_autoencoder(section: dict[str, Any] | None, default_type: str) -> dict[str, Any] | None:
    """The image codec spec of a run config's legacy `autoencoder` section ({path, kind, scale_factor})."""
    if section is None:
        return None
    spec = {"type": default_type, "path": section.get("path")}
    if section.get("scale_factor") is not None:
        spec["scale_factor"] = section["scale_factor"]
    if section.get("kind") is not None:
        spec["kind"] = section["kind"]
    return spec


def build_codec(spec: dict[str, Any] | None, device: str | torch.device = "cpu") -> Codec:
    """A codec from its spec (None: the identity). Autoencoder codecs load their network from spec["path"];
    type "latent" takes the continuous codec of whatever autoencoder is found there (KL or VQ)."""
    if spec is None:
        return CODECS.get("identity")()
    kind = spec.get("type", "")
    cls = None if kind == "latent" else CODECS.get(kind)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, AutoencoderCodec)):
        # any other codec builds from its own config; a scale_factor scales its latents (z * scale)
        spec = dict(spec)
        scale = spec.pop("scale_factor", None)
        codec = CODECS.build(spec) if getattr(cls, "config_class", None) is not None else cls(spec)
        if scale is not None:
            if not float(scale) > 0:
                raise ValueError(f"codecs.{codec.modality}.scale_factor must be > 0, got {scale}")
            codec.scale = float(scale)
        return codec.to(device)
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown codec key {unknown[0]!r}; valid keys: path, scale_factor")
    path = spec.get("path")
    if not path:
        raise ValueError("this preset works in a latent space: set autoencoder.path=... (an autoencoder run folder, "
                         "e.g. from versadiff train shapes_klae)")
    from versadiff.autoencoders.loading import load_autoencoder

    ae = load_autoencoder(path, device=device)
    have = {AutoencoderKL: "kl", VQAutoencoder: "vq"}.get(type(ae), type(ae).__name__)
    if cls is not None and not isinstance(ae, cls.autoencoder_class):
        need = "VQ" if cls.autoencoder_class is VQAutoencoder else "KL"
        raise ValueError(f"{path} holds a {have.upper()} autoencoder; this model needs a {need} autoencoder "
                         f"(e.g. versadiff train shapes_{need.lower()}ae)")
    want = spec.get("kind")
    if want is not None and have != want:
        raise ValueError(f"autoencoder.kind is {want!r} but {path} holds a {have!r} autoencoder; set autoencoder.kind={have}")
    cls = cls or _LATENT_CODECS.get(type(ae))
    if cls is None:
        raise ValueError(f"{path} holds a {type(ae).__name__}, which has no latent codec")
    return cls(ae, spec.get("scale_factor"))


#: the continuous codec of each autoencoder class (codec type "latent")
_LATENT_CODECS: dict[type, type[AutoencoderCodec]] = {AutoencoderKL: KLCodec, VQAutoencoder: VQLatentCodec}
