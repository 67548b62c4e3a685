"""ImageNet-style class folders (`train/n01440764/*.JPEG`) labelled by a class-index file.

Unlike `ImageFolderDataset` (labels = sorted folder names), the index file fixes each folder's
label and human-readable name, so a subset of the folders keeps the official label numbers.
Two index formats are read, chosen by extension:
  .json  {"0": ["n01440764", "tench"], "1": [...], ...}   (the widely used imagenet_class_index.json)
  .txt   one "n01440764 tench, Tinca tinca" per line; the line number is the label (LOC_synset_mapping.txt)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .folder import list_images
from .imagelist import ImageListDataset

__all__ = ["read_class_index", "class_index_dataset"]


def read_class_index(path: str | Path) -> tuple[list[str], list[str]]:
    """(folder ids, class names) in label order from a .json or .txt class-index file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class-index file {str(path)!r} does not exist")
    if path.suffix.lower() == ".json":
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or sorted(int(k) for k in raw) != list(range(len(raw))):
            raise ValueError(f"{str(path)!r} should map the labels '0'..'N-1' to [folder_id, name] pairs")
        pairs = [raw[str(i)] for i in range(len(raw))]
        if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(f"{str(path)!r} should map each label to a [folder_id, name] pair")
        ids, names = [str(p[0]) for p in pairs], [str(p[1]) for p in pairs]
    elif path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        ids = [ln.split(maxsplit=1)[0] for ln in lines]
        names = [ln.split(maxsplit=1)[1] if " " in ln else ln for ln in lines]
    else:
        raise ValueError(f"class-index file {str(path)!r} must end in .json or .txt")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{str(path)!r} lists a folder id twice; each class needs its own folder")
    return ids, names


def class_index_dataset(
    root: str | Path,
    class_index: str | Path,
    resolution: int,
    transform: dict[str, Any] | None = None,
    channels: int = 3,
    seed: int = 0,
) -> ImageListDataset:
    """Items {"image", "label"} from class sub-folders of `root` named by the index file's folder ids.

    Every sub-folder with images must appear in the index; classes of the index without a folder
    are allowed (a subset) and keep their label numbers.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    ids, names = read_class_index(class_index)
    label_of = {fid: i for i, fid in enumerate(ids)}
    files = [p for p in list_images(root) if p.parent != root]
    if not files:
        raise FileNotFoundError(f"no class sub-folders with images under {str(root)!r}")
    folders = sorted({p.relative_to(root).parts[0] for p in files})
    unknown = [f for f in folders if f not in label_of]
    if unknown:
        raise ValueError(f"folders {unknown[:5]} of {str(root)!r} are not in the class index {str(class_index)!r}")
    labels = [label_of[p.relative_to(root).parts[0]] for p in files]
    return ImageListDataset(files, resolution, transform, channels, labels=labels, class_names=names, seed=seed)
