"""What is trained, one class per `task` of a run config, and how its weights become a pipeline again.

The trainer owns the loop (data order, optimizer, EMA, checkpoints, logging); a task owns the rest:
  check_config(cfg)      the config sections only it reads (one-line ConfigErrors), before anything is built
  build_network(cfg)     the nn.Module that is optimised (and averaged by EMA), also for inference
  losses(model, batch)   per-sample training losses of one micro-batch, from the dataset's own items
  pipeline(net, ...)     the trained weights as something with `generate` (versadiff.pipelines.Pipeline)
  sample_grid(...)       the training-time grid: its images, row length and captions (SampleGrid)
  log_stats() / info() / state_dict()   extra stats, facts stored in every weight file, state for exact resume
Tasks register in TASKS by name; nothing else in the package switches on a task's name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from versadiff.component import Registry
from versadiff.config import ConfigError, RunConfig

__all__ = ["Task", "TASKS", "task_class", "dataset_facts", "grid_rows", "SampleGrid"]

TASKS: Registry[type["Task"]] = Registry("task")


class SampleGrid(NamedTuple):
    """A training-time grid: images [N, C, H, W] in [-1, 1], images per row, and a caption per image (the prompt
    each was made for) or None; the trainer adds class names itself for class-conditional grids."""

    images: Tensor
    nrow: int
    labels: list[str] | None = None


def task_class(name: str) -> type["Task"]:
    """The Task class registered as `name` (importing the built-in tasks first)."""
    import versadiff.tasks  # noqa: F401  (registers the built-in tasks)

    return TASKS.get(name)


def dataset_facts(dataset: Dataset) -> dict[str, Any]:
    """What a task needs to know of its data: the shape of each tensor-valued modality, classes, class names."""
    from versadiff.flows import MODALITIES

    if isinstance(dataset, IterableDataset):  # streamed shards (images) have no random access
        shapes = {"image": [int(dataset.channels), int(dataset.resolution), int(dataset.resolution)]}
    else:
        item = dataset[0]
        shapes = {m: [int(s) for s in item[MODALITIES.get(m).batch_key].shape] for m in MODALITIES.names()
                  if torch.is_tensor(item.get(MODALITIES.get(m).batch_key)) and item[MODALITIES.get(m).batch_key].ndim}
    facts = {"data_shapes": shapes, "num_classes": int(getattr(dataset, "num_classes", 0) or 0),
             "class_names": list(getattr(dataset, "class_names", None) or [])}
    if "image" in shapes:
        facts["image_shape"] = shapes["image"]
    return facts


class Task:
    """Base: the interface the trainer and load_model call. Subclasses set `net` in __init__ (first)."""

    name: ClassVar[str] = ""
    net: nn.Module

    # -- before anything is built ----------------------------------------------------------------

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Reject config sections this task does not read (they would be silently ignored)."""
        if cfg.discrete:
            raise ConfigError(f"config key 'discrete' applies to task vq_diffusion, this run has task {cls.name!r}")
        if cfg.ae_loss:
            raise ConfigError(f"config key 'ae_loss' applies to task autoencoder, this run has task {cls.name!r}")
        if cfg.sample.truncation != 1.0:
            raise ConfigError(f"config key 'sample.truncation' applies to task vq_diffusion, this run has task {cls.name!r}")

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """Checks that need more than the config's own consistency (paths to set), before data is read."""

    @classmethod
    def build_network(cls, cfg: RunConfig) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def needs_text(cls, cfg: RunConfig) -> bool:
        """Whether the task reads captions from the data (readers then require them)."""
        return False

    @classmethod
    def count_parameters(cls, cfg: RunConfig) -> int:
        """Parameters of the trained network, counted on the meta device."""
        with torch.device("meta"):
            net = cls.build_network(cfg)
        return sum(p.numel() for p in net.parameters())

    @classmethod
    def pipeline(cls, net: nn.Module, cfg: RunConfig, info: dict[str, Any], source: str = "",
                 device: str | torch.device = "cpu") -> Any:
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------------

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        self.cfg, self.dataset, self.device, self.seed = cfg, dataset, device, seed
        self.facts = dataset_facts(dataset)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.facts.get("image_shape", ()))

    def images(self, batch: dict[str, Any]) -> Tensor:
        """The batch's images on the training device, float32."""
        return batch["image"].to(self.device, torch.float32)

    def begin_step(self, step: int) -> None:
        """Called before each optimizer step with the number of steps done (e.g. for a KL-weight schedule)."""

    def losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        """Per-sample losses [B] of a micro-batch; `model` is the (possibly wrapped) training view of `net`."""
        raise NotImplementedError

    def export_files(self, ema_net: nn.Module, folder: Path) -> None:
        """Files beside the exported weights that other runs load (e.g. an encoder's own folder layout)."""

    def log_stats(self) -> dict[str, float]:
        return {}

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> Any:
        """The (EMA) weights as what load_model would return for them."""
        return self.pipeline(ema_net, self.cfg, info, source, self.device)

    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> SampleGrid | None:
        """The grid from the EMA weights, with the run's fixed seeds; None when the model makes no images."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the checkpoint holds task state {sorted(state)} that task {self.name!r} does not use; "
                             "resume with the config the run was started with")

    def info(self) -> dict[str, Any]:
        """Facts stored next to the config in every weight file (data shapes, classes, ...)."""
        return {"num_classes": 0, "class_names": self.facts["class_names"], "image_shape": list(self.image_shape),
                "data_shapes": self.facts["data_shapes"]}


def grid_rows(n: int, num_classes: int) -> int:
    """Images per row of a sample grid: one column per class when classes cycle, else a square."""
    return num_classes if num_classes and num_classes <= 20 else int(math.ceil(math.sqrt(n)))
