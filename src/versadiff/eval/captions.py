"""Caption sets for evaluating text<->image flows, in COCO-captions JSON format:

    {"images": [{"id": 0, "file_name": "000000.png"}, ...],
     "annotations": [{"image_id": 0, "caption": "a red circle"}, ...]}

An image may have several captions (COCO: 5 to 7). `load_caption_set(path)` reads a JSON file (image files resolved
under `images=`, default: the JSON's folder -- for COCO pass the image folder, e.g. val2014/) or a folder holding
captions.json (or exactly one .json). Images keep the JSON's order, captions the annotations' order; images the
JSON lists without any caption are left out (counted in `uncaptioned`). Every listed image file must exist.

`write_shapes_caption_set(out, n)` exports n held-out shapes items (ShapesDataset seed 1, one shape per image; the
presets train on seed 0) as such a folder: out/captions.json plus out/000000.png, ... Each image's captions are its
own dataset caption first, then every other one-shape template the dataset writes of it (six in all), so image ->
text metrics score a caption against all the true phrasings. CLI: `versadiff eval --write-caption-set shapes -n N
-o DIR`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .evaluate import ImageSource, _uint8_to_tensor

__all__ = ["CaptionSet", "CaptionImageSource", "load_caption_set", "write_shapes_caption_set", "CAPTION_SETS",
           "write_caption_set"]


@dataclass
class CaptionSet:
    """The images of a COCO-captions set with all their captions."""

    json_path: Path
    image_root: Path
    ids: list[Any]
    files: list[Path]
    captions: list[list[str]]
    uncaptioned: int = 0

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)

    def prompt(self, i: int) -> str:
        """Prompt of sample i: caption (i // M) mod K of image i mod M (M images; K its captions), so the first M
        samples use each image's first caption and larger n walks through the other captions."""
        caps = self.captions[i % len(self.files)]
        return caps[(i // len(self.files)) % len(caps)]

    def image_index(self, i: int) -> int:
        """The image sample i is made from (image -> text) or for (text -> image): i mod M."""
        return i % len(self.files)

    def description(self) -> dict[str, Any]:
        return {"kind": "caption-set", "json": str(self.json_path.resolve()), "images": len(self.files),
                "image_root": str(self.image_root.resolve()), "captions": self.num_captions,
                "uncaptioned": self.uncaptioned}


def _find_json(folder: Path) -> Path:
    default = folder / "captions.json"
    if default.is_file():
        return default
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        raise FileNotFoundError(f"caption set {folder} holds {len(found)} .json files and no captions.json; "
                                "pass the COCO-captions JSON file itself")
    return found[0]


def _entries(data: Any, key: str, fields: tuple[str, ...], path: Path) -> list[dict[str, Any]]:
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path} is not a COCO-captions file: it needs an {key!r} list "
                         '({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})')
    for j, item in enumerate(items):
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise ValueError(f"{path}: {key}[{j}] lacks {', '.join(repr(f) for f in missing)}")
    return items


def load_caption_set(path: str | Path, images: str | Path | None = None) -> CaptionSet:
    """A caption set from a COCO-captions JSON file or a folder holding one (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"caption set {p} does not exist; give a COCO-captions JSON file or its folder "
                                "(write the shapes one with versadiff eval --write-caption-set shapes -o DIR)")
    json_path = _find_json(p) if p.is_dir() else p
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_path} is not valid JSON ({str(e).splitlines()[0]}); give a COCO-captions file") from e
    entries = _entries(data, "images", ("id", "file_name"), json_path)
    annotations = _entries(data, "annotations", ("image_id", "caption"), json_path)
    root = Path(images).expanduser() if images is not None else json_path.parent
    if not root.is_dir():
        raise FileNotFoundError(f"caption image folder {root} does not exist")
    order: dict[Any, int] = {}
    for e in entries:
        if e["id"] in order:
            raise ValueError(f"{json_path}: image id {e['id']!r} is listed twice")
        order[e["id"]] = len(order)
    caps: list[list[str]] = [[] for _ in entries]
    for j, a in enumerate(annotations):
        if a["image_id"] not in order:
            raise ValueError(f"{json_path}: annotations[{j}] names image_id {a['image_id']!r}, which 'images' lacks")
        text = " ".join(str(a["caption"]).split())
        if not text:
            raise ValueError(f"{json_path}: annotations[{j}] has an empty caption")
        caps[order[a["image_id"]]].append(text)
    keep = [k for k, c in enumerate(caps) if c]
    if not keep:
        raise ValueError(f"{json_path} has no captioned images")
    files = [root / str(entries[k]["file_name"]) for k in keep]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(files)} images {json_path} lists are missing, e.g. "
                                f"{missing[0]}; pass the image folder with --caption-images DIR")
    return CaptionSet(json_path, root, [entries[k]["id"] for k in keep], files, [caps[k] for k in keep],
                      uncaptioned=len(entries) - len(keep))


class CaptionImageSource(ImageSource):
    """The images of a caption set (the reference of text -> image metrics, the inputs of image -> text), in set
    order; optionally the first n, and with `resolution` each resized (shorter side, bicubic) and centre-cropped to
    resolution x resolution (images already that size are untouched)."""

    def __init__(self, captions: CaptionSet, n: int | None = None, resolution: int | None = None) -> None:
        self.captions = captions
        self.n = len(captions) if n is None else min(int(n), len(captions))
        self.resolution = resolution
        self.description = {**captions.description(), "n": self.n, "resolution": resolution}

    def __len__(self) -> int:
        return self.n

    def _array(self, i: int) -> np.ndarray:
        from versadiff.data import load_image
        from versadiff.data.transforms import center_crop, resize_shorter

        im = load_image(self.captions.files[i]).convert("RGB")
        if self.resolution is not None and im.size != (self.resolution, self.resolution):
            im = center_crop(resize_shorter(im, self.resolution), self.resolution)
        return np.asarray(im)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        arrs = [self._array(i) for i in indices]
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ValueError(f"the images of {self.captions.json_path} differ in size {sorted(shapes)}; "
                             "resize them to one size first")
        return _uint8_to_tensor(np.stack(arrs)), None

    def images(self, indices: Sequence[int]) -> Tensor:
        """Images [len(indices), 3, H, W] in [-1, 1]."""
        return self.batch(indices)[0]


def shapes_captions(n: int, seed: int = 1) -> tuple[Tensor, list[list[str]]]:
    """Images [n, 3, 32, 32] and the captions of n single-shape shapes items: each item's own caption, then every
    other one-shape template filled with its attributes."""
    from versadiff.data.shapes import _ONE, POSITION_PHRASES, ShapesDataset

    ds = ShapesDataset(size=n, seed=seed)
    items = ds.__getitems__(list(range(n)))
    captions = []
    for i, item in enumerate(items):
        s = ds.describe(i)["shapes"][0]
        where = POSITION_PHRASES[s["position"]]
        phrasings = [item["caption"]]
        for fmt in _ONE:
            text = fmt.format(color=s["color"], shape=s["shape"], size=s["size"], where=where)
            if text not in phrasings:
                phrasings.append(text)
        captions.append(phrasings)
    return torch.stack([it["image"] for it in items]), captions


def write_shapes_caption_set(out: str | Path, n: int, seed: int = 1) -> Path:
    """Write n held-out shapes items as a COCO-captions folder (out/captions.json + PNGs); returns the JSON path."""
    from versadiff.images import to_pil
    from versadiff.outputs import prepare_output_dir

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    out = prepare_output_dir(out)
    images, captions = shapes_captions(n, seed)
    out.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for i, (img, caps) in enumerate(zip(to_pil(images), captions)):
        name = f"{i:06d}.png"
        img.save(out / name)
        entries.append({"id": i, "file_name": name, "width": img.width, "height": img.height})
        annotations += [{"id": len(annotations), "image_id": i, "caption": c} for c in caps]
    doc = {"info": {"description": f"versadiff held-out shapes: ShapesDataset(size={n}, seed={seed}), one shape per "
                                   "image; captions: the item's own, then every other one-shape template"},
           "images": entries, "annotations": annotations}
    path = out / "captions.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


#: caption sets `versadiff eval --write-caption-set NAME` writes
CAPTION_SETS = {"shapes": write_shapes_caption_set}


def write_caption_set(name: str, out: str | Path, n: int) -> Path:
    """Write the named caption set (see CAPTION_SETS) with n images to the new folder `out`."""
    if name not in CAPTION_SETS:
        raise ValueError(f"no caption set named {name!r}; choose from {', '.join(CAPTION_SETS)}")
    return CAPTION_SETS[name](out, n)
