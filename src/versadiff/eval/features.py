"""Feature extractors: images [N, C, H, W] in [-1, 1] -> {"features": [N, D], "logits": [N, K] (optional)}.

Every extractor has a `name` that is stored next to statistics computed with it, so statistics from
different feature spaces are never compared. Extractors are pluggable: `register_feature_extractor`
adds a factory under a new name, and any Fréchet distance / KID / precision-recall then works on it.

Built in:
  inception   pytorch-fid's FID Inception pool3 (2048-d) + logits for IS; needs the local weights file.
  fmnist      the shipped Fashion-MNIST classifier: 128-d penultimate activations + class logits.
  shapes      the shapes attribute reader (versadiff.data.attributes): per image a 33-d attribute
              histogram (18 colour x shape classes, 2 sizes, 9 positions, 1 or 2 shapes, unreadable
              shapes, no shape) and the read class as "pred" (-1 when unreadable).
  clip        CLIP image embeddings (text embeddings via `text_features`) from a local folder: a transformers
              CLIPModel folder, or a versadiff ClipPair folder (clip_pair.json: the miniature CLIPs, e.g. the
              vd-shapes model's own, asset:vd_shapes/clip).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FeatureExtractor",
    "InceptionFeatures",
    "FMNISTFeatures",
    "ShapesFeatures",
    "CLIPFeatures",
    "ClipPairFeatures",
    "clip_features",
    "register_feature_extractor",
    "build_feature_extractor",
    "feature_extractor_names",
]


class FeatureExtractor:
    """Base class: subclasses set `name` and `dim` and implement `extract`."""

    name: str = ""
    dim: int = 0

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        """{"features": float [N, dim]}, optionally "logits" [N, K] and "pred" (class, -1 = unreadable) [N]."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        if not torch.is_tensor(images) or images.ndim != 4:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"{self.name}: expected images [N, C, H, W] in [-1, 1], got {shape}")
        out = self.extract(images)
        return {k: v.detach().cpu() if k == "pred" else v.detach().float().cpu() for k, v in out.items()}


class InceptionFeatures(FeatureExtractor):
    """FID Inception pool3 features and IS logits; grey images are repeated to RGB (as pytorch-fid's loader does)."""

    name = "inception_v3_pool3"
    dim = 2048

    def __init__(self, weights: str | None = None, device: str | torch.device = "cpu",
                 model: torch.nn.Module | None = None) -> None:
        from .inception import load_fid_inception

        self.device = torch.device(device)
        # `model`: an already built FIDInceptionV3 (tests pass random weights; users pass None)
        self.model = model.to(self.device).eval() if model is not None else load_fid_inception(weights, self.device)

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise ValueError(f"inception features need 1- or 3-channel images; got {images.shape[1]} channels")
        pool, logits = self.model(images.to(self.device), with_logits=True)
        return {"features": pool, "logits": logits}


class FMNISTFeatures(FeatureExtractor):
    """The shipped Fashion-MNIST classifier. Images must be grey 28x28, or 32x32 made from 28x28 by
    `input_mode`: "pad" (2-pixel border, cropped back) or "resize" (resampled back bilinearly)."""

    name = "fmnist_classifier_fc1"
    dim = 128

    def __init__(self, weights: str | None = None, device: str | torch.device = "cpu",
                 input_mode: str | None = None) -> None:
        from .classifier import load_fmnist_classifier

        if input_mode not in (None, "pad", "resize"):
            raise ValueError(f"input_mode must be 'pad' or 'resize' (how 28x28 images were enlarged); "
                             f"got {input_mode!r}")
        self.device = torch.device(device)
        self.input_mode = input_mode
        self.model = load_fmnist_classifier(weights, self.device)

    def _to_28(self, images: Tensor) -> Tensor:
        if images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)  # the data pipeline repeats grey to RGB
        if images.shape[1] != 1:
            raise ValueError(f"the Fashion-MNIST classifier needs 1- or 3-channel images; got {images.shape[1]}")
        size = images.shape[-1]
        if size == 28 and images.shape[-2] == 28:
            return images
        if self.input_mode is None:
            raise ValueError(f"the Fashion-MNIST classifier takes 28x28 images; got {tuple(images.shape[-2:])}: "
                             "say how they were enlarged with --fmnist-input pad|resize")
        if self.input_mode == "pad":
            lo = (size - 28) // 2
            return images[..., lo:lo + 28, lo:lo + 28]
        return F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        h = self.model.features(self._to_28(images.to(self.device)))
        return {"features": h, "logits": self.model.fc2(h)}


class ShapesFeatures(FeatureExtractor):
    """Attribute histogram of the shapes reader (see the module docstring for the layout)."""

    name = "shapes_attributes_v1"

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from versadiff.data.shapes import COLORS, POSITIONS, SHAPES, SIZES

        self.num_classes = len(COLORS) * len(SHAPES)
        self.sizes, self.positions = list(SIZES), list(POSITIONS)
        self.dim = self.num_classes + len(SIZES) + len(POSITIONS) + 2 + 2

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        from versadiff.data.attributes import read_attributes

        nc, ns, npos = self.num_classes, len(self.sizes), len(self.positions)
        feats = torch.zeros(len(images), self.dim, dtype=torch.float64)
        pred = torch.full((len(images),), -1, dtype=torch.long)
        for i, a in enumerate(read_attributes(images)):
            for s in a["shapes"]:
                if s["label"] >= 0:
                    feats[i, s["label"]] += 1
                    feats[i, nc + self.sizes.index(s["size"])] += 1
                else:
                    feats[i, nc + ns + npos + 2] += 1  # unreadable shape
                feats[i, nc + ns + self.positions.index(s["position"])] += 1
            if a["num_shapes"] in (1, 2):
                feats[i, nc + ns + npos + a["num_shapes"] - 1] = 1
            else:
                feats[i, nc + ns + npos + 3] = 1  # no shape, or more than two
            pred[i] = a["label"]
        return {"features": feats, "pred": pred}


# OpenAI CLIP's preprocessing constants, used when the model folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPFeatures(FeatureExtractor):
    """Unit-norm CLIP image embeddings (and, via `text_features`, text embeddings) from a local model folder
    saved by transformers (`save_pretrained`: config.json, weights, tokenizer files)."""

    def __init__(self, model_dir: str | None = None, device: str | torch.device = "cpu") -> None:
        import json
        from pathlib import Path

        from transformers import AutoTokenizer, CLIPModel

        if model_dir is None or not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"CLIP score needs a local CLIP model folder (config.json, weights, tokenizer "
                                    f"files, as saved by transformers); got {model_dir!r}: pass --clip DIR")
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(model_dir).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.name = f"clip_image_embeds:{Path(model_dir).resolve().name}"
        self.dim = self.model.config.projection_dim
        pre = Path(model_dir) / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.mean = torch.tensor(cfg.get("image_mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", CLIP_STD)).view(1, 3, 1, 1)
        self.size = self.model.config.vision_config.image_size

    @staticmethod
    def _pooled(out: Any) -> Tensor:
        # transformers >= 5 returns a model output whose pooler_output holds the projected embedding
        return out if torch.is_tensor(out) else out.pooler_output

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # CLIP preprocessing: bicubic resize of the shorter side, centre crop, normalise
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
                          mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        x = ((x - self.mean) / self.std).to(self.device)
        emb = self._pooled(self.model.get_image_features(pixel_values=x))
        return {"features": F.normalize(emb, dim=-1)}

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> Tensor:
        """Unit-norm text embeddings [N, D] (prompts truncated to the model's context length)."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        emb = self._pooled(self.model.get_text_features(input_ids=tok["input_ids"],
                                                        attention_mask=tok["attention_mask"]))
        return F.normalize(emb, dim=-1).float().cpu()


class ClipPairFeatures(FeatureExtractor):
    """Unit-norm CLIP embeddings of a versadiff ClipPair folder (clip_pair.json + a CLIPModel, as
    `ClipPair.save_pretrained` writes), with the pair's own tokenizer and image preprocessing."""

    def __init__(self, model_dir: str, device: str | torch.device = "cpu") -> None:
        from pathlib import Path

        from versadiff.encoders.clip import ClipPair

        self.device = torch.device(device)
        self.pair = ClipPair.load_pretrained(model_dir).to(self.device).eval()
        self.name = f"clip_pair_image_embeds:{Path(model_dir).resolve().name}"
        self.dim = int(self.pair.config.projection_dim)

    def extract(self, images: Tensor) -> dict[str, Tensor]:
        if images.shape[1] not in (1, 3):
            raise ValueError(f"CLIP features need 1- or 3-channel images; got {images.shape[1]} channels")
        return {"features": self.pair.image_features(images.float().to(self.device))}

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> Tensor:
        """Unit-norm text embeddings [N, D] (prompts truncated to the pair's context length)."""
        return self.pair.text_features(list(prompts)).float().cpu()


def clip_features(model_dir: str | None = None, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The "clip" extractor of a local folder (`asset:` paths allowed): ClipPairFeatures where the folder holds
    clip_pair.json, else CLIPFeatures (a transformers CLIPModel folder)."""
    from pathlib import Path

    if model_dir is not None:
        from versadiff.assets import resolve_path

        model_dir = str(resolve_path(model_dir))
        if (Path(model_dir) / "clip_pair.json").is_file():
            return ClipPairFeatures(model_dir, device=device)
    return CLIPFeatures(model_dir, device=device)


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {
    "clip": clip_features,
    "inception": InceptionFeatures,
    "fmnist": FMNISTFeatures,
    "shapes": ShapesFeatures,
}


def register_feature_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Make `build_feature_extractor(name, **options)` call `factory(**options)`."""
    if name in _REGISTRY:
        raise ValueError(f"a feature extractor named {name!r} is already registered; pick another name")
    _REGISTRY[name] = factory


def feature_extractor_names() -> list[str]:
    return sorted(_REGISTRY)


def build_feature_extractor(name: str, **options: Any) -> FeatureExtractor:
    """A registered extractor by name; options go to its constructor (weights=, device=, ...)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(feature_extractor_names())}")
    return _REGISTRY[name](**options)
