"""Models that ship inside the package, by name: `load_model("shapes-unet")`, `versadiff sample shapes-unet ...`.

A path in a config or on the command line may also name a shipped file or folder as `asset:RELATIVE/PATH`
(resolved under versadiff/assets/), which is how the shipped presets refer to the shipped miniatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSET_DIR", "ShippedModel", "SHIPPED_MODELS", "resolve_path"]

ASSET_DIR = Path(__file__).resolve().parent / "assets"
ASSET_PREFIX = "asset:"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    path: str  # relative to ASSET_DIR
    description: str


SHIPPED_MODELS: dict[str, ShippedModel] = {m.name: m for m in (
    ShippedModel("shapes-unet", "demo_shapes_unet.safetensors",
                 "class-conditional shapes 32x32, tiny UNet (the class-conditional demo)"),
    ShippedModel("vd-shapes", "vd_shapes/vd.safetensors",
                 "Versatile Diffusion miniature: text->image, image variation, image->text, text variation on shapes"),
)}


def resolve_path(path: str | Path) -> Path:
    """A user's path, `asset:REL` (a shipped file) or a shipped model's name, as a filesystem path.

    An existing file or folder of that name wins over a shipped model's name, so nothing a user has is shadowed.
    """
    text = str(path)
    if text.startswith(ASSET_PREFIX):
        p = ASSET_DIR / text[len(ASSET_PREFIX):]
        if not p.exists():
            raise FileNotFoundError(f"{text}: no such shipped asset (looked in {ASSET_DIR})")
        return p
    p = Path(text)
    if not p.exists() and text in SHIPPED_MODELS:
        return ASSET_DIR / SHIPPED_MODELS[text].path
    return p
