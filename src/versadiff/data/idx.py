"""IDX files (the MNIST / Fashion-MNIST container) and a dataset over them.

IDX layout (LeCun's MNIST page): two zero bytes, one dtype byte, one byte = number of dims,
then each dim as a big-endian uint32, then the data in big-endian C order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .transforms import check_index, item_seed

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "FASHION_MNIST_APT_DIR",
    "read_idx",
    "write_idx",
    "find_fashion_mnist",
    "require_fashion_mnist",
    "find_idx_pair",
    "MNISTDataset",
]

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]
# Where Debian's `dataset-fashion-mnist` package installs the four .gz files.
FASHION_MNIST_APT_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} does not exist")
    raw = path.read_bytes()
    # Decide on the gzip magic, not the file name: renamed files are common.
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{str(path)!r} looks gzip-compressed but cannot be decompressed ({e}); re-download it") from e
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        magic = data[:4].hex() or "(empty)"
        raise ValueError(f"{str(path)!r} is not an IDX file: bad magic {magic} (expected 0000<dtype><ndim>)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        valid = [hex(c) for c in _IDX_DTYPES]
        raise ValueError(f"{str(path)!r} has unknown IDX dtype code 0x{code:02x}; valid codes are {valid}")
    if ndim == 0:
        raise ValueError(f"{str(path)!r} declares 0 dimensions; an IDX file needs at least one")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{str(path)!r} is truncated inside its IDX header ({len(data)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{str(path)!r} holds {len(data) - header} data bytes but its header {shape} needs {expected}; the file is damaged"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzip-compressed when the name ends in .gz."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    a = np.asarray(array)
    if a.dtype not in codes:
        raise ValueError(f"IDX cannot store dtype {a.dtype}; use one of {[str(d) for d in codes]}")
    code = codes[a.dtype]
    body = bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes() + a.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(body, mtime=0) if path.suffix == ".gz" else body)


def find_idx_pair(root: str | Path, split: str) -> tuple[Path, Path]:
    """(images, labels) files of `split` ("train" or "test") in an MNIST-style folder."""
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {list(_SPLIT_PREFIX)}, got {split!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder {str(root)!r} does not exist or is not a directory")
    prefix = _SPLIT_PREFIX[split]
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        # Both spellings occur in the wild: train-images-idx3-ubyte and train-images.idx3-ubyte.
        names = [f"{prefix}-{kind}{sep}idx{dims}-ubyte{gz}" for sep in ("-", ".") for gz in ("", ".gz")]
        hits = [root / n for n in names if (root / n).is_file()]
        if not hits:
            raise FileNotFoundError(f"no {split} {kind} file in {str(root)!r}; expected one of {names}")
        found.append(hits[0])
    return found[0], found[1]


def find_fashion_mnist() -> Path | None:
    """Folder holding the Fashion-MNIST IDX files: $VERSADIFF_DATA (itself, or its fashion-mnist /
    fashion_mnist sub-folder), then Debian's package location; None when none is found."""
    candidates = []
    env = os.environ.get("VERSADIFF_DATA")
    if env:
        base = Path(env).expanduser()
        candidates += [base, base / "fashion-mnist", base / "fashion_mnist"]
    candidates.append(FASHION_MNIST_APT_DIR)
    for folder in candidates:
        try:
            find_idx_pair(folder, "train")
        except FileNotFoundError:
            continue
        return folder
    return None


def require_fashion_mnist() -> Path:
    """Like `find_fashion_mnist`, but raise a one-line error telling how to install it."""
    folder = find_fashion_mnist()
    if folder is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found in $VERSADIFF_DATA or /usr/share/datasets/fashion-mnist; "
            "install it with `sudo apt-get install dataset-fashion-mnist` or set root to a folder with the IDX files"
        )
    return folder


class MNISTDataset(Dataset):
    """MNIST-format digits or Fashion-MNIST, items {"image": [C,H,W] in [-1,1], "label": int}.

    root_or_files: a folder with the standard file names, or an (images, labels) pair of paths.
    resolution: None keeps 28x28; a larger size with resize="pad" pads with background (black)
        symmetrically (28 -> 32 adds 2 pixels each side); resize="resize" resamples bilinearly.
    channels: 1, or 3 to repeat the grey channel for RGB models.
    hflip: flip probability (sensible for Fashion-MNIST, not for digits); seeded per item.
    """

    def __init__(
        self,
        root_or_files: str | Path | tuple[str | Path, str | Path],
        split: str = "train",
        resolution: int | None = None,
        resize: str = "pad",
        channels: int = 1,
        class_names: list[str] | None = None,
        hflip: float = 0.0,
        seed: int = 0,
    ) -> None:
        if isinstance(root_or_files, (tuple, list)):
            if len(root_or_files) != 2:
                raise ValueError(f"root_or_files must be a folder or an (images, labels) pair, got {len(root_or_files)} paths")
            img_path, lbl_path = (Path(p) for p in root_or_files)
        else:
            img_path, lbl_path = find_idx_pair(root_or_files, split)
        if resize not in ("pad", "resize"):
            raise ValueError(f"resize must be 'pad' or 'resize', got {resize!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{str(img_path)!r} should hold uint8 images [N,H,W], got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{str(lbl_path)!r} holds labels of shape {labels.shape} for {len(images)} images; pair the right files"
            )
        size = images.shape[1]
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"{str(img_path)!r} holds non-square {images.shape[1]}x{images.shape[2]} images")
        if resolution is not None and resolution < size and resize == "pad":
            raise ValueError(
                f"cannot pad {size}x{size} images down to {resolution}; use resize='resize' or a resolution >= {size}"
            )
        self.images = images
        self.labels = labels.astype(np.int64)
        self.resolution = size if resolution is None else int(resolution)
        self.resize = resize
        self.channels = channels
        self.hflip = float(hflip)
        self.seed = int(seed)
        self.epoch = 0
        if class_names is None:
            top = int(self.labels.max(initial=0))
            class_names = MNIST_CLASSES if top < 10 else [str(i) for i in range(top + 1)]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            span = f"{self.labels.min()}..{self.labels.max()}"
            raise ValueError(f"labels span {span} but there are {self.num_classes} class names; pass matching class_names")

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self))
        x = torch.from_numpy(self.images[index].copy()).float().div_(127.5).sub_(1.0)[None]  # [1,H,W]
        size = x.shape[-1]
        if self.resolution != size:
            if self.resize == "pad":
                lo = (self.resolution - size) // 2
                hi = self.resolution - size - lo
                x = F.pad(x, (lo, hi, lo, hi), value=-1.0)
            else:
                x = F.interpolate(x[None], size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.hflip > 0:
            rng = np.random.default_rng(item_seed(self.seed, self.epoch, index, len(self)))
            if rng.random() < self.hflip:
                x = x.flip(-1)
        if self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        return {"image": x, "label": int(self.labels[index])}
