"""Image-caption pairs: MS-COCO captions, CUB-200 with its text descriptions, and a folder of image + .txt.

Every image may have several captions; `ImageListDataset` picks one per epoch from the item seed.
  COCO:   captions_<split>.json ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})
          next to an image folder (e.g. train2014/ or train2017/).
  CUB:    images/<class>/<name>.jpg with text/<class>/<name>.txt, ten descriptions per file, one per
          line (the layout of Reed et al.'s CUB text data); labels are the 200 class folders.
  folder: any x.png / x.jpg with a sibling x.txt holding one caption per non-empty line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .folder import list_images
from .imagelist import ImageListDataset

__all__ = ["read_caption_lines", "coco_captions_dataset", "cub_captions_dataset", "caption_folder_dataset"]


def read_caption_lines(path: Path) -> list[str]:
    """The non-empty, stripped lines of a caption file."""
    if not path.is_file():
        raise FileNotFoundError(f"caption file {str(path)!r} is missing; every image needs one")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def coco_captions_dataset(
    annotations: str | Path,
    images: str | Path,
    resolution: int,
    transform: dict[str, Any] | None = None,
    seed: int = 0,
) -> ImageListDataset:
    """COCO items {"image", "caption"}; images the JSON lists without any caption are left out
    (their count is kept in `dataset.uncaptioned`)."""
    annotations, images = Path(annotations).expanduser(), Path(images).expanduser()
    if not annotations.is_file():
        raise FileNotFoundError(f"COCO captions file {str(annotations)!r} does not exist (e.g. captions_train2017.json)")
    if not images.is_dir():
        raise FileNotFoundError(f"COCO image folder {str(images)!r} does not exist (e.g. train2017/)")
    raw = json.loads(annotations.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or "images" not in raw or "annotations" not in raw:
        raise ValueError(f"{str(annotations)!r} is not a COCO captions file: it needs 'images' and 'annotations'")
    by_image: dict[int, list[str]] = {}
    for ann in raw["annotations"]:
        if "caption" not in ann:
            raise ValueError(f"{str(annotations)!r} holds annotations without 'caption'; use the captions_*.json file")
        by_image.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
    entries = sorted(raw["images"], key=lambda im: int(im["id"]))
    kept = [im for im in entries if by_image.get(int(im["id"]))]
    if not kept:
        raise ValueError(f"no image in {str(annotations)!r} has a caption")
    files = [images / im["file_name"] for im in kept]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} COCO images are missing, e.g. {str(missing[0])!r}; check the image folder")
    ds = ImageListDataset(files, resolution, transform, 3, captions=[by_image[int(im["id"])] for im in kept], seed=seed)
    ds.uncaptioned = len(entries) - len(kept)
    return ds


def _class_name(folder: str) -> str:
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    head, _, tail = folder.partition(".")
    return tail if head.isdigit() and tail else folder


def cub_captions_dataset(
    root: str | Path,
    resolution: int,
    transform: dict[str, Any] | None = None,
    images: str = "images",
    text: str = "text",
    seed: int = 0,
) -> ImageListDataset:
    """CUB-200 items {"image", "label", "caption"} from root/images and root/text."""
    root = Path(root).expanduser()
    img_root, txt_root = root / images, root / text
    for folder in (img_root, txt_root):
        if not folder.is_dir():
            raise FileNotFoundError(f"CUB folder {str(folder)!r} does not exist; root needs {images}/ and {text}/")
    files = [p for p in list_images(img_root) if p.parent != img_root]
    if not files:
        raise FileNotFoundError(f"no class sub-folders with images under {str(img_root)!r}")
    folders = sorted({p.relative_to(img_root).parts[0] for p in files})
    label_of = {f: i for i, f in enumerate(folders)}
    captions = [read_caption_lines(txt_root / p.relative_to(img_root).with_suffix(".txt")) for p in files]
    labels = [label_of[p.relative_to(img_root).parts[0]] for p in files]
    return ImageListDataset(files, resolution, transform, 3, labels=labels,
                            class_names=[_class_name(f) for f in folders], captions=captions, seed=seed)


def caption_folder_dataset(
    root: str | Path,
    resolution: int,
    transform: dict[str, Any] | None = None,
    channels: int = 3,
    seed: int = 0,
) -> ImageListDataset:
    """Items {"image", "caption"} from every image under `root` (recursive) and its sibling .txt."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"caption folder {str(root)!r} does not exist or is not a directory")
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"no images found under {str(root)!r}")
    captions = [read_caption_lines(p.with_suffix(".txt")) for p in files]
    return ImageListDataset(files, resolution, transform, channels, captions=captions, seed=seed)
