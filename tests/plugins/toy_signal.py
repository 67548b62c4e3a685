"""A new modality added from outside the package: 1-D signals, generated from a frequency context.

Importing this module registers everything a run needs -- a dataset, a data modality and its codec, a context
modality and its encoder, a network and a flow -- without editing any versadiff module. (The test of the
foundation issue: a new modality is new files only.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from versadiff.autoencoders.base import CODECS, Codec
from versadiff.component import ComponentConfig
from versadiff.data.registry import DATASETS
from versadiff.encoders.base import ENCODERS, ContextEncoder
from versadiff.flows import FLOWS, MODALITIES, Flow, Modality
from versadiff.nets.layers import NetConfig, timestep_embedding
from versadiff.nets.registry import NETS

LENGTH = 16
FREQS = (1.0, 2.0, 3.0)


class SignalDataset(Dataset):
    """sin(2 pi f x + phase) on LENGTH points, f from FREQS; item {"signal": [1, L], "frequency": f}."""

    def __init__(self, size: int = 256, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.freq = torch.tensor(FREQS)[torch.randint(len(FREQS), (size,), generator=g)]
        self.phase = torch.rand(size, generator=g) * 2 * math.pi

    def __len__(self) -> int:
        return len(self.freq)

    def __getitem__(self, i: int) -> dict:
        x = torch.linspace(0, 1, LENGTH)
        return {"signal": torch.sin(2 * math.pi * self.freq[i] * x + self.phase[i])[None] * 0.8,
                "frequency": float(self.freq[i])}


def _toy_signal(size: int = 256, seed: int = 0) -> Dataset:
    return SignalDataset(size, seed)


@CODECS.register(name="toy_signal_gain")
class GainCodec(Codec):
    """The signal times a gain: a codec with a scale, as latent codecs have."""

    modality = "signal"

    def __init__(self, spec: dict) -> None:
        self.scale = float(spec.get("gain", 1.25))

    def encode(self, data: Tensor) -> Tensor:
        return data * self.scale

    def decode(self, latents: Tensor, **options) -> Tensor:
        return latents / self.scale

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(data_shape)


@dataclass
class FrequencyEncoderConfig(ComponentConfig):
    type_name = "toy_frequency"
    dim: int = 16


@ENCODERS.register
class FrequencyEncoder(ContextEncoder):
    """A frequency as one context token (its sinusoidal embedding); the null context is the embedding of 0."""

    config_class = FrequencyEncoderConfig
    modality = "frequency"

    def __init__(self, config: FrequencyEncoderConfig) -> None:
        super().__init__()
        self.config = config

    def encode(self, inputs) -> Tensor:
        f = torch.as_tensor([float(v) for v in inputs], dtype=torch.float32)
        return timestep_embedding(f * 100.0, self.config.dim)[:, None]

    def null(self, batch: int, mode: str | None = None) -> Tensor:
        return self.encode([0.0] * batch)


@dataclass
class ToySignalNetConfig(NetConfig):
    type_name = "toy_signal_net"
    length: int = LENGTH
    context_dim: int = 16
    width: int = 64


@NETS.register
class ToySignalNet(nn.Module):
    """An MLP on (signal, time embedding, context token)."""

    config_class = ToySignalNetConfig

    def __init__(self, config: ToySignalNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.body = nn.Sequential(nn.Linear(c.length + c.width + c.context_dim, c.width), nn.SiLU(),
                                  nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.length))

    def forward(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        temb = timestep_embedding(t, self.config.width)
        ctx = context[:, 0] if context is not None else x.new_zeros(x.shape[0], self.config.context_dim)
        return self.body(torch.cat([x.flatten(1), temb.to(x.dtype), ctx.to(x.dtype)], 1)).reshape(x.shape)


DATASETS["toy_signal"] = _toy_signal
MODALITIES.register(Modality("signal", "signal"), name="signal")
MODALITIES.register(Modality("frequency", "frequency"), name="frequency")
FLOWS.register(Flow("frequency-to-signal", "signal", "frequency"), name="frequency-to-signal")
