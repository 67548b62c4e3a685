"""Versatile Diffusion's frozen CLIP context encoders, and a contrastive CLIP pair to train miniature ones.

Text  (`ClipTextEncoder`, type "clip_text"):  prompts -> [B, L, D] (L = 77 for ViT-L/14, D = 768).
    Padded to L with the pad token, no attention mask (as VD, SD, U-ViT and diffusers). Option `context`:
    "vd" (default; VD):  z = text_projection(last_hidden_state) for every token, p = text_projection(pooled EOS
                         token); context = z / ||p||  (D = projection_dim).
    "hidden" (U-ViT's MS-COCO models, SD): last_hidden_state (after the final LayerNorm), unprojected
                         (D = hidden_size); U-ViT's FrozenCLIPEmbedder / extract_mscoco_feature.py.
    "normalized" (VQ-Diffusion): last_hidden_state (= OpenAI CLIP's ln_final output), each token divided by
                         its own L2 norm (D = hidden_size); VQ-Diffusion's CLIPTextEmbedding(normalize=True).
    "hidden" and "normalized" need no text_projection, so a bare CLIPTextModel folder (SD's text_encoder/) loads.
Image (`ClipImageEncoder`, type "clip_image"): images -> [B, 1 + N, D] (257 x 768 for ViT-L/14 at 224 px).
    z = visual_projection(post_layernorm(all hidden tokens)); context = z / ||z[:, 0]|| (the CLS token).
    Preprocessing without torchvision: shortest side resized to the model's image size (bicubic), centre crop,
    CLIP mean/std. Accepted: PIL images (any mode), uint8 arrays [H, W(, C)] / [B, H, W, C], float arrays in
    [0, 1] (HWC), float tensors [B, 3, H, W] in [-1, 1] (the project's convention; `value_range` to change it)
    and uint8 tensors [B, 3, H, W]. A float 0.5 in [0, 1] is mid-gray here (diffusers' processor call rescales
    it a second time and encodes a near-black image instead).
Null contexts (VD v1.0): text `null(batch, mode)`: "empty" (default; the encoding of "", computed once per
    device: VD, U-ViT's empty_context.npy) or "zeros" (an all-zero context, which a network with a learned null
    replaces by it: VQ-Diffusion's learnable null, flows entry {name: text-to-image, null: zeros}); image
    `null(batch, mode)`: "zeros" (default; image variation and dual guidance) or "black" (the encoding of a black
    image; image->text).

Both load a local transformers `save_pretrained` folder of a CLIPModel or of the single tower
(CLIPTextModelWithProjection / CLIPVisionModelWithProjection), or build a small architecture from the config
(`path` None: random weights, e.g. before training a miniature with `ClipPair`). They stay frozen: eval mode,
no gradients, float32 outside any autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from versadiff.component import ComponentConfig
from versadiff.encoders.base import ENCODERS, ContextEncoder
from versadiff.encoders.tokenizers import ClipTokenizer, tokenizer_folder

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TEXT_CONTEXTS",
    "ClipTextEncoderConfig",
    "ClipImageEncoderConfig",
    "ClipTextEncoder",
    "ClipImageEncoder",
    "ClipPairConfig",
    "ClipPair",
    "load_clip_tower",
    "preprocess_clip_images",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
NULL_MODES = ("zeros", "black")
#: what ClipTextEncoder returns per token (see the module docstring)
TEXT_CONTEXTS = ("vd", "hidden", "normalized")
TEXT_NULL_MODES = ("empty", "zeros")


# ----------------------------------------------------------------------------------------------- configs


@dataclasses.dataclass
class ClipTextEncoderConfig(ComponentConfig):
    """CLIP text context encoder.

    path: a transformers save_pretrained folder (CLIPModel or CLIPTextModelWithProjection); None builds the
    architecture below with random weights. tokenizer: a folder with vocab.json + merges.txt or a shipped name;
    None looks in `path`, then `path/tokenizer`, then `path/../tokenizer` (a diffusers pipeline's layout), and
    is "clip_shapes" without a path. context_length: tokens per prompt; None = the loaded model's positions
    (77 for CLIP), 77 for a built one. vocab_size: None = the tokenizer's. context: "vd" | "hidden" |
    "normalized" (the module docstring). pad_token: the token prompts are padded with; None = the tokenizer's
    (<|endoftext|> for OpenAI's CLIP); VQ-Diffusion pads with id 0, "!" (diffusers' port sets pad_token "!").
    """

    type_name = "clip_text"
    path: str | None = None
    tokenizer: str | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    projection_dim: int = 64
    context: str = "vd"
    pad_token: str | None = None

    def __post_init__(self) -> None:
        if self.context not in TEXT_CONTEXTS:
            raise ValueError(f"clip_text context must be one of {', '.join(TEXT_CONTEXTS)}, got {self.context!r}")

    @property
    def projected(self) -> bool:
        """Whether the context needs the text projection (VD's)."""
        return self.context == "vd"

    @classmethod
    def vit_l14(cls, **overrides: Any) -> "ClipTextEncoderConfig":
        """The architecture of CLIP ViT-L/14's text tower (VD's text context: 77 x 768)."""
        base = dict(context_length=77, vocab_size=49408, hidden_size=768, num_layers=12, num_heads=12,
                    intermediate_size=3072, projection_dim=768)  # fmt: skip
        return cls(**{**base, **overrides})

    @classmethod
    def vit_b32(cls, **overrides: Any) -> "ClipTextEncoderConfig":
        """The architecture of CLIP ViT-B/32's text tower (VQ-Diffusion's text context: 77 x 512, normalized)."""
        base = dict(context_length=77, vocab_size=49408, hidden_size=512, num_layers=12, num_heads=8,
                    intermediate_size=2048, projection_dim=512, context="normalized")  # fmt: skip
        return cls(**{**base, **overrides})


@dataclasses.dataclass
class ClipImageEncoderConfig(ComponentConfig):
    """CLIP image context encoder.

    path: a transformers save_pretrained folder (CLIPModel or CLIPVisionModelWithProjection); None builds the
    architecture below. null_mode: the default `null()` ("zeros" or "black"). image_mean / image_std: CLIP's.
    """

    type_name = "clip_image"
    path: str | None = None
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    projection_dim: int = 64
    null_mode: str = "zeros"
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def vit_l14(cls, **overrides: Any) -> "ClipImageEncoderConfig":
        """The architecture of CLIP ViT-L/14's vision tower (VD's image context: 257 x 768 at 224 px)."""
        base = dict(image_size=224, patch_size=14, hidden_size=1024, num_layers=24, num_heads=16,
                    intermediate_size=4096, projection_dim=768)  # fmt: skip
        return cls(**{**base, **overrides})


def _text_hf_config(cfg: Any, vocab_size: int, tok: ClipTokenizer | None) -> Any:
    from transformers import CLIPTextConfig

    ids = {} if tok is None else dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, projection_dim=cfg.projection_dim,
        max_position_embeddings=cfg.context_length, **ids,
    )  # fmt: skip


def _vision_hf_config(cfg: Any) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, projection_dim=cfg.projection_dim,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- loading

_TOWERS = {
    "text": ("clip_text_model", "text_config", ("text_model.", "text_projection.")),
    "vision": ("clip_vision_model", "vision_config", ("vision_model.", "visual_projection.")),
}


_BARE_TEXT = ("embeddings.", "encoder.", "final_layer_norm.")


def _read_state(folder: Path) -> dict[str, Tensor]:
    """The weights of a transformers folder: model.safetensors (or its sharded index), else pytorch_model.bin
    (read with torch.load(weights_only=True))."""
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    pickle = folder / "pytorch_model.bin"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for s in shards:
            if not (folder / s).is_file():
                raise FileNotFoundError(f"weights shard {str(folder / s)!r} (listed in {index.name}) is missing")
            state.update(load_file(str(folder / s)))
        return state
    if pickle.is_file():
        return torch.load(str(pickle), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"weights file {str(single)!r} is missing (no sharded index or pytorch_model.bin either)")


def _skip_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def load_clip_tower(path: str | Path, tower: str, projection: bool = True) -> nn.Module:
    """CLIPTextModelWithProjection ("text") or CLIPVisionModelWithProjection ("vision") from a local
    save_pretrained folder of a CLIPModel or of that tower (strict: every weight of the tower must be there).
    projection=False (text only): the folder may lack the text projection (a bare CLIPTextModel such as SD's
    text_encoder/); it is then zero, and unused."""
    from transformers import (
        CLIPConfig,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"CLIP model folder {str(folder)!r} does not exist")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"CLIP config file {str(cfg_file)!r} is missing")
    raw = json.loads(cfg_file.read_text())
    single_type, sub_key, prefixes = _TOWERS[tower]
    model_type = raw.get("model_type")
    if model_type == "clip":
        full = CLIPConfig.from_dict(raw)
        sub = getattr(full, sub_key)
        sub.projection_dim = full.projection_dim
    elif model_type == single_type:
        sub = (CLIPTextConfig if tower == "text" else CLIPVisionConfig).from_dict(raw)
    else:
        raise ValueError(f"{str(cfg_file)!r} describes a {model_type!r} model; a CLIP {tower} encoder needs 'clip' or {single_type!r}")
    cls = CLIPTextModelWithProjection if tower == "text" else CLIPVisionModelWithProjection
    with _skip_init():  # every weight is loaded below
        model = cls(sub)
    raw_state = _read_state(folder)
    if tower == "text" and not any(k.startswith("text_model.") for k in raw_state):
        # a bare CLIPTextModel saved by transformers 5 names its weights without the text_model. prefix
        raw_state = {("text_model." + k if k.startswith(_BARE_TEXT) else k): v for k, v in raw_state.items()}
    state = {k: v for k, v in raw_state.items() if k.startswith(prefixes) and not k.endswith("position_ids")}
    own = model.state_dict()
    if tower == "text" and not projection:  # unused: zeros where the folder has none (a bare CLIPTextModel)
        for k in own:
            if k.startswith("text_projection.") and k not in state:
                state[k] = torch.zeros_like(own[k])
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if tower == "text" and missing and all(k.startswith("text_projection.") for k in missing):
        raise ValueError(f"{str(folder)!r} holds a CLIP text model without text_projection, which VD's context "
                         "(context=vd) needs; its last_hidden_state is context=hidden (U-ViT, SD) or normalized (VQ-Diffusion)")
    if missing or extra:
        what = f"lacks {missing[:3]}" if missing else f"has unexpected {extra[:3]}"
        raise ValueError(f"the CLIP {tower} weights in {str(folder)!r} do not fit its config: it {what}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{str(folder)!r}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=True)
    return model


def _find_tokenizer(cfg: ClipTextEncoderConfig) -> str | Path:
    if cfg.tokenizer is not None:
        return cfg.tokenizer
    if cfg.path is None:
        return "clip_shapes"
    p = Path(cfg.path).expanduser()
    for cand in (p, p / "tokenizer", p.parent / "tokenizer"):
        if (cand / "vocab.json").is_file() or (cand / "merges.txt").is_file():
            return cand
    return p  # ClipTokenizer names the missing file


def _freeze(module: nn.Module) -> None:
    module.eval().requires_grad_(False)


class _FrozenClip(ContextEncoder):
    trainable = False

    def train(self, mode: bool = True) -> "_FrozenClip":  # frozen: always eval (no dropout)
        return super().train(False)

    def _no_autocast(self):
        dev = self.device.type
        return contextlib.nullcontext() if dev == "meta" else torch.autocast(dev, enabled=False)


# ----------------------------------------------------------------------------------------------- text


@ENCODERS.register
class ClipTextEncoder(_FrozenClip):
    """Prompts -> VD's CLIP text context [B, L, D] (see the module docstring)."""

    config_class = ClipTextEncoderConfig
    modality = "text"

    def __init__(self, config: ClipTextEncoderConfig | None = None) -> None:
        super().__init__()
        from transformers import CLIPTextModelWithProjection

        self.config = cfg = config or ClipTextEncoderConfig()
        model = load_clip_tower(cfg.path, "text", projection=cfg.projected) if cfg.path is not None else None
        length = cfg.context_length or (model.config.max_position_embeddings if model is not None else 77)
        self.tokenizer = ClipTokenizer(_find_tokenizer(cfg), length)
        if cfg.pad_token is not None:
            vocab = self.tokenizer.backend.get_vocab()
            if cfg.pad_token not in vocab:
                raise ValueError(f"pad_token {cfg.pad_token!r} is not in the tokenizer's vocabulary ({self.tokenizer.folder})")
            self.tokenizer.pad_id = int(vocab[cfg.pad_token])
        if model is None:
            hf_cfg = _text_hf_config(cfg.replace(context_length=length), cfg.vocab_size or self.tokenizer.vocab_size,
                                     self.tokenizer)
            model = CLIPTextModelWithProjection(hf_cfg)
        self.model = model
        hf = self.model.config
        if self.tokenizer.vocab_size > hf.vocab_size:
            raise ValueError(f"the tokenizer has {self.tokenizer.vocab_size} tokens but the CLIP text model only {hf.vocab_size}")
        if length > hf.max_position_embeddings:
            raise ValueError(f"context_length {length} exceeds the model's {hf.max_position_embeddings} positions")
        self.register_buffer("_null", None, persistent=False)
        _freeze(self.model)

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def dim(self) -> int:
        c = self.model.config
        return int(c.projection_dim if self.config.projected else c.hidden_size)

    def context_shape(self) -> tuple[int, int]:
        return (self.context_length, self.dim)

    @torch.no_grad()
    def encode_ids(self, ids: Tensor) -> Tensor:
        """Context of token ids [B, L] (already padded), of the configured kind: "vd" projected tokens /
        ||projected EOS token||; "hidden" last_hidden_state; "normalized" each last_hidden_state token / its norm."""
        with self._no_autocast():
            out = self.model(input_ids=ids.to(self.device))
            h = out.last_hidden_state.float()
            kind = self.config.context
            if kind == "hidden":
                return h
            if kind == "normalized":
                return h / h.norm(dim=-1, keepdim=True)
            z = self.model.text_projection(h)
            return z / out.text_embeds.float().norm(dim=-1, keepdim=True).unsqueeze(1)

    def encode(self, inputs: Sequence[str] | str) -> Tensor:
        return self.encode_ids(self.tokenizer(inputs))

    def null(self, batch: int, mode: str | None = None) -> Tensor:
        """[batch, L, D]: "empty" (default) the encoding of "" repeated (computed once per device); "zeros" an
        all-zero context (a network's learned null, e.g. VQ-Diffusion's)."""
        if mode not in (None, *TEXT_NULL_MODES):
            raise ValueError(f"the CLIP text null context mode must be one of {', '.join(TEXT_NULL_MODES)}, got {mode!r}")
        if mode == "zeros":
            return torch.zeros(int(batch), self.context_length, self.dim, device=self.device)
        if self._null is None or self._null.device != self.device:
            self._null = self.encode([""])
        return self._null.expand(int(batch), -1, -1).clone()


# ----------------------------------------------------------------------------------------------- images


def _pil_to_array(img: Any, size: int) -> np.ndarray:
    """RGB uint8 [size, size, 3]: any PIL mode converted to RGB (transparent pixels composited on white),
    shortest side to `size` (bicubic), centre crop (the arithmetic of transformers' CLIP image processor)."""
    from PIL import Image

    from PIL import Image as _Image

    if "A" in img.getbands() or img.info.get("transparency") is not None:  # transparency: composite on white
        rgba = img.convert("RGBA")
        img = _Image.alpha_composite(_Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    elif img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError(f"cannot encode an empty {w}x{h} image")
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return arr[top : top + size, left : left + size]


def _resize_tensor(x: Tensor, size: int) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, size, size]: shortest side to `size` (bicubic, antialiased like PIL),
    centre crop."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        if h <= w:
            nh, nw = size, int(size * w / h)
        else:
            nh, nw = int(size * h / w), size
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x


def _kind(item: Any) -> str:
    try:
        from PIL import Image

        if isinstance(item, Image.Image):
            return "pil"
    except ImportError:  # pragma: no cover
        pass
    if isinstance(item, np.ndarray):
        return "array"
    if torch.is_tensor(item):
        return "tensor"
    return "other"


def _array_to_chw(arr: np.ndarray) -> Tensor:
    """A float array HWC / HW / BHWC -> tensor [B, C, H, W]."""
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if x.ndim == 2:
        x = x[None, :, :, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"float image arrays must be [H, W], [H, W, C] or [B, H, W, C] with C in 1/3/4, got {tuple(arr.shape)}")
    return x.permute(0, 3, 1, 2)


def _to_rgb(x: Tensor) -> Tensor:
    """[B, C, H, W] in [0, 1] with C = 1 (gray), 3 or 4 (alpha: composited on white) -> [B, 3, H, W]."""
    c = x.shape[1]
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 4:
        a = x[:, 3:].clamp(0.0, 1.0)
        return x[:, :3] * a + (1.0 - a)
    if c != 3:
        raise ValueError(f"images need 1, 3 or 4 channels, got {c}")
    return x


def _uint8_array_to_unit(arr: np.ndarray, size: int) -> Tensor:
    from PIL import Image

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"uint8 image arrays must be [H, W], [H, W, C] or [B, H, W, C] with C in 1/3/4, got {tuple(arr.shape)}")
    return _pil_to_unit(Image.fromarray(np.ascontiguousarray(arr)), size)


def _pil_to_unit(img: Any, size: int) -> Tensor:
    return torch.from_numpy(_pil_to_array(img, size).copy()).permute(2, 0, 1)[None].float().div(255.0)


def _item_to_unit(item: Any, i: int, size: int, value_range: tuple[float, float] | None, device: Any) -> Tensor:
    """One batch item -> [b, 3, size, size] in [0, 1]."""
    kind = _kind(item)
    if kind == "pil":
        return _pil_to_unit(item, size).to(device)
    if kind == "array" and item.dtype == np.uint8:
        if item.ndim == 4:
            return torch.cat([_uint8_array_to_unit(a, size) for a in item]).to(device)
        return _uint8_array_to_unit(item, size).to(device)
    if kind == "array":
        if not np.issubdtype(item.dtype, np.floating):
            raise TypeError(f"image arrays must be uint8 or float, item {i} is {item.dtype}")
        lo, hi = value_range or (0.0, 1.0)
        x = (_array_to_chw(item) - lo) / (hi - lo)
    elif kind == "tensor":
        x = item[None] if item.ndim == 3 else item
        if x.ndim != 4:
            raise ValueError(f"image tensors must be [B, C, H, W] or [C, H, W], got shape {tuple(item.shape)}")
        if x.shape[1] not in (1, 3, 4):
            raise ValueError(f"image tensors need 1, 3 or 4 channels in dim 1 ([B, C, H, W]), got shape {tuple(item.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div(255.0)
        elif x.is_floating_point():
            lo, hi = value_range or (-1.0, 1.0)
            x = (x.float() - lo) / (hi - lo)
        else:
            raise TypeError(f"image tensors must be float or uint8, item {i} is {x.dtype}")
    else:
        raise TypeError(
            "the CLIP image encoder takes PIL images, uint8 or float numpy arrays, or tensors [B, 3, H, W]; "
            f"item {i} is a {type(item).__name__}"
        )
    if x.shape[0] == 0:
        raise ValueError("the CLIP image encoder got an empty batch: pass at least one image")
    if float(x.max()) > 2.0:
        raise ValueError(f"image item {i} goes {float(x.max()):.0f}x beyond its value range: pass uint8 for 0..255 images")
    return _resize_tensor(_to_rgb(x.to(device).clamp(0.0, 1.0)), size)


def preprocess_clip_images(
    images: Any,
    size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    value_range: tuple[float, float] | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """CLIP pixel values [B, 3, size, size] (float32) of a batch of images (see the module docstring).

    images: one image / batch tensor / array, or a list of them (sizes may differ).
    value_range: the range of float inputs; None = (-1, 1) for tensors and (0, 1) for numpy arrays.
    """
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("the CLIP image encoder got an empty batch: pass at least one image")
    px = torch.cat([_item_to_unit(item, i, size, value_range, device) for i, item in enumerate(items)])
    m = torch.tensor(mean, dtype=torch.float32, device=px.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=px.device).view(1, 3, 1, 1)
    return (px - m) / s


@ENCODERS.register
class ClipImageEncoder(_FrozenClip):
    """Images -> VD's CLIP image context [B, 1 + N, D] (see the module docstring)."""

    config_class = ClipImageEncoderConfig
    modality = "image"

    def __init__(self, config: ClipImageEncoderConfig | None = None) -> None:
        super().__init__()
        from transformers import CLIPVisionModelWithProjection

        self.config = cfg = config or ClipImageEncoderConfig()
        if cfg.null_mode not in NULL_MODES:
            raise ValueError(f"null_mode must be one of {', '.join(NULL_MODES)}, got {cfg.null_mode!r}")
        if cfg.path is not None:
            self.model = load_clip_tower(cfg.path, "vision")
        else:
            self.model = CLIPVisionModelWithProjection(_vision_hf_config(cfg))
        self.register_buffer("_black", None, persistent=False)
        _freeze(self.model)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def num_tokens(self) -> int:
        c = self.model.config
        return 1 + (c.image_size // c.patch_size) ** 2

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    def context_shape(self) -> tuple[int, int]:
        return (self.num_tokens, self.dim)

    def preprocess(self, images: Any, value_range: tuple[float, float] | None = None) -> Tensor:
        return preprocess_clip_images(images, self.image_size, self.config.image_mean, self.config.image_std,
                                      value_range, self.device)  # fmt: skip

    @torch.no_grad()
    def encode_pixels(self, pixel_values: Tensor) -> Tensor:
        """Context of preprocessed pixels [B, 3, S, S]: projected tokens / ||projected CLS token||."""
        with self._no_autocast():
            out = self.model(pixel_values=pixel_values.to(self.device, torch.float32))
            z = self.model.visual_projection(self.model.vision_model.post_layernorm(out.last_hidden_state.float()))
            return z / z[:, :1].norm(dim=-1, keepdim=True)

    def encode(self, inputs: Any, value_range: tuple[float, float] | None = None) -> Tensor:
        return self.encode_pixels(self.preprocess(inputs, value_range))

    def null(self, batch: int, mode: str | None = None) -> Tensor:
        """"zeros": an all-zero context; "black": the encoding of a black image (cached per device)."""
        mode = mode or self.config.null_mode
        if mode == "zeros":
            return torch.zeros(int(batch), self.num_tokens, self.dim, device=self.device)
        if mode == "black":
            if self._black is None or self._black.device != self.device:
                s = self.image_size
                self._black = self.encode(torch.zeros(1, 3, s, s, device=self.device), value_range=(0.0, 1.0))
            return self._black.expand(int(batch), -1, -1).clone()
        raise ValueError(f"CLIP image null mode must be one of {', '.join(NULL_MODES)}, got {mode!r}")


# ----------------------------------------------------------------------------------------------- training


@dataclasses.dataclass
class ClipPairConfig(ComponentConfig):
    """A small CLIP (both towers) trained contrastively on image-caption pairs, e.g. the shapes dataset.

    The text tower uses `tokenizer` and `context_length`; the vision tower `image_size` / `patch_size`.
    logit_scale_init: log of the initial inverse temperature (CLIP: log(1 / 0.07)); logit_scale_max: the cap
    on exp(logit_scale) (CLIP: 100).
    """

    type_name = "clip_pair"
    tokenizer: str = "clip_shapes"
    context_length: int = 32
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    image_size: int = 32
    patch_size: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 256
    projection_dim: int = 64
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def text_encoder_config(self, path: str | None = None) -> ClipTextEncoderConfig:
        return ClipTextEncoderConfig(
            path=path, tokenizer=None if path else self.tokenizer, context_length=self.context_length,
            hidden_size=self.text_hidden_size, num_layers=self.text_layers, num_heads=self.text_heads,
            intermediate_size=self.text_intermediate_size, projection_dim=self.projection_dim,
        )  # fmt: skip

    def image_encoder_config(self, path: str | None = None, null_mode: str = "zeros") -> ClipImageEncoderConfig:
        return ClipImageEncoderConfig(
            path=path, image_size=self.image_size, patch_size=self.patch_size, hidden_size=self.vision_hidden_size,
            num_layers=self.vision_layers, num_heads=self.vision_heads, intermediate_size=self.vision_intermediate_size,
            projection_dim=self.projection_dim, null_mode=null_mode, image_mean=self.image_mean, image_std=self.image_std,
        )  # fmt: skip


class ClipPair(nn.Module):
    """Both CLIP towers (a transformers CLIPModel) with a learnable logit scale, trained with `clip_loss`.

    `save_pretrained(folder)` writes the CLIPModel folder plus the tokenizer files, which both
    `ClipTextEncoderConfig(path=folder)` and `ClipImageEncoderConfig(path=folder)` load.
    """

    config_class = ClipPairConfig

    def __init__(self, config: ClipPairConfig | None = None) -> None:
        super().__init__()
        from transformers import CLIPConfig, CLIPModel

        self.config = cfg = config or ClipPairConfig()
        self.tokenizer = ClipTokenizer(cfg.tokenizer, cfg.context_length)
        text = _text_hf_config(cfg.text_encoder_config(), self.tokenizer.vocab_size, self.tokenizer)
        vision = _vision_hf_config(cfg.image_encoder_config())
        hf = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=cfg.projection_dim,
                        logit_scale_init_value=cfg.logit_scale_init)  # fmt: skip
        self.model = CLIPModel(hf)

    def text_features(self, captions: Sequence[str]) -> Tensor:
        """Unit-norm projected pooled (EOS) text embeddings [B, D]."""
        ids = self.tokenizer(captions).to(self.model.logit_scale.device)
        pooled = self.model.text_model(input_ids=ids).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)

    def image_features(self, images: Tensor, value_range: tuple[float, float] | None = None) -> Tensor:
        """Unit-norm projected pooled (CLS) image embeddings [B, D] of images [B, 3, H, W] (in [-1, 1] by
        default; resized like the encoder's tensor path, differentiably)."""
        if not torch.is_tensor(images) or images.ndim != 4 or not images.is_floating_point():
            got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise TypeError(f"ClipPair takes float image tensors [B, 3, H, W] in [-1, 1], got {got}")
        lo, hi = value_range or (-1.0, 1.0)
        dev = self.model.logit_scale.device
        x = _resize_tensor(_to_rgb(((images.to(dev).float() - lo) / (hi - lo)).clamp(0.0, 1.0)), self.config.image_size)
        m = torch.tensor(self.config.image_mean, device=dev).view(1, 3, 1, 1)
        s = torch.tensor(self.config.image_std, device=dev).view(1, 3, 1, 1)
        pooled = self.model.vision_model(pixel_values=(x - m) / s).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def clip_loss(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """Symmetric InfoNCE per sample [B]: (CE(image_i -> texts, i) + CE(text_i -> images, i)) / 2.
        Its batch mean is CLIP's loss; the other samples of the batch are the negatives."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"clip_loss got {images.shape[0]} images but {len(captions)} captions")
        if images.shape[0] < 2:
            raise ValueError("clip_loss needs a batch of at least 2 pairs (the others are the negatives)")
        img = self.image_features(images)
        txt = self.text_features(list(captions))
        logits = self.logit_scale() * img @ txt.t()
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.t(), target, reduction="none"))

    def forward(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        return self.clip_loss(images, captions)

    def save_pretrained(self, folder: str | Path) -> Path:
        """A transformers CLIPModel folder (config.json + model.safetensors) with vocab.json + merges.txt."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        # what CLIPModel.save_pretrained writes (config.json + model.safetensors), without its progress bar
        self.model.config.to_json_file(str(folder / "config.json"))
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        src = tokenizer_folder(self.config.tokenizer)
        for name in ClipTokenizer.files:
            shutil.copyfile(src / name, folder / name)
        (folder / "clip_pair.json").write_text(json.dumps(self.config.to_spec(), indent=2) + "\n")
        return folder

    @classmethod
    def load_pretrained(cls, folder: str | Path) -> "ClipPair":
        folder = Path(folder)
        spec = folder / "clip_pair.json"
        if not spec.is_file():
            raise FileNotFoundError(f"{str(spec)!r} is missing; save the pair with ClipPair.save_pretrained")
        cfg = ClipPairConfig.from_dict(json.loads(spec.read_text()))
        cfg = cfg.replace(tokenizer=str(folder))
        pair = cls(cfg)
        from safetensors.torch import load_file

        w = folder / "model.safetensors"
        if not w.is_file():
            raise FileNotFoundError(f"weights file {str(w)!r} is missing")
        state = {k: v for k, v in load_file(str(w)).items() if not k.endswith("position_ids")}
        pair.model.load_state_dict(state, strict=True)
        return pair
