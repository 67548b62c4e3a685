"""Class labels as a context: names or indices -> label tensor [B]; -1 is the null class.

The learned class embedding table stays inside the network (it is trained with it, and the shipped weights
hold it as `class_emb`); this encoder owns the mapping from what a user types to label indices and the
null label that classifier-free guidance and condition dropout use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from versadiff.component import ComponentConfig
from versadiff.conditioning import NULL_CLASS
from versadiff.encoders.base import ENCODERS, ContextEncoder

__all__ = ["ClassLabelConfig", "ClassLabelEncoder"]


@dataclass
class ClassLabelConfig(ComponentConfig):
    type_name = "class_labels"

    num_classes: int = 0
    class_names: list = field(default_factory=list)


@ENCODERS.register
class ClassLabelEncoder(ContextEncoder):
    """Labels given as indices (0..K-1, -1 = null) or class names, one per sample."""

    config_class = ClassLabelConfig
    modality = "class"
    cond_key = "class_labels"

    def __init__(self, config: ClassLabelConfig) -> None:
        super().__init__()
        if config.num_classes < 1:
            raise ValueError("class labels need num_classes >= 1 (the model is unconditional)")
        self.config = config
        self.num_classes = config.num_classes
        self.class_names = [str(c) for c in config.class_names]

    def index(self, c: int | str) -> int:
        """A class index from an index or a class name; -1 is the null class."""
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in self.class_names:
                raise ValueError(f"unknown class name {c!r}; choose one of {', '.join(self.class_names)}")
            return self.class_names.index(c)
        i = int(c)
        if not NULL_CLASS <= i < self.num_classes:
            raise ValueError(f"class index {i} out of range: this model has {self.num_classes} classes "
                             f"(0..{self.num_classes - 1}, -1 = unconditional)")
        return i

    def encode(self, inputs: Sequence[Any] | Tensor) -> Tensor:
        if torch.is_tensor(inputs):
            inputs = inputs.tolist()
        return torch.tensor([self.index(c) for c in inputs], dtype=torch.long)

    def check(self, inputs: Sequence[Any]) -> None:
        self.encode(inputs)

    def null(self, batch: int, mode: str | None = None) -> Tensor:
        return torch.full((batch,), NULL_CLASS, dtype=torch.long)
