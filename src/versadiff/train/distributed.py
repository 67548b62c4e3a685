"""Several processes: FSDP2 through accelerate's plugin, sharded tensors, sharded checkpoints and their consolidation.

Data parallel (DDP) is what accelerate does with several processes by default: every process holds the whole
network, its gradients, the AdamW state and the EMA, and gradients are averaged across processes. `train.fsdp`
shards all of them instead (FSDP2, `torch.distributed.fsdp.fully_shard`, applied by accelerate's
`FullyShardedDataParallelPlugin(fsdp_version=2)`): every parameter is split in dim-0 chunks across the processes,
gathered block by block for the forward and backward passes and resharded after them (`strategy: full_shard`,
ZeRO-3) or kept gathered between forward and backward (`shard_grad_op`, ZeRO-2; FSDP2's
reshard_after_forward=False). The units are the network's blocks: `wrap: auto` takes the classes of the modules
its ModuleLists hold (VD: ResBlock, FCResBlock, SpatialTransformer, TokenLinear, ...), which FSDP2 can shard
(a ModuleList itself cannot: it has no forward).

accelerate 1.15 turns FSDP on only for GPU-family process groups (its state.py enables the plugin under
MULTI_GPU/NPU/XPU/...); with CPU processes (gloo) it ignores the plugin silently. `enable_fsdp` then sets the
shared AcceleratorState to FSDP itself, so that CPU runs (CI) go through accelerate's own FSDP2 preparation
(`Accelerator._prepare_fsdp2`, `fsdp2_prepare_model`) exactly as GPU runs do.

EMA under FSDP: the EMA shadow is sharded like the parameters (each process averages its own fp32 chunks, no
communication, 1/N of the memory); it is element-wise, so it equals the unsharded EMA exactly. A full EMA on rank 0
would cost 4 bytes per parameter on one GPU (10.3 GB for VD's 2.57B) and an all-gather of every parameter per step.
The EMA is gathered (tensor by tensor, onto rank 0's CPU) only to write ema.safetensors, sample grids and exports.

Checkpoint layout under FSDP (checkpoints/step-N/, written by all processes into one temporary folder):
  model-RRRRR-of-WWWWW.safetensors  rank R's chunks of the training weights and the (replicated) buffers; the
                                    metadata has the config, the info and each sharded tensor's global shape/offset
  optimizer-RRRRR-of-WWWWW.pt       rank R's AdamW state (its chunks)
  ema.safetensors                   the EMA, consolidated: the inference file (load_model, versadiff export)
  scheduler.pt rng.pt state.json manifest.json   as with one process; state.json records "sharded": "fsdp2"
Each process hashes its own files; rank 0 writes the manifest with every hash and renames the folder into place.
`consolidate(checkpoint, out, which="model")` joins the training-weight shards into one safetensors file offline
(`python -m versadiff.train.distributed CHECKPOINT OUT.safetensors [--model]`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from versadiff.config import ConfigError
from versadiff.train.checkpoint import is_shard_name, shard_name  # noqa: F401  (re-exported)

__all__ = ["init_processes", "FSDP_STRATEGIES", "fsdp_options", "fsdp_plugin", "set_wrap", "enable_fsdp",
           "launcher_wants_fsdp", "block_classes", "is_dtensor", "local", "gather_full", "any_rank", "shard_name",
           "is_shard_name", "shard_meta", "load_local_", "load_rows_", "optimizer_state_local",
           "optimizer_state_from_local", "consolidate", "SHARDED", "SHARD_META_KEY"]

FSDP_STRATEGIES = ("full_shard", "shard_grad_op")
_FSDP_KEYS = {"strategy", "wrap", "cpu_offload"}
#: state.json "sharded" of a checkpoint written under FSDP
SHARDED = "fsdp2"
#: metadata key of a model shard file: {tensor name: [global shape, dim-0 offset]} for the sharded tensors
SHARD_META_KEY = "versadiff_shards"


# -- processes ---------------------------------------------------------------------------------------------


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def init_processes() -> None:
    """Start accelerate's process state (once per process). Launched as several processes (torchrun and
    accelerate launch set WORLD_SIZE) on a machine without GPUs, accelerate 1.15 would start every process on
    its own (its multi-process CPU mode needs cpu=True or ACCELERATE_USE_CPU): each would train alone as rank
    0 of 1. Here such processes join one gloo process group instead."""
    from accelerate import PartialState

    if PartialState._shared_state:
        return
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    PartialState(cpu=world > 1 and not _has_accelerator())


# -- config ----------------------------------------------------------------------------------------------


def fsdp_options(spec: Any) -> dict[str, Any] | None:
    """The checked `train.fsdp` section with defaults, or None when it is empty (plain DDP)."""
    if spec in (None, {}):
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"train.fsdp must be a mapping ({{strategy: full_shard}}) or {{}} for DDP, got {spec!r}")
    unknown = sorted(set(spec) - _FSDP_KEYS)
    if unknown:
        raise ConfigError(f"train.fsdp: unknown key {unknown[0]!r}; the keys are {sorted(_FSDP_KEYS)}")
    opts = {"strategy": spec.get("strategy", "full_shard"), "wrap": spec.get("wrap", "auto"),
            "cpu_offload": spec.get("cpu_offload", False)}
    if opts["strategy"] not in FSDP_STRATEGIES:
        raise ConfigError(f"train.fsdp.strategy must be one of {list(FSDP_STRATEGIES)} (full_shard = ZeRO-3, "
                          f"shard_grad_op = ZeRO-2), got {opts['strategy']!r}")
    wrap = opts["wrap"]
    if wrap != "auto" and not (isinstance(wrap, list) and wrap and all(isinstance(w, str) and w for w in wrap)):
        raise ConfigError(f"train.fsdp.wrap must be 'auto' or a list of module class names, got {wrap!r}")
    if not isinstance(opts["cpu_offload"], bool):
        raise ConfigError(f"train.fsdp.cpu_offload must be true or false, got {opts['cpu_offload']!r}")
    return opts


def launcher_wants_fsdp() -> bool:
    """Whether `accelerate launch` was given an FSDP config (it sets ACCELERATE_USE_FSDP for the processes)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def block_classes(net: nn.Module) -> list[str]:
    """The class names of the modules held in `net`'s ModuleLists / ModuleDicts (nested containers looked
    through): the repeated blocks, FSDP's units for `wrap: auto`. Empty when the network has no containers."""
    names: set[str] = set()

    def visit(container: nn.Module) -> None:
        for child in container.children():
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                visit(child)
            elif any(True for _ in child.parameters()):
                names.add(type(child).__name__)

    for m in net.modules():
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            visit(m)
    return sorted(names)


def fsdp_plugin(opts: dict[str, Any], precision: str):
    """accelerate's FSDP2 plugin for `opts` (fsdp_options), made before the Accelerator (which takes it); its
    units are set with `set_wrap` once the network exists. Mixed precision: parameters are gathered in bf16/fp16
    for compute, gradients reduced in fp32, the sharded master weights and the optimizer stay fp32."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    mp = None
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    kwargs: dict[str, Any] = dict(
        fsdp_version=2, reshard_after_forward=opts["strategy"] == "full_shard",
        auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=[],
        state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False,
        activation_checkpointing=False,  # the nets checkpoint their own blocks (train.gradient_checkpointing)
        mixed_precision_policy=mp)
    if opts["cpu_offload"]:
        kwargs["cpu_offload"] = CPUOffloadPolicy()
    return FullyShardedDataParallelPlugin(**kwargs)


def set_wrap(plugin: Any, opts: dict[str, Any], net: nn.Module) -> list[str]:
    """Set the plugin's FSDP units for `net` (`wrap: auto`: its block classes); returns the class names."""
    classes = block_classes(net) if opts["wrap"] == "auto" else list(opts["wrap"])
    present = {type(m).__name__ for m in net.modules()}
    missing = [c for c in classes if c not in present]
    if missing:
        raise ConfigError(f"train.fsdp.wrap names {missing[0]!r}, which the network has no module of; "
                          f"its block classes are {block_classes(net)}")
    plugin.transformer_cls_names_to_wrap = classes
    return classes


def enable_fsdp(accelerator: Any, plugin: Any) -> None:
    """Make `accelerator` prepare models with `plugin`. On GPUs accelerate already did (the plugin was passed
    to Accelerator); with CPU processes it ignored it: switch its shared state to FSDP (see the module doc)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.FSDP:
        if state.distributed_type != DistributedType.MULTI_CPU:
            raise ValueError(f"train.fsdp needs several GPU or CPU processes; accelerate set up "
                             f"{state.distributed_type} (launch with accelerate launch / torchrun)")
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    if not accelerator.is_fsdp2:
        raise ValueError("train.fsdp: accelerate did not select FSDP2; check the launcher's FSDP settings")


# -- sharded tensors ---------------------------------------------------------------------------------------


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This process's part of `t` (a view of a DTensor's local chunk; `t` itself otherwise)."""
    return t.to_local() if is_dtensor(t) else t


def _row_offset(t: Tensor) -> int:
    """The first global row of this process's chunk of a dim-0-sharded DTensor (torch.chunk's split)."""
    from torch.distributed.tensor import Shard

    if len(t.placements) != 1 or not isinstance(t.placements[0], Shard) or t.placements[0].dim != 0:
        raise ValueError(f"only dim-0 sharding on a 1-D mesh is supported (FSDP2 full_shard), got {t.placements}")
    n, world = t.shape[0], t.device_mesh.size()
    chunk = math.ceil(n / world) if n else 0
    offset = min(n, t.device_mesh.get_local_rank() * chunk)
    if t.to_local().shape[0] != max(0, min(chunk, n - offset)):
        raise ValueError(f"unexpected chunk of a {tuple(t.shape)} tensor: {tuple(t.to_local().shape)} rows at {offset}")
    return offset


def shard_meta(tensors: dict[str, Tensor]) -> dict[str, list]:
    """{name: [global shape, dim-0 offset]} for the sharded tensors of a state dict."""
    return {k: [list(v.shape), _row_offset(v)] for k, v in tensors.items() if is_dtensor(v)}


@torch.no_grad()
def gather_full(tensors: dict[str, Tensor], main: bool) -> dict[str, Tensor] | None:
    """The full tensors on the main process's CPU (None on the others). Collective: every process calls it.
    Sharded tensors are gathered one at a time, so the extra device memory is one tensor."""
    out: dict[str, Tensor] | None = {} if main else None
    for k, v in tensors.items():
        full = v.full_tensor() if is_dtensor(v) else v
        if out is not None:
            out[k] = full.detach().cpu().clone() if full.device.type == "cpu" else full.detach().cpu()
        del full
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on any process (collective)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def load_local_(targets: dict[str, Tensor], tensors: dict[str, Tensor], what: str) -> None:
    """Copy a shard file's tensors into `targets` (a sharded state dict): DTensors get their local chunk."""
    if set(targets) != set(tensors):
        diff = sorted(set(targets) ^ set(tensors))
        raise ValueError(f"{what}: keys differ from the network's ({diff[:3]} ...)")
    for k, t in targets.items():
        dst = local(t)
        src = tensors[k]
        if dst.shape != src.shape:
            raise ValueError(f"{what}: {k} has shape {tuple(src.shape)}, this process's part is {tuple(dst.shape)}")
        dst.copy_(src.to(dst.device, dst.dtype))


@torch.no_grad()
def load_rows_(targets: dict[str, Tensor], path: str | Path) -> None:
    """Fill `targets` (sharded or not) from a consolidated safetensors file, each process reading only its rows."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(targets):
            diff = sorted(keys ^ set(targets))
            raise ValueError(f"{path}: keys differ from the network's ({diff[:3]} ...)")
        for k, t in targets.items():
            if is_dtensor(t):
                dst = t.to_local()
                start = _row_offset(t)
                part = f.get_slice(k)[start : start + dst.shape[0]] if dst.shape[0] else None
                if part is not None:
                    dst.copy_(part.to(dst.device, dst.dtype))
            else:
                t.copy_(f.get_tensor(k).to(t.device, t.dtype))


def _flat_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def optimizer_state_local(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with every DTensor replaced by this process's chunk (plain, savable tensors)."""
    sd = optimizer.state_dict()
    state = {i: {k: (v.to_local().detach().cpu() if is_dtensor(v) else v) for k, v in s.items()}
             for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]}


def optimizer_state_from_local(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
    """The inverse of optimizer_state_local for this optimizer's (sharded) parameters: chunks become DTensors
    laid out like their parameter, ready for optimizer.load_state_dict."""
    from torch.distributed.tensor import DTensor

    params = _flat_params(optimizer)
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        out = {}
        for k, v in s.items():
            if is_dtensor(p) and torch.is_tensor(v) and v.dim() > 0 and v.shape == p.to_local().shape:
                v = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements, run_check=False,
                                       shape=p.shape, stride=p.stride())
            out[k] = v
        state[i] = out
    return {"state": state, "param_groups": sd["param_groups"]}


# -- shard files ------------------------------------------------------------------------------------------


def consolidate(checkpoint: str | Path, out: str | Path, which: str = "ema") -> Path:
    """One safetensors file from a checkpoint: `ema` (the inference weights; already consolidated in a sharded
    checkpoint) or `model` (the training weights, joined from the model-*-of-* shards). Runs in one process."""
    from versadiff.train import checkpoint as ck

    checkpoint, out = Path(checkpoint), Path(out)
    if which not in ("ema", "model"):
        raise ValueError(f"which must be 'ema' or 'model', got {which!r}")
    ck.verify_checkpoint(checkpoint)
    if which == "ema" or (checkpoint / "model.safetensors").is_file():
        src = checkpoint / f"{which}.safetensors"
        tensors, meta = ck.load_tensors(src), _raw_meta(src)
    else:
        state = ck.read_json(checkpoint / "state.json")
        world = int(state.get("world_size", 1))
        files = [checkpoint / shard_name("model", r, world) for r in range(world)]
        metas = [_raw_meta(f) for f in files]
        layouts = [json.loads(m.get(SHARD_META_KEY, "{}")) for m in metas]
        parts = [ck.load_tensors(f) for f in files]
        tensors = {}
        for k, v0 in parts[0].items():
            if k not in layouts[0]:
                tensors[k] = v0
                continue
            shape = layouts[0][k][0]
            pieces = sorted(((lay[k][1], p[k]) for lay, p in zip(layouts, parts)), key=lambda x: x[0])
            full = torch.cat([p for _, p in pieces], dim=0)
            if list(full.shape) != shape:
                raise ValueError(f"{checkpoint}: the shards of {k} join to {list(full.shape)}, expected {shape}")
            tensors[k] = full
        meta = {k: v for k, v in metas[0].items() if k != SHARD_META_KEY}
    ck.save_tensors(out, tensors, meta)
    return out


def _raw_meta(path: Path) -> dict[str, str]:
    from versadiff.weights import DIGEST_KEY, read_raw_metadata

    return {k: v for k, v in read_raw_metadata(path).items() if k != DIGEST_KEY}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m versadiff.train.distributed",
                                description="Consolidate a (sharded) checkpoint into one safetensors file.")
    p.add_argument("checkpoint", help="a checkpoints/step-N folder")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument("--model", action="store_true", help="the training weights instead of the EMA")
    a = p.parse_args(argv)
    path = consolidate(a.checkpoint, a.out, "model" if a.model else "ema")
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
