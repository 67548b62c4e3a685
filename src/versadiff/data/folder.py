"""A dataset over a folder of image files: flat, or one sub-folder per class.

A file that cannot be decoded (or is too small for the crop) never stops training: its item is replaced
by a seeded replacement item and counted in `dataset.stats` (see skips.py for why and how).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from .skips import SkipUnreadable
from .transforms import build_transform, item_seed

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "list_images", "split_classes"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLASS_MODES = ("auto", "folders", "none")


def list_images(folder: Path) -> list[Path]:
    """All image files under `folder` (recursive, case-insensitive extensions), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def split_classes(root: Path, files: list[Path], classes: str = "auto") -> tuple[list[Path], list[str], list[int] | None]:
    """(files, class names, labels or None) of the images `files` under `root` for a `classes` mode (see
    ImageFolderDataset): "folders" labels by top-level sub-folder (sorted names), "none" gives no labels."""
    if classes not in CLASS_MODES:
        raise ValueError(f"classes must be one of {list(CLASS_MODES)}, got {classes!r}")
    loose = [p for p in files if p.parent == root]
    if classes == "auto":
        if loose and len(loose) < len(files):
            raise ValueError(
                f"{str(root)!r} holds both loose images and class sub-folders; "
                "pass classes='folders' (loose images are then ignored) or classes='none'"
            )
        classes = "none" if loose else "folders"
    if classes == "none":
        return files, [], None
    files = [p for p in files if p.parent != root]
    if not files:
        raise FileNotFoundError(f"no class sub-folders with images under {str(root)!r}; use classes='none' for a flat folder")
    names = sorted({p.relative_to(root).parts[0] for p in files})
    index = {name: i for i, name in enumerate(names)}
    return files, names, [index[p.relative_to(root).parts[0]] for p in files]


class ImageFolderDataset(SkipUnreadable, Dataset):
    """Images under `root`, each item {"image": [C,H,W] in [-1,1], "label": int?, "caption": str?}.

    classes: "folders" = each top-level sub-folder is a class (sorted names -> indices 0..K-1,
        searched recursively); "none" = no labels, all images under root; "auto" = "folders"
        when root holds sub-folders with images and no loose images, "none" when it holds only
        loose images (a mix of both is ambiguous and raises).
    transform: config dict for `build_transform` (crop, hflip, resize, interpolation, ...).
    captions: read the caption of `x.png` from a sibling `x.txt` (each image must have one).
    seed: base seed of the random augmentations; call `set_epoch` each epoch.
    Unreadable files: replaced by a seeded replacement item, counted in `stats` ({"samples", "corrupt",
    "unusable"}), listed in `bad_files`; when no file tried at construction is usable,
    `DataExhaustedError` (a one-line ValueError).
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        transform: dict[str, Any] | None = None,
        classes: str = "auto",
        channels: int = 3,
        captions: bool = False,
        seed: int = 0,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory; check the dataset root")
        if classes not in CLASS_MODES:
            raise ValueError(f"classes must be one of {list(CLASS_MODES)}, got {classes!r}")
        self.root = root
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.transform = build_transform(transform, self.resolution, self.channels)
        self.seed = int(seed)
        self.epoch = 0

        files = list_images(root)
        if not files:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise FileNotFoundError(f"no images found under {str(root)!r} (searched recursively for {exts})")
        self.files, self.class_names, self.labels = split_classes(root, files, classes)
        self.num_classes = len(self.class_names)
        files = self.files

        self.captions: list[str] | None = None
        if captions:
            missing = [p for p in files if not p.with_suffix(".txt").is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} images lack a caption file, e.g. {str(missing[0].with_suffix('.txt'))!r}; "
                    "add them or set captions: false"
                )
            self.captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in files]
        self._init_skips()

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        with Image.open(path) as img:
            img.load()
            seed = item_seed(self.seed, self.epoch, index, len(self)) if self.transform.is_random else None
            item: dict[str, Any] = {"image": self._transform_stage(lambda: self.transform(img, seed))}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            item["caption"] = self.captions[index]
        return item
