"""Diffusion tasks: a network trained on the flows of a run, Gaussian or discrete.

Each micro-batch serves every configured flow: the flow's codec encodes its data (images, captions, ...),
its context encoder encodes its condition and gives the null condition for dropout, and the per-sample
losses are summed with the flows' weights (VD trains its four flows so, one network). A class-conditional
pixel model is the one-flow case. Text-to-image on a single-stream network (U-ViT's context tokens, the VQ
transformer's cross-attention) is the one-flow case with a text context.
Cached contexts (versadiff.data.context_cache, data.name=context_cache): when a batch carries
"context.<modality>", that tensor is the flow's context and the cache's empty-string feature its null context,
instead of running the frozen encoder; the losses are the same, bit for bit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset

from versadiff.config import ConfigError, DiffusionConfig, RunConfig
from versadiff.flows import BoundFlow, bind_flows
from versadiff.pipelines import Pipeline
from versadiff.tasks.base import TASKS, SampleGrid, Task, grid_rows

__all__ = ["DiffusionTask", "GaussianTask", "VQDiffusionTask"]


def _data_shapes(info: dict[str, Any], flows: list[BoundFlow]) -> dict[str, tuple[int, ...]]:
    shapes = {k: tuple(v) for k, v in (info.get("data_shapes") or {}).items()}
    if "image_shape" in info:
        shapes.setdefault("image", tuple(info["image_shape"]))
    for f in flows:
        shapes.setdefault(f.flow.data, ())
    return shapes


class DiffusionTask(Task):
    """Shared by the diffusion tasks: flows, conditions, the losses loop and the pipeline."""

    #: the image codec type of a legacy `autoencoder` section
    default_codec: ClassVar[str] = "latent"

    @classmethod
    def build_network(cls, cfg: RunConfig) -> nn.Module:
        from versadiff.nets import build_net

        return build_net(cfg.model)

    @classmethod
    def sampling(cls, cfg: RunConfig, flows: list[BoundFlow]) -> Any:
        raise NotImplementedError

    @classmethod
    def needs_text(cls, cfg: RunConfig) -> bool:
        return any("text" in (f.data, f.context) for f, _ in _entries(cfg))

    @classmethod
    def pipeline(cls, net: nn.Module, cfg: RunConfig, info: dict[str, Any], source: str = "",
                 device: str | torch.device = "cpu", flows: list[BoundFlow] | None = None) -> Pipeline:
        flows = bind_flows(cfg, info, device, cls.default_codec) if flows is None else flows
        return Pipeline(net.eval(), cls.sampling(cfg, flows), {f.name: f for f in flows}, cfg,
                        _data_shapes(info, flows), dict(info), source)

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        self.net = self.build_network(cfg)  # first: its initial weights come from the caller's seeded global RNG
        self._check_net()
        self.flows = bind_flows(cfg, self.model_facts(), device, self.default_codec)
        self._check_contexts()
        #: cached context modality -> its ContextCache (the batches carry "context.<modality>")
        self.cached_contexts = self._bind_cached_contexts(dataset)
        self._flow_sums: dict[str, float] = {}
        self._seen_contexts: dict[str, list] = {}  # streamed data: the first batch's contexts, for sample grids
        self._flow_n = 0

    @classmethod
    def check_local_files(cls, cfg: RunConfig, autoencoder_hint: str) -> None:
        """One line naming every local file a preset leaves to set (autoencoder, encoder weights, data), when
        more than one is missing or an encoder is; a lone missing autoencoder gives `autoencoder_hint`, lone
        data settings their reader's own message."""
        from versadiff.data.registry import DATASETS, dataset_keys

        need: list[str] = []
        if cfg.autoencoder is not None and not cfg.autoencoder.get("path"):
            need.append("autoencoder.path=... (a trained autoencoder run or folder)")
        enc = []
        for modality, spec in sorted(cfg.codecs.items()):
            if isinstance(spec, dict) and "path" in spec and not spec["path"]:
                enc.append(f"codecs.{modality}.path=... (a trained {spec.get('type', 'codec')} run or folder)")
        for modality, spec in sorted(cfg.encoders.items()):
            if isinstance(spec, dict) and "path" in spec and not spec["path"]:
                kind = str(spec.get("type", "encoder"))
                what = "a local transformers CLIP folder" if kind.startswith("clip") else f"a local {kind} folder"
                enc.append(f"encoders.{modality}.path=... ({what})")
        need += enc

        def data_keys(section: dict[str, Any], prefix: str) -> None:
            name = section.get("name")
            if name not in DATASETS:
                return
            if name == "context_cache":
                e = section.get("encoder")
                if isinstance(e, dict) and "path" in e and not e["path"]:
                    same = f"encoders.{section.get('modality', 'text')}.path"
                    need.append(f"{prefix}encoder.path=... (the same folder as {same})")
                if isinstance(section.get("dataset"), dict):
                    data_keys(section["dataset"], prefix + "dataset.")
                return
            for key in dataset_keys(name)[0]:
                if section.get(key, "") is None:
                    need.append(f"{prefix}{key}=...")

        data_keys(cfg.data, "data.")
        if len(need) > 1 or enc:
            raise ValueError("this preset reads local files: set " + ", ".join(need))
        if cfg.autoencoder is not None and not cfg.autoencoder.get("path"):
            raise ValueError(autoencoder_hint)

    # -- facts ---------------------------------------------------------------------------------------

    def model_facts(self) -> dict[str, Any]:
        """Facts of the trained model: the data's classes count only when the network takes class labels."""
        net_classes = int(getattr(self.net.config, "num_classes", 0) or 0)
        return {**self.facts, "num_classes": self.facts["num_classes"] if net_classes else 0}

    def _check_net(self) -> None:
        c = self.net.config
        if getattr(c, "num_tags", 0):
            raise ValueError("multi-hot tag conditioning needs a dataset with tags, which no reader provides yet; "
                             "set model.num_tags=0")
        net_classes = int(getattr(c, "num_classes", 0) or 0)
        if net_classes and net_classes != self.facts["num_classes"]:
            raise ValueError(f"model.num_classes is {net_classes} but the dataset has {self.facts['num_classes']} "
                             f"classes; set model.num_classes={self.facts['num_classes']}")
        context_flows = [f for f, _ in _entries(self.cfg) if f.context not in (None, "class")]
        if getattr(c, "context_dim", None) and not context_flows:
            raise ValueError("model.context_dim is set but no flow gives the network a text or image context: set "
                             "flows=[text-to-image] and encoders.text=... (a context encoder), or model.context_dim=null")

    def _check_contexts(self) -> None:
        """The network's context tokens fit its flows' encoders ([L, D] of context_shape())."""
        c = self.net.config
        dim = getattr(c, "context_dim", None)
        length_key = next((k for k in ("num_context_tokens", "context_len") if hasattr(c, k)), None)
        if not dim or length_key is None:
            return  # no context tokens, or a multi-stream network that checks its own streams
        for flow in self.flows:
            shape = getattr(flow.encoder, "context_shape", None) if flow.encoder is not None else None
            if flow.flow.context in (None, "class") or shape is None:
                continue
            length, width = (int(v) for v in shape())
            have = (int(getattr(c, length_key)), int(dim))
            if (length, width) != have:
                raise ValueError(f"flow {flow.name!r}: the {flow.flow.context} encoder gives contexts of {length} x "
                                 f"{width} but the network takes {have[0]} x {have[1]}; set model.context_dim={width} "
                                 f"model.{length_key}={length}")

    def _bind_cached_contexts(self, dataset: Dataset) -> dict[str, Any]:
        """The dataset's cached contexts (versadiff.data.context_cache), checked against the flows' encoders."""
        from versadiff.data.context_cache import same_encoder

        cached = dict(getattr(dataset, "cached_contexts", None) or {})
        for modality, cache in cached.items():
            users = [f for f in self.flows if f.flow.context == modality]
            if not users:
                raise ValueError(f"the data carries cached {modality} contexts but no flow takes a {modality} context; "
                                 f"use the dataset itself (data.dataset) or add a flow")
            spec = self.cfg.encoders.get(modality)
            if spec is None or not same_encoder(spec, cache.encoder_spec):
                raise ValueError(f"the cached {modality} contexts were encoded by another encoder than "
                                 f"encoders.{modality}: set data.encoder to the same spec as encoders.{modality}")
            shape = getattr(users[0].encoder, "context_shape", None)
            if shape is not None and tuple(shape()) != cache.shape:
                raise ValueError(f"the cached {modality} contexts are {list(cache.shape)}, the encoder gives "
                                 f"{list(shape())}; rebuild the cache")
        return cached

    def _cached_into(self, batch: dict[str, Any], size: int, cache: dict[Any, Tensor]) -> None:
        """Put the batch's cached contexts (and the cached null) where BoundFlow.contexts finds them."""
        from versadiff.data.context_cache import context_key

        for modality, ctx_cache in self.cached_contexts.items():
            key = context_key(modality)
            if key not in batch:
                continue
            cache[("context", modality)] = batch[key].to(self.device, torch.float32)
            for flow in self.flows:  # the empty-string null; other null modes (zeros, ...) stay the encoder's
                if flow.flow.context == modality and flow.flow.null in (None, "empty"):
                    cache.setdefault(("null", modality, flow.flow.null), ctx_cache.null(size).to(self.device))

    def info(self) -> dict[str, Any]:
        facts = self.model_facts()
        return {**super().info(), "num_classes": facts["num_classes"], "flows": [f.name for f in self.flows]}

    # -- training --------------------------------------------------------------------------------------

    def flow_losses(self, model: nn.Module, flow: BoundFlow, x: Tensor, cond: dict[str, Any],
                    null: dict[str, Any], generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def flow_data(self, flow: BoundFlow, batch: dict[str, Any]) -> Tensor:
        """The flow's data from the batch, through its codec."""
        data = batch[flow.data_key]
        if torch.is_tensor(data):
            data = data.to(self.device, torch.float32)
        return flow.codec.encode(data)

    def losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        if isinstance(self.dataset, IterableDataset):  # a streamed dataset has no items to draw grid prompts from
            for flow in self.flows:
                key = flow.context_key
                if key is not None and key not in self._seen_contexts and key in batch:
                    self._seen_contexts[key] = list(batch[key])[: self.cfg.sample.n]
        total = None
        data: dict[str, Tensor] = {}  # each modality is encoded once per batch, whichever flows share it
        cache: dict[Any, Tensor] = {}
        for flow in self.flows:
            if flow.flow.data not in data:
                data[flow.flow.data] = self.flow_data(flow, batch)
            x = data[flow.flow.data]
            if self.cached_contexts and not cache:
                self._cached_into(batch, x.shape[0], cache)
            inputs = None if flow.context_key is None else batch[flow.context_key]
            ctx, null = flow.contexts(inputs, x.shape[0], self.device, cache)
            cond, null_cond = flow.condition(self.net, ctx), flow.condition(self.net, null)
            losses = self.flow_losses(model, flow, x, cond, null_cond, generator)
            if len(self.flows) > 1:
                self._flow_sums[flow.name] = self._flow_sums.get(flow.name, 0.0) + float(losses.detach().float().sum())
                losses = flow.weight * losses
            total = losses if total is None else total + losses
        self._flow_n += int(total.shape[0])
        return total

    def log_stats(self) -> dict[str, float]:
        stats = {f"loss_{k}": v / max(self._flow_n, 1) for k, v in self._flow_sums.items()}
        self._flow_sums, self._flow_n = {}, 0
        return stats

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> Any:
        return self.pipeline(ema_net, self.cfg, info, source, self.device, flows=self.flows)

    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> SampleGrid | None:
        s = self.cfg.sample
        flow = next((f for f in self.flows if f.flow.data == "image"), None)
        if flow is None:
            return None
        model = self.loaded(ema_net, info, source)
        k = int(info.get("num_classes", 0)) if flow.flow.context == "class" else 0
        context = None
        if k:
            context = [i % k for i in range(s.n)]
        elif flow.context_key is not None:  # the contexts of the first dataset items (streamed: of the first batch)
            if isinstance(self.dataset, IterableDataset):
                seen = self._seen_contexts.get(flow.context_key) or []
                context = [seen[i % len(seen)] for i in range(s.n)] if seen else None
            else:
                context = [self.dataset[i % len(self.dataset)][flow.context_key] for i in range(s.n)]
        images = model.generate(range(s.seed, s.seed + s.n), flow=flow.name, context=context, batch_size=s.n,
                                device=self.device)
        prompts = [c for c in context] if not k and context and all(isinstance(c, str) for c in context) else None
        return SampleGrid(images, grid_rows(s.n, k), prompts)


def _entries(cfg: RunConfig) -> list:
    from versadiff.flows import flow_entries

    return flow_entries(cfg.flows) if cfg.flows else []


@TASKS.register(name="gaussian")
class GaussianTask(DiffusionTask):
    """Gaussian diffusion (versadiff.processes.gaussian) on pixels, or on the latents of a trained autoencoder."""

    name = "gaussian"

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        cls.check_local_files(cfg, "this preset trains on a trained autoencoder: set autoencoder.path=... (a local "
                                   "autoencoder run folder; train one first: versadiff train shapes_klae)")

    @classmethod
    def sampling(cls, cfg: RunConfig, flows: list[BoundFlow]) -> Any:
        from versadiff.sampling import GaussianSampling

        return GaussianSampling(cfg)

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        from versadiff.processes.gaussian import GaussianProcess
        from versadiff.processes.schedules import build_schedule

        d = cfg.diffusion
        self.process = GaussianProcess(build_schedule(d.schedule), prediction=d.prediction, loss=d.loss,
                                       weighting=d.weighting, train_steps=d.train_steps, variance=d.variance,
                                       intp_frac=d.intp_frac, p_uncond=d.p_uncond)
        for flow in self.flows:
            if flow.flow.data == "image" and flow.codec.module is not None:
                self._check_latent_net(tuple(flow.codec.latent_shape(self.image_shape)))

    def _check_latent_net(self, shape: tuple[int, ...]) -> None:
        c = self.net.config
        have = (getattr(c, "in_channels", None), getattr(c, "image_size", None))
        if None in have:
            return  # multi-stream networks check their own streams
        if have != (shape[0], shape[1]):
            raise ValueError(f"the autoencoder gives latents {shape[0]}x{shape[1]}x{shape[2]} but the network takes "
                             f"{have[0]} channels at {have[1]}px; set model.in_channels={shape[0]} "
                             f"model.image_size={shape[1]}")

    def flow_losses(self, model: nn.Module, flow: BoundFlow, x: Tensor, cond: dict[str, Any],
                    null: dict[str, Any], generator: torch.Generator) -> Tensor:
        return self.process.training_losses(model, x, cond, generator=generator, null=null)


@TASKS.register(name="vq_diffusion")
class VQDiffusionTask(DiffusionTask):
    """VQ-Diffusion: the mask-and-replace process over the code tokens of a trained (frozen) VQ autoencoder.

    The process draws t, the Gumbel uniforms and the condition dropout from the task's own CPU generator; it and
    the importance-sampling statistics are task state, so a resumed run continues exactly.
    """

    name = "vq_diffusion"
    default_codec = "vq_tokens"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.ae_loss:
            raise ConfigError(f"config key 'ae_loss' applies to task autoencoder, this run has task {cls.name!r}")
        if cfg.diffusion != DiffusionConfig():
            raise ConfigError("config section 'diffusion' applies to task gaussian; task 'vq_diffusion' does not read "
                              "it (VQ-Diffusion's process is under 'discrete'): remove it")
        if cfg.autoencoder is None and "image" not in cfg.codecs:
            raise ConfigError("task vq_diffusion needs an 'autoencoder' section: set autoencoder.path=... "
                              "(a VQ autoencoder run)")

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        cls.check_local_files(cfg, "VQ-Diffusion trains on the tokens of a VQ autoencoder: set autoencoder.path=... "
                                   "(train one first: versadiff train shapes_vqae)")

    @classmethod
    def sampling(cls, cfg: RunConfig, flows: list[BoundFlow]) -> Any:
        from versadiff.sampling import DiscreteSampling

        return DiscreteSampling(cfg, flows[0].codec.num_codes)

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        codec = self.flows[0].codec
        grid = codec.latent_shape(self.image_shape)
        self.process = self.sampling(cfg, self.flows).process
        c = self.net.config
        want = {"num_embed": codec.num_codes, "height": grid[0], "width": grid[1], "num_steps": self.process.num_steps}
        for key, value in want.items():
            if getattr(c, key, None) != value:
                raise ValueError(f"model.{key} is {getattr(c, key, None)} but the autoencoder / process need {value}; "
                                 f"set model.{key}={value}")
        self.generator = torch.Generator().manual_seed(seed)

    def flow_data(self, flow: BoundFlow, batch: dict[str, Any]) -> Tensor:
        return super().flow_data(flow, batch).flatten(1)

    def flow_losses(self, model: nn.Module, flow: BoundFlow, x: Tensor, cond: dict[str, Any],
                    null: dict[str, Any], generator: torch.Generator) -> Tensor:
        return self.process.training_losses(model, x, cond, generator=self.generator, null=null)

    def state_dict(self) -> dict[str, Any]:
        return {"process": self.process.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"process", "generator"}:
            raise ValueError("the checkpoint holds no VQ-Diffusion task state; resume with the config the run was "
                             "started with")
        self.process.load_state_dict(state["process"])
        self.generator.set_state(state["generator"])

    def info(self) -> dict[str, Any]:
        return {**super().info(), "token_grid": [self.net.config.height, self.net.config.width]}
