"""Training tasks, one per `task` of a run config (see versadiff.tasks.base for the interface)."""

from versadiff.config import ConfigError, RunConfig
from versadiff.tasks.autoencoder import AutoencoderTask
from versadiff.tasks.base import TASKS, Task, dataset_facts, task_class
from versadiff.tasks.diffusion import DiffusionTask, GaussianTask, VQDiffusionTask
from versadiff.tasks.encoders import ClipTask, TextVAETask

__all__ = ["TASKS", "Task", "DiffusionTask", "GaussianTask", "VQDiffusionTask", "AutoencoderTask", "ClipTask", "TextVAETask", "task_class",
           "dataset_facts", "build_task", "check_config"]


def check_config(cfg: RunConfig) -> RunConfig:
    """Check what the config's task reads (its own sections and its flows); returns the config.

    Called by every entry point (train, load_model, --dry-run) after versadiff.config's structural checks.
    """
    from versadiff.flows import flow_entries

    if cfg.task not in TASKS:
        raise ConfigError(f"config key 'task' must be one of {', '.join(TASKS.names())}, got {cfg.task!r}")
    try:
        flow_entries(cfg.flows)
        TASKS.get(cfg.task).check_config(cfg)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def build_task(cfg, dataset, device, seed) -> Task:
    """The Task of `cfg.task` (validated by versadiff.config), built for training."""
    return task_class(cfg.task)(cfg, dataset, device, seed)
