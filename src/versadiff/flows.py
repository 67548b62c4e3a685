"""Flows: which data a model generates from which context, and the pieces that serve each side.

A modality is a kind of data with a home in a dataset item (image -> item["image"], text -> item["caption"],
class -> item["label"]). A flow is a (data modality, context modality) pair: text-to-image = (image, text),
image-to-text = (text, image), class-to-image = (image, class), unconditional = (image, None). Bound to a
run, a flow gets the codec of its data modality, the context encoder of its context modality, and the
network keywords that select its streams. VD's four tasks are four flows of one network; a class-conditional
pixel model is a one-flow model. New modalities and flows register here from any module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from versadiff.autoencoders.base import Codec
from versadiff.component import Registry
from versadiff.encoders.base import ContextEncoder

__all__ = ["Modality", "Flow", "BoundFlow", "MODALITIES", "FLOWS", "flow_entries", "network_condition"]


@dataclass(frozen=True)
class Modality:
    """A kind of data and the dataset-item key that holds it."""

    name: str
    batch_key: str


@dataclass(frozen=True)
class Flow:
    """Generate `data` from `context` (None: unconditional). `null` picks the encoder's null-context style
    (VD: zeros for image variation, a black image for image-to-text); None is the encoder's default."""

    name: str
    data: str
    context: str | None = None
    null: str | None = None


MODALITIES: Registry[Modality] = Registry("modality")
FLOWS: Registry[Flow] = Registry("flow")

for _m in (Modality("image", "image"), Modality("text", "caption"), Modality("class", "label")):
    MODALITIES.register(_m, name=_m.name)
for _f in (
    Flow("unconditional", "image"),
    Flow("class-to-image", "image", "class"),
    Flow("text-to-image", "image", "text"),
    Flow("image-variation", "image", "image", null="zeros"),
    Flow("image-to-text", "text", "image", null="black"),
    Flow("text-variation", "text", "text"),
):
    FLOWS.register(_f, name=_f.name)


def flow_entries(section: Sequence[Any]) -> list[tuple[Flow, float]]:
    """(flow, weight) pairs of a run config's `flows` list: names, or {name, weight, null} mappings."""
    out = []
    for entry in section:
        if isinstance(entry, str):
            entry = {"name": entry}
        if isinstance(entry, dict) and None in entry:  # YAML reads a bare `null:` key as None
            entry = {("null" if k is None else k): v for k, v in entry.items()}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"a flows entry is a flow name or {{name, weight}}, got {entry!r}; flows: {', '.join(FLOWS)}")
        unknown = sorted(set(entry) - {"name", "weight", "null"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in flows entry {entry['name']!r}; valid keys: name, weight, null")
        flow = FLOWS.get(entry["name"])
        if "null" in entry:
            flow = Flow(flow.name, flow.data, flow.context, entry["null"])
        weight = float(entry.get("weight", 1.0))
        if not weight > 0 or weight != weight or weight == float("inf"):
            raise ValueError(f"flow {flow.name!r}: weight must be a finite number > 0, got {entry.get('weight')!r}")
        out.append((flow, weight))
    names = [f.name for f, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"flows lists a flow twice: {names}")
    return out


def network_condition(net: nn.Module, flow: Flow, context: Tensor | None, cond_key: str) -> dict[str, Any]:
    """The keyword arguments that make `net` run `flow` with `context`.

    A network with several streams says how through `flow_condition(data, context_modality, context)`
    (e.g. {"data_stream": "image", "context_text": ...}); any other network takes the context under the
    encoder's keyword (class_labels, context).
    """
    hook = getattr(net, "flow_condition", None)
    if hook is not None:
        return hook(flow.data, flow.context, context)
    return {} if context is None else {cond_key: context}


@dataclass
class BoundFlow:
    """A flow with the codec of its data, the encoder of its context and its training weight."""

    flow: Flow
    codec: Codec
    encoder: ContextEncoder | None
    weight: float = 1.0

    @property
    def name(self) -> str:
        return self.flow.name

    @property
    def data_key(self) -> str:
        return MODALITIES.get(self.flow.data).batch_key

    @property
    def context_key(self) -> str | None:
        return None if self.flow.context is None else MODALITIES.get(self.flow.context).batch_key

    @torch.no_grad()
    def contexts(self, inputs: Sequence[Any] | Tensor | None, batch: int, device: torch.device,
                 cache: dict[Any, Tensor] | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(context, null context) of `batch` samples on `device`; inputs None: the null context for all.

        cache: shared by the flows of one batch, so each context modality is encoded once (and each null once).
        """
        if self.encoder is None:
            if inputs is not None:
                raise ValueError(f"flow {self.name!r} is unconditional: drop the context")
            return None, None
        cache = {} if cache is None else cache
        f = self.flow
        if ("null", f.context, f.null) not in cache:
            cache[("null", f.context, f.null)] = self.encoder.null(batch, f.null).to(device)
        null = cache[("null", f.context, f.null)]
        if inputs is None:
            return null, null
        if ("context", f.context) not in cache:
            cache[("context", f.context)] = self.encoder.encode(inputs).to(device)
        return cache[("context", f.context)], null

    def condition(self, net: nn.Module, context: Tensor | None) -> dict[str, Any]:
        return network_condition(net, self.flow, context, self.encoder.cond_key if self.encoder else "context")


def bind_flows(cfg: Any, facts: dict[str, Any], device: torch.device | str = "cpu",
               default_codec: str = "latent") -> list[BoundFlow]:
    """The flows of a run config, each with its codec and context encoder (built once per modality).

    cfg.flows lists them; empty means one flow: class-to-image when the model is class-conditional
    (facts["num_classes"] > 0), else unconditional. Codecs come from cfg.codecs[modality] (the image codec
    also from the legacy `autoencoder` section, of type `default_codec`), identity when absent; encoders from
    cfg.encoders[modality], class labels from the facts.
    """
    from versadiff.autoencoders.codecs import build_codec, codec_spec_from_autoencoder
    from versadiff.encoders.base import build_encoder
    from versadiff.encoders.class_labels import ClassLabelConfig, ClassLabelEncoder

    from versadiff.assets import resolve_path

    def local(spec: dict[str, Any] | None) -> dict[str, Any] | None:  # `asset:` paths name shipped files
        return spec if not spec or not spec.get("path") else {**spec, "path": str(resolve_path(spec["path"]))}

    entries = flow_entries(cfg.flows) if cfg.flows else [
        (FLOWS.get("class-to-image" if int(facts.get("num_classes", 0)) else "unconditional"), 1.0)]
    codecs: dict[str, Codec] = {}
    encoders: dict[str, ContextEncoder] = {}
    bound = []
    for flow, weight in entries:
        if flow.data not in codecs:
            spec = cfg.codecs.get(flow.data)
            if flow.data == "image" and cfg.autoencoder is not None:
                if spec is not None:
                    raise ValueError("give the image codec once: codecs.image or the autoencoder section, not both")
                spec = codec_spec_from_autoencoder(cfg.autoencoder, default_codec)
            codecs[flow.data] = build_codec(local(spec), device)
        ctx = flow.context
        if ctx is not None and ctx not in encoders:
            if ctx in cfg.encoders:
                spec = cfg.encoders[ctx]
                if isinstance(spec, dict) and "path" in spec and not spec["path"]:  # a preset's `path: null`: to set
                    raise ValueError(f"flow {flow.name!r} encodes its {ctx} context with local weights: set "
                                     f"encoders.{ctx}.path=... (a local {spec.get('type', 'encoder')} folder)")
                encoders[ctx] = build_encoder(local(spec)).to(device)
            elif ctx == "class":
                encoders[ctx] = ClassLabelEncoder(ClassLabelConfig(int(facts.get("num_classes", 0)),
                                                                   list(facts.get("class_names") or [])))
            else:
                raise ValueError(f"flow {flow.name!r} needs a {ctx} context encoder: set encoders.{ctx}=... "
                                 f"(types: {', '.join(_encoder_types())})")
        bound.append(BoundFlow(flow, codecs[flow.data], None if ctx is None else encoders[ctx], weight))
    return bound


def _encoder_types() -> list[str]:
    from versadiff.encoders.base import ENCODERS

    return ENCODERS.names()
