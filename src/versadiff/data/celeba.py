"""CelebA aligned faces with their 40 binary attributes as conditioning tags.

Files (Liu et al., "Deep Learning Face Attributes in the Wild"): `img_align_celeba/000001.jpg ...`
(178x218), `list_attr_celeba.txt` (line 1: image count, line 2: the 40 attribute names, then
"000001.jpg -1 1 ..." per image) and, for splits, `list_eval_partition.txt` ("000001.jpg 0";
0 train, 1 valid, 2 test).

Tags are kept raw (0/1): VDPM divides the attribute embedding by sqrt(#active) inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .imagelist import ImageListDataset

__all__ = ["CELEBA_CROP", "read_celeba_attributes", "celeba_dataset", "write_celeba_attributes"]

#: (top, left, height, width): the 148x148 face crop at row 40, column 15 used by many CelebA-64 models.
CELEBA_CROP = (40, 15, 148, 148)
_SPLITS = {"train": 0, "valid": 1, "test": 2}


def read_celeba_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, file names, 0/1 uint8 matrix [N, K]) from a list_attr_celeba.txt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CelebA attribute file {str(path)!r} does not exist; it ships as list_attr_celeba.txt")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ValueError(f"{str(path)!r} is not a CelebA attribute file: line 1 should be the image count")
    names = lines[1].split()
    count = int(lines[0])
    if count != len(lines) - 2:
        raise ValueError(f"{str(path)!r} announces {count} images but lists {len(lines) - 2}; the file is truncated")
    files, rows = [], []
    for i, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
            raise ValueError(f"{str(path)!r} line {i}: expected a file name and {len(names)} values of 1/-1")
        files.append(parts[0])
        rows.append([v == "1" for v in parts[1:]])
    return names, files, np.asarray(rows, dtype=np.uint8).reshape(len(files), len(names))


def write_celeba_attributes(path: str | Path, names: Sequence[str], files: Sequence[str], values: np.ndarray) -> None:
    """Write a list_attr_celeba.txt (values 0/1 or -1/1, [N, K]) in the official layout."""
    v = np.where(np.asarray(values) > 0, 1, -1)
    lines = [str(len(files)), " ".join(names)] + [f"{f} " + " ".join(f"{x:2d}" for x in row) for f, row in zip(files, v)]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _partition(root: Path, split: str) -> set[str] | None:
    if split == "all":
        return None
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS) + ['all']}, got {split!r}")
    path = root / "list_eval_partition.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split {split!r} needs {str(path)!r}; add it or use split='all'")
    keep = set()
    for line in path.read_text(encoding="utf-8").split("\n"):
        parts = line.split()
        if len(parts) == 2 and parts[1] == str(_SPLITS[split]):
            keep.add(parts[0])
    return keep


def celeba_dataset(
    root: str | Path,
    resolution: int = 64,
    split: str = "train",
    crop: str = "celeba148",
    attributes: Sequence[str] | None = None,
    label_attributes: Sequence[str] | None = None,
    hflip: float = 0.0,
    images: str = "img_align_celeba",
    seed: int = 0,
) -> ImageListDataset:
    """CelebA items {"image", "tags": FloatTensor[K] of 0/1, "label"?: int}.

    crop: "celeba148" cuts CELEBA_CROP then resizes to `resolution`; "center" resizes the shorter
        side and crops the centre square.
    attributes: the tag names to keep, in this order (default: all 40 in file order).
    label_attributes: mutually exclusive attributes used as classes (e.g. the hair colours
        Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair); the label is the index of the single active
        one, or -1 (the null class) when none or several are active.
    """
    root = Path(root).expanduser()
    if crop not in ("celeba148", "center"):
        raise ValueError(f"crop must be 'celeba148' or 'center', got {crop!r}")
    names, files, values = read_celeba_attributes(root / "list_attr_celeba.txt")
    index = {n: i for i, n in enumerate(names)}
    for group, chosen in (("attributes", attributes), ("label_attributes", label_attributes)):
        unknown = [a for a in (chosen or []) if a not in index]
        if unknown:
            raise ValueError(f"unknown CelebA {group} {unknown}; valid names are {names}")
    keep = _partition(root, split)
    rows = [i for i, f in enumerate(files) if keep is None or f in keep]
    if not rows:
        raise ValueError(f"CelebA split {split!r} in {str(root)!r} is empty; check list_eval_partition.txt")
    folder = root / images
    paths = [folder / files[i] for i in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} CelebA images are missing, e.g. {str(missing[0])!r}; extract {images}")
    tag_names = list(attributes) if attributes else names
    tags = values[rows][:, [index[a] for a in tag_names]]
    labels = None
    if label_attributes:
        sub = values[rows][:, [index[a] for a in label_attributes]]
        labels = np.where(sub.sum(1) == 1, sub.argmax(1), -1).tolist()
    transform: dict[str, Any] = {"hflip": hflip}
    return ImageListDataset(
        paths, resolution, transform, 3, labels=labels, class_names=list(label_attributes or []),
        tags=tags, tag_names=tag_names, precrop=CELEBA_CROP if crop == "celeba148" else None, seed=seed,
    )
