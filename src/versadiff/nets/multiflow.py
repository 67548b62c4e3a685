"""Versatile Diffusion's multi-flow diffuser: one network, several data streams and context streams.

VD v1.0 (SHI-Labs `openaimodel.py` UNetModel2D_Next / UNetModel0D_Next, `vd.py` VD_v2_0.apply_model) splits
an SD-1 UNet into three layer groups:
  global  = the time-embedding MLP, shared by every flow (`image.time_embed`);
  data    = ResBlocks, conv_in, resamplers and the head of one modality (`<modality>.data_blocks.N.0`),
            chosen by the modality being generated;
  context = the SpatialTransformers of one context modality (`<modality>.context_blocks.K.0`),
            chosen by the condition.
Every stream walks the same ordered list of slots ("data", "context", "push" = save a skip, "pop" = concatenate
the last skip), built from the config: VD's i_order/m_order/o_order. Because the order and the widths at each
slot agree, any data stream pairs with any context stream. A flow is (data_stream, context stream(s)); VD's
four: text->image (image, text), image variation (image, image), image->text (text, image), text variation
(text, text).

Streams: "image" generates [B, C, H, W] latents with conv layers; "text" generates a [B, D] vector (VD: the
768-d Optimus latent; [B, D, 1, 1] is accepted too) with FC layers on h [B, C, T, 1], T pseudo-tokens that the
context transformers attend over. Contexts are keyword tensors `context_<stream>` [B, L, context_dim].

With several contexts, `mixing="attention"` gives h + sum_i rho_i (T_i(h, c_i) - h) at every context slot
(VD v1 `context_mixing`; diffusers' DualTransformer2DModel with rho = (r, 1-r)); `mixing="layer"` picks one
context stream per slot, i ~ rho.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from versadiff.nets.layers import CheckpointMixin, NetConfig, timestep_embedding
from versadiff.nets.multiflow_blocks import (
    ConvHead,
    Downsample,
    FCResBlock,
    InputConv,
    ResBlock,
    SpatialTransformer,
    TokenLinear,
    Upsample,
    VectorHead,
)

__all__ = [
    "MultiFlowConfig",
    "MultiFlowDiffuser",
    "Slot",
    "StreamLayout",
    "MULTIFLOW_PRESETS",
    "VD_GROUP_MULTIPLIERS",
    "parameter_groups",
    "vd_four_flow",
    "vd_dc",
    "vd_basic",
    "vd_tiny",
    "vd_shapes",
]

# The data streams this module can build, by modality name: spatial conv latents or a flat vector.
DATA_STREAM_KINDS = {"image": "spatial", "text": "vector"}
# Layout fields one modality may override (in `stream_overrides`); everything else is shared.
LAYOUT_FIELDS = (
    "model_channels", "channel_mult", "num_res_blocks", "attention_levels", "num_heads", "head_channels",
    "transformer_depth",
)


# ---------------------------------------------------------------------------------------------- slot order


@dataclasses.dataclass(frozen=True)
class Slot:
    """One step of the layer walk.

    kind: "data" | "context" | "push" | "pop"; width: channels of h after the step (per pseudo-token for
    vector streams); op (data slots): "in" | "res" | "down" | "up" | "out"; cin (data slots): channels before it.
    """

    kind: str
    width: int
    op: str = ""
    cin: int = 0

    def __str__(self) -> str:
        return f"{self.kind}{'/' + self.op if self.op else ''}({self.width})"


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """The layout fields of one modality: the config's, with that modality's `stream_overrides` applied."""

    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    num_heads: int
    head_channels: int | None
    transformer_depth: int

    def heads(self, width: int) -> int:
        """Attention heads at a width (VD: a fixed num_heads, so d_head = width / heads)."""
        return width // self.head_channels if self.head_channels else self.num_heads

    def slots(self) -> tuple[Slot, ...]:
        """The slot order: VD's i_order + m_order + o_order, with the widths of h."""
        widths = [self.model_channels * m for m in self.channel_mult]
        last = len(widths) - 1
        cur = widths[0]
        out = [Slot("data", cur, "in"), Slot("push", cur)]
        skips = [cur]
        for level, w in enumerate(widths):  # input stage
            for _ in range(self.num_res_blocks):
                out.append(Slot("data", w, "res", cur))
                cur = w
                if self.attention_levels[level]:
                    out.append(Slot("context", w))
                out.append(Slot("push", w))
                skips.append(w)
            if level != last:
                out += [Slot("data", cur, "down", cur), Slot("push", cur)]
                skips.append(cur)
        # middle: ResBlock, context, ResBlock (the middle always has a context layer, also in VD)
        out += [Slot("data", cur, "res", cur), Slot("context", cur), Slot("data", cur, "res", cur)]
        for level in reversed(range(len(widths))):  # output stage: one more block per level, each eats a skip
            w = widths[level]
            for _ in range(self.num_res_blocks + 1):
                cat = cur + skips.pop()
                out += [Slot("pop", cat), Slot("data", w, "res", cat)]
                cur = w
                if self.attention_levels[level]:
                    out.append(Slot("context", w))
            if level != 0:
                out.append(Slot("data", cur, "up", cur))
        out.append(Slot("data", cur, "out", cur))
        return tuple(out)


def _check_same_order(slots: dict[str, tuple[Slot, ...]]) -> tuple[Slot, ...]:
    """VD `check_diffuser`: every modality's streams must walk the same slots with the same widths."""
    (ref_name, ref), *others = slots.items()
    for name, seq in others:
        for i in range(max(len(ref), len(seq))):
            a = ref[i] if i < len(ref) else None
            b = seq[i] if i < len(seq) else None
            if a != b:  # kind, op and widths
                raise ValueError(
                    f"multiflow streams disagree at slot {i}: {ref_name!r} has {a or 'no slot'} but {name!r} has "
                    f"{b or 'no slot'}; every data and context stream must share one slot order and widths"
                )
    return ref


# -------------------------------------------------------------------------------------------------- config


@dataclasses.dataclass
class MultiFlowConfig(NetConfig):
    """Hyper-parameters of `MultiFlowDiffuser` (JSON-friendly). Defaults: VD v1.0 four-flow, full size."""

    type_name = "multiflow"  # also `net_type` (NetConfig's property)

    data_streams: tuple[str, ...] = ("image", "text")  # modalities it generates; the first owns time_embed
    context_streams: tuple[str, ...] = ("image", "text")  # context modalities (one transformer stream each)
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # per level: context slots after its ResBlocks
    num_heads: int = 8
    head_channels: int | None = None  # when set, overrides num_heads (heads = width // head_channels)
    transformer_depth: int = 1
    context_dim: int = 768
    image_channels: int = 4  # image latent channels (in and out)
    image_size: int = 64  # image latent side used for sampling shapes; any side divisible by 2^(levels-1) runs
    text_dim: int = 768  # text latent width (VD: Optimus, 768)
    text_tokens: int = 4  # pseudo-tokens of the text stream's hidden state [B, C, T, 1] (VD second_dim)
    norm_groups: int = 32
    norm_eps: float = 1e-5  # ResBlocks and heads (LDM GroupNorm32 / diffusers default)
    transformer_norm_eps: float = 1e-6  # SpatialTransformer's GroupNorm (LDM `Normalize`)
    dropout: float = 0.0
    # per modality, replacements for LAYOUT_FIELDS, e.g. {"text": {"num_heads": 4}}; the slot orders must still agree
    stream_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_streams = tuple(self.data_streams)
        self.context_streams = tuple(self.context_streams)
        self.channel_mult = tuple(self.channel_mult)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.stream_overrides = {
            name: {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            for name, fields in dict(self.stream_overrides).items()
        }
        if not self.data_streams or not self.context_streams:
            raise ValueError("MultiFlowConfig: give at least one data stream and one context stream")
        for name in self.data_streams:
            if name not in DATA_STREAM_KINDS:
                raise ValueError(
                    f"MultiFlowConfig: unknown data stream {name!r}; data streams are {sorted(DATA_STREAM_KINDS)}"
                )
        for streams, label in ((self.data_streams, "data"), (self.context_streams, "context")):
            if len(set(streams)) != len(streams):
                raise ValueError(f"MultiFlowConfig: {label}_streams lists a stream twice: {list(streams)}")
        for name in self.context_streams:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"MultiFlowConfig: context stream name {name!r} must be a plain identifier")
        for name, fields in self.stream_overrides.items():
            if name not in self.modalities:
                raise ValueError(f"MultiFlowConfig: stream_overrides names {name!r}, not one of {self.modalities}")
            for key in fields:
                if key not in LAYOUT_FIELDS:
                    raise ValueError(
                        f"MultiFlowConfig: stream_overrides[{name!r}] key {key!r} is not one of {LAYOUT_FIELDS}"
                    )
        for name in self.modalities:
            self._check_layout(name, self.layout(name))

    def _check_layout(self, name: str, lay: StreamLayout) -> None:
        where = f"MultiFlowConfig ({name!r} streams)"
        if not lay.channel_mult:
            raise ValueError(f"{where}: channel_mult must list at least one level")
        if len(lay.attention_levels) != len(lay.channel_mult):
            raise ValueError(
                f"{where}: attention_levels has {len(lay.attention_levels)} entries for {len(lay.channel_mult)} levels"
            )
        if lay.num_res_blocks < 1 or lay.transformer_depth < 1:
            raise ValueError(f"{where}: num_res_blocks and transformer_depth must be at least 1")
        for m in lay.channel_mult:
            w = lay.model_channels * m
            if w % self.norm_groups:
                raise ValueError(f"{where}: width {w} is not divisible by norm_groups={self.norm_groups}")
            heads = lay.heads(w)
            if heads < 1 or w % heads or (lay.head_channels and w % lay.head_channels):
                raise ValueError(f"{where}: width {w} cannot be split into attention heads ({heads})")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Data streams, then context-only modalities: the order of the top-level modules (VD: image, text)."""
        return tuple(dict.fromkeys(self.data_streams + self.context_streams))

    @property
    def emb_dim(self) -> int:
        """Width of the time embedding (VD: 4 * model_channels = 1280)."""
        return 4 * self.model_channels

    def layout(self, modality: str) -> StreamLayout:
        """The layout fields of one modality's streams (shared fields plus its stream_overrides)."""
        fields = {k: getattr(self, k) for k in LAYOUT_FIELDS}
        fields.update(self.stream_overrides.get(modality, {}))
        fields["channel_mult"] = tuple(fields["channel_mult"])
        fields["attention_levels"] = tuple(bool(a) for a in fields["attention_levels"])
        return StreamLayout(**fields)

    def data_shape(self, stream: str) -> tuple[int, ...]:
        """Shape of one sample of a data stream: image (C, S, S), text (D,)."""
        if stream not in self.data_streams:
            raise ValueError(f"unknown data stream {stream!r}; this network generates {list(self.data_streams)}")
        if DATA_STREAM_KINDS[stream] == "spatial":
            return (self.image_channels, self.image_size, self.image_size)
        return (self.text_dim,)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["stream_overrides"] = {
            name: {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
            for name, fields in self.stream_overrides.items()
        }
        return out


# ------------------------------------------------------------------------------------------------- network


class ModalityStreams(nn.Module):
    """One modality's layers: `data_blocks` (its data stream), `context_blocks` (its context stream) and,
    for the owner of the global layer, `time_embed`. Each block sits at index 0 of a one-element ModuleList,
    which reproduces VD's `TimestepEmbedSequential` wrapper and hence its `.N.0.` key names."""

    def __init__(
        self, time_embed: nn.Module | None, data: list[nn.Module] | None, context: list[nn.Module] | None
    ) -> None:
        super().__init__()
        if time_embed is not None:
            self.time_embed = time_embed
        if data is not None:
            self.data_blocks = nn.ModuleList(nn.ModuleList([b]) for b in data)
        if context is not None:
            self.context_blocks = nn.ModuleList(nn.ModuleList([b]) for b in context)


def _spatial_layer(cfg: MultiFlowConfig, s: Slot) -> nn.Module:
    """The image-stream layer of one data slot (SD-1 UNet layers)."""
    g, eps = cfg.norm_groups, cfg.norm_eps
    if s.op == "in":
        return InputConv(cfg.image_channels, s.width)
    if s.op == "res":
        return ResBlock(s.cin, s.width, cfg.emb_dim, groups=g, eps=eps, dropout=cfg.dropout)
    if s.op == "down":
        return Downsample(s.width)
    if s.op == "up":
        return Upsample(s.width)
    return ConvHead(s.cin, cfg.image_channels, groups=g, eps=eps)


def _vector_layer(cfg: MultiFlowConfig, s: Slot) -> nn.Module:
    """The text-stream layer of one data slot (VD UNetModel0D: FC layers on [B, C, T, 1])."""
    g, eps, t = cfg.norm_groups, cfg.norm_eps, cfg.text_tokens
    if s.op == "in":
        return TokenLinear(cfg.text_dim, s.width * t, t)
    if s.op == "res":
        return FCResBlock(s.cin, s.width, cfg.emb_dim, tokens=t, groups=g, eps=eps, dropout=cfg.dropout)
    if s.op in ("down", "up"):  # VD: a square Linear on the flattened vector, no resolution change
        return TokenLinear(s.width * t, s.width * t, t)
    return VectorHead(s.cin, t, cfg.text_dim, groups=g, eps=eps)


def _data_layers(cfg: MultiFlowConfig, stream: str, slots: tuple[Slot, ...]) -> list[nn.Module]:
    """The data stream of one modality, one layer per data slot."""
    make = _spatial_layer if DATA_STREAM_KINDS[stream] == "spatial" else _vector_layer
    return [make(cfg, s) for s in slots if s.kind == "data"]


def _context_layers(cfg: MultiFlowConfig, lay: StreamLayout, slots: tuple[Slot, ...]) -> list[nn.Module]:
    """The context stream of one modality, one SpatialTransformer per context slot."""
    return [
        SpatialTransformer(
            s.width, lay.heads(s.width), cfg.context_dim, depth=lay.transformer_depth, groups=cfg.norm_groups,
            eps=cfg.transformer_norm_eps, dropout=cfg.dropout,
        )
        for s in slots
        if s.kind == "context"
    ]


class MultiFlowDiffuser(CheckpointMixin, nn.Module):
    """VD multi-flow diffuser: forward(x, t, *, data_stream, context_<stream>=..., ...) -> output like x."""

    config_class = MultiFlowConfig

    def __init__(self, config: MultiFlowConfig) -> None:
        super().__init__()
        self.config = cfg = config
        slots = {name: cfg.layout(name).slots() for name in cfg.modalities}
        self.slots: tuple[Slot, ...] = _check_same_order(slots)
        self.num_context_slots = sum(s.kind == "context" for s in self.slots)
        self.global_stream = cfg.data_streams[0]  # VD global_layer_ptr = "image"
        for name in cfg.modalities:
            if hasattr(self, name):
                raise ValueError(f"modality name {name!r} clashes with a MultiFlowDiffuser attribute; rename it")
            time_embed = None
            if name == self.global_stream:
                time_embed = nn.Sequential(
                    nn.Linear(cfg.model_channels, cfg.emb_dim), nn.SiLU(), nn.Linear(cfg.emb_dim, cfg.emb_dim)
                )
            data = _data_layers(cfg, name, slots[name]) if name in cfg.data_streams else None
            context = _context_layers(cfg, cfg.layout(name), slots[name]) if name in cfg.context_streams else None
            self.add_module(name, ModalityStreams(time_embed, data, context))

    def flow_condition(self, data: str, context_modality: str | None, context: Tensor | None) -> dict[str, Any]:
        """The keywords that run one flow (versadiff.flows): the data stream, and the context under its stream."""
        if data not in self.config.data_streams:
            raise ValueError(f"this diffuser has no {data!r} data stream (it has {', '.join(self.config.data_streams)})")
        if context_modality is not None and context_modality not in self.config.context_streams:
            raise ValueError(f"this diffuser has no {context_modality!r} context stream "
                             f"(it has {', '.join(self.config.context_streams)})")
        cond: dict[str, Any] = {"data_stream": data}
        if context_modality is not None and context is not None:
            cond[f"context_{context_modality}"] = context
        return cond

    # --- inputs ---------------------------------------------------------------------------------------------

    def _contexts(self, x: Tensor, contexts: dict[str, Any]) -> dict[str, Tensor]:
        cfg = self.config
        out = {}
        for key, value in contexts.items():
            if not key.startswith("context_"):
                hint = " (pass context_<stream>=..., e.g. context_text)" if key == "context" else ""
                raise ValueError(f"MultiFlowDiffuser got an unexpected keyword {key!r}{hint}")
            name = key[len("context_"):]
            if name not in cfg.context_streams:
                raise ValueError(
                    f"unknown context stream {name!r} ({key}); this network has {list(cfg.context_streams)}"
                )
            if value is None:  # an explicitly absent context
                continue
            if not torch.is_tensor(value) or value.ndim != 3 or value.shape[0] != x.shape[0] \
                    or value.shape[2] != cfg.context_dim:
                shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                raise ValueError(f"{key} must have shape [B={x.shape[0]}, L, {cfg.context_dim}], got {shape}")
            out[name] = value.to(x.dtype)
        if not out:
            raise ValueError(
                f"MultiFlowDiffuser needs at least one context keyword, one of "
                f"{', '.join('context_' + c for c in cfg.context_streams)}"
            )
        return out

    def _weights(self, contexts: dict[str, Tensor], weights: dict[str, float] | None) -> dict[str, float]:
        """rho: the weights normalised to sum 1, zero-weight streams dropped (they would add 0 * delta), in the
        config's context_streams order (so layer-mixing draws do not depend on keyword order)."""
        if weights is None:
            weights = {name: 1.0 for name in contexts}
        for name in weights:
            if name not in contexts:
                raise ValueError(f"context_weights names {name!r} but no context_{name} was given")
        for name in contexts:
            if name not in weights:
                raise ValueError(f"context_{name} was given without a weight in context_weights {dict(weights)}")
        values = {k: float(v) for k, v in weights.items()}
        if any(not math.isfinite(v) or v < 0 for v in values.values()) or sum(values.values()) <= 0:
            raise ValueError(f"context_weights must be finite, non-negative and not all zero, got {values}")
        total = sum(values.values())
        return {k: values[k] / total for k in self.config.context_streams if values.get(k, 0) > 0}

    def _data_input(self, x: Tensor, stream: str) -> Tensor:
        cfg = self.config
        if DATA_STREAM_KINDS[stream] == "spatial":
            factor = 2 ** (len(cfg.channel_mult) - 1)
            if x.ndim != 4 or x.shape[1] != cfg.image_channels or x.shape[2] % factor or x.shape[3] % factor:
                raise ValueError(
                    f"data_stream {stream!r} expects x [B, {cfg.image_channels}, H, W] with H and W divisible by "
                    f"{factor}, got {tuple(x.shape)}"
                )
            return x
        if not (x.ndim == 2 and x.shape[1] == cfg.text_dim) and tuple(x.shape[1:]) != (cfg.text_dim, 1, 1):
            raise ValueError(
                f"data_stream {stream!r} expects x [B, {cfg.text_dim}] or [B, {cfg.text_dim}, 1, 1], "
                f"got {tuple(x.shape)}"
            )
        return x.flatten(1)

    def embed_time(self, t: Tensor) -> Tensor:
        """Global layer: sinusoidal [cos | sin] embedding of t (freq_shift 0, VD/diffusers), then Linear-SiLU-Linear."""
        time_embed = getattr(self, self.global_stream).time_embed
        sinusoid = timestep_embedding(t, self.config.model_channels, cos_first=True, freq_shift=0.0)
        return time_embed(sinusoid.to(time_embed[0].weight.dtype))

    # --- the walk -------------------------------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        *,
        data_stream: str,
        context_weights: dict[str, float] | None = None,
        mixing: str = "attention",
        mixing_generator: torch.Generator | None = None,
        **contexts: Tensor | None,
    ) -> Tensor:
        """Denoise x of `data_stream` at net time t [B] (VD: timesteps 0..999) given `context_<stream>` tensors.

        Several contexts are mixed with weights `context_weights` (default: equal) by `mixing`: "attention"
        (h + sum_i rho_i (T_i(h) - h) at every context slot) or "layer" (one stream per slot, drawn i ~ rho from
        `mixing_generator`, shared by the batch).
        """
        cfg = self.config
        if data_stream not in cfg.data_streams:
            raise ValueError(f"unknown data_stream {data_stream!r}; this network generates {list(cfg.data_streams)}")
        if mixing not in ("attention", "layer"):
            raise ValueError(f"mixing must be 'attention' or 'layer', got {mixing!r}")
        h = self._data_input(x, data_stream)
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [B]=[{x.shape[0]}] (net time), got {tuple(t.shape)}")
        ctx = self._contexts(x, contexts)
        rho = self._weights(ctx, context_weights)
        streams = [(getattr(self, name).context_blocks, ctx[name], r) for name, r in rho.items()]
        picks = None
        if mixing == "layer" and len(streams) > 1:
            # one draw per context slot, shared by the batch (VD v1 draws with numpy at each slot)
            device = mixing_generator.device if mixing_generator is not None else "cpu"
            probs = torch.tensor([r for *_, r in streams], dtype=torch.float64, device=device)
            picks = torch.multinomial(probs, self.num_context_slots, replacement=True,
                                      generator=mixing_generator).tolist()

        emb = self.embed_time(t)
        data_blocks = getattr(self, data_stream).data_blocks
        skips: list[Tensor] = []
        d = c = 0
        for slot in self.slots:
            if slot.kind == "data":
                h = self._run(data_blocks[d][0], h, emb)
                d += 1
            elif slot.kind == "context":
                active = [streams[picks[c]]] if picks is not None else streams
                h = self._context_slot(h, c, active)
                c += 1
            elif slot.kind == "push":
                skips.append(h)
            else:  # pop
                h = torch.cat([h, skips.pop()], dim=1)
        return h.reshape(x.shape)

    def _context_slot(self, h: Tensor, index: int, streams: list[tuple[nn.ModuleList, Tensor, float]]) -> Tensor:
        if len(streams) == 1:  # a single flow: T(h, c) exactly
            blocks, context, _ = streams[0]
            return self._run(blocks[index][0], h, context)
        out = h
        for blocks, context, r in streams:  # VD context_mixing: sum_i rho_i T_i(h) = h + sum_i rho_i (T_i(h) - h)
            out = out + r * (self._run(blocks[index][0], h, context) - h)
        return out


# ------------------------------------------------------------------------------------------- groups, presets


def parameter_groups(net: MultiFlowDiffuser) -> dict[str, list[str]]:
    """Parameter names in VD's groups: "global" (time_embed), "data.<modality>", "context.<modality>"."""
    groups: dict[str, list[str]] = {}
    for name, _ in net.named_parameters():
        modality, part, *_ = name.split(".")
        key = "global" if part == "time_embed" else f"{part.removesuffix('_blocks')}.{modality}"
        groups.setdefault(key, []).append(name)
    return groups


# VD four-flow gradient multipliers per group (paper Table 1, via a secondary summary: check the PDF);
# groups not listed use 1.0. Single- and dual-flow training used data.image 0.1.
VD_GROUP_MULTIPLIERS: dict[str, float] = {"global": 0.1, "data.image": 0.2}


def _preset(**base: Any) -> Callable[..., MultiFlowConfig]:
    def make(**overrides: Any) -> MultiFlowConfig:
        return MultiFlowConfig.from_dict({**base, **overrides})

    return make


# VD v1.0 `vd_four_flow_v1-0`: image + text data streams, image + text context streams, 768-d contexts,
# 64x64x4 image latents (512 px), 768-d Optimus text latents. 2,566,318,852 parameters.
vd_four_flow = _preset()
# VD-DC style: one image data stream, image + text context streams (text->image and image variation). 1,126,760,324.
vd_dc = _preset(data_streams=("image",), context_streams=("image", "text"))
# VD-basic style: image variation only (image data + image context), the size of SD-1. 859,520,964.
vd_basic = _preset(data_streams=("image",), context_streams=("image",))
# The sizes of shared/reference/vd/tiny_vd_configs.json (diffusers' tiny VD pair): widths 32/64/128/128,
# 8 heads, 32-d contexts, 8x8x4 image latents, 16-d text latents. 25,553,940 parameters.
vd_tiny = _preset(model_channels=32, context_dim=32, image_size=8, text_dim=16)
# CPU miniature for shape and pipeline tests: 4x8x8 image latents, 64-d text latents, 64-d contexts,
# widths 32/64, 8 norm groups, 4 heads, context slots on both levels. 3,057,444 parameters.
vd_shapes = _preset(
    model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True), num_heads=4,
    context_dim=64, image_size=8, text_dim=64, norm_groups=8,
)

MULTIFLOW_PRESETS: dict[str, Callable[..., MultiFlowConfig]] = {
    "vd_four_flow": vd_four_flow,
    "vd_dc": vd_dc,
    "vd_basic": vd_basic,
    "vd_tiny": vd_tiny,
    "vd_shapes": vd_shapes,
}
