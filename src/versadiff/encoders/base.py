"""Context encoders: what turns a batch of raw inputs of one modality into the context a network attends to.

Each encoder also defines "no context" for its modality: `null(batch)` is the unconditional context used by
condition dropout in training and by the unconditional branch of classifier-free guidance. It is the
encoding of an empty input (VD, U-ViT MS-COCO: the empty string; VD image->text: a black image), or a
learned null row (class labels: -1, which the network maps to its null embedding) -- never a guess of zeros
made elsewhere.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from versadiff.component import Registry

__all__ = ["ContextEncoder", "ENCODERS", "build_encoder"]

#: every context-encoder type, by the type_name of its config
ENCODERS: Registry["ContextEncoder"] = Registry("context encoder")


class ContextEncoder(nn.Module):
    """Base: `encode(inputs)` -> context tensor [B, ...]; `null(batch)` -> the unconditional context.

    modality: the kind of input (a data modality name: "text", "image", "class", ...).
    cond_key: the network keyword the context is passed under ("context", "class_labels").
    Frozen encoders (CLIP) run without gradients in eval mode; `trainable` ones are part of the model.
    """

    modality: ClassVar[str] = ""
    cond_key: ClassVar[str] = "context"
    trainable: ClassVar[bool] = False

    def encode(self, inputs: Sequence[Any] | Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, inputs: Sequence[Any]) -> None:
        """Raise a one-line ValueError for inputs this encoder cannot take (called before any sampling)."""

    def null(self, batch: int, mode: str | None = None) -> Tensor:
        """The unconditional context for `batch` samples; `mode` picks among an encoder's null styles
        (e.g. CLIP image: "zeros" or "black"), None its default."""
        raise NotImplementedError

    def forward(self, inputs: Sequence[Any] | Tensor) -> Tensor:
        return self.encode(inputs)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        b = next(iter(self.buffers()), None)
        return (p if p is not None else b).device if (p is not None or b is not None) else torch.device("cpu")


def build_encoder(spec: dict[str, Any]) -> ContextEncoder:
    """A context encoder from a tagged spec {"type": ..., ...} (see ENCODERS.names())."""
    return ENCODERS.build(spec)
