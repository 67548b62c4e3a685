"""Bad data in the image readers: what counts as unreadable, how it is skipped, and the one error left.

Map-style readers (`ImageFolderDataset`, `ImageListDataset` and so the CelebA, class-index, COCO/CUB
and caption-folder readers) share `SkipUnreadable`. A DataLoader asks a map-style dataset for a fixed
list of indices, so an item cannot simply be left out; instead, when the file of index i cannot be
decoded (or its decoded image is unusable, e.g. smaller than a crop), the item of a *replacement*
index is returned: the first usable one among up to `_RANDOM_PROBES` indices drawn from a generator
seeded by (seed, epoch, i), then the following indices in order. Which files are usable is a property
of the files, so the replacement is the same in an interrupted and in a resumed run. Why not check
every file up front: a full decode of 1M files takes hours, and `Image.verify()` misses truncated
JPEGs; files are therefore checked lazily, when first read, and remembered (in shared memory, so every
DataLoader worker skips a known-bad file without decoding it again). Each bad file is logged once,
with its path, by the `versadiff.data.skips` logger; `dataset.stats` counts the replaced items by
reason ({"samples", "corrupt", "unusable"}, like `ShardDataset.stats`), `dataset.bad_files` lists them.

At construction a reader decodes one item (index 0, then up to `_CONSTRUCTION_PROBES` seeded picks
until one works), so a folder of only broken images is a one-line `DataExhaustedError` before
training starts, with counts by reason and the first error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from .transforms import check_index

__all__ = [
    "DataExhaustedError",
    "CorruptImageError",
    "DECODE_ERRORS",
    "MAP_STAT_KEYS",
    "SkipUnreadable",
    "check_epoch",
    "format_counts",
    "load_image",
]

log = logging.getLogger(__name__)

#: what PIL raises on broken, truncated or hostile files (UnidentifiedImageError is an OSError;
#: missing or unreadable files are OSErrors too).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: counters in a map-style reader's `stats`: items served, and items replaced because their file is
#: undecodable ("corrupt") or decodes to an image the transform rejects ("unusable", e.g. too small).
MAP_STAT_KEYS = ("samples", "corrupt", "unusable")
_ROWS = 257  # row 0: the main process; row 1 + k: DataLoader worker k
_RANDOM_PROBES = 8
_CONSTRUCTION_PROBES = 64


class DataExhaustedError(ValueError):
    """A dataset cannot give a single batch: every sample it tried was skipped. The message is one line
    with the counts by skip reason and what to change. A ValueError, so the CLI prints it as a user error."""

    def __init__(self, message: str, counts: Mapping[str, int] | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        self.counts = dict(counts or {})


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file (one line)."""

    def __init__(self, path: str | Path, error: BaseException) -> None:
        super().__init__(f"cannot read image {str(path)!r}: {_one_line(error)}")
        self.path = Path(path)
        self.error = error


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def format_counts(counts: Mapping[str, int], exclude: tuple[str, ...] = ("samples",)) -> str:
    """'corrupt=3, no_caption=2' for the non-zero counts, largest first; 'none' when all are zero."""
    items = sorted(((k, int(v)) for k, v in counts.items() if v and k not in exclude), key=lambda kv: -kv[1])
    return ", ".join(f"{k}={v}" for k, v in items) or "none"


def load_image(path: str | Path) -> Image.Image:
    """The fully decoded image at `path`; any decode failure becomes a `CorruptImageError` naming the file.
    For callers outside the datasets (e.g. an evaluation folder) that want to skip and count bad files."""
    try:
        with Image.open(path) as img:
            img.load()  # pixels stay in memory after the file is closed
            return img
    except DECODE_ERRORS as e:
        raise CorruptImageError(path, e) from e


def check_epoch(dataset: Any, batches: int, batch_size: int) -> None:
    """After one epoch's pass over `dataset` gave `batches` batches: raise `DataExhaustedError` when a
    full pass gave none (a streamed dataset whose samples were all skipped would otherwise loop forever).
    Datasets without a `check_epoch` method (map-style ones, whose length is checked up front) pass."""
    method = getattr(dataset, "check_epoch", None)
    if callable(method):
        method(batches, batch_size)


class UnusableImageError(Exception):
    """Internal: the image decoded but the transform rejected it (wraps the transform's error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SkipUnreadable:
    """Mixin for map-style image readers: `__getitem__` replaces an item whose file cannot be used (see the
    module docstring). A subclass sets `files`, `seed`, `epoch`, implements `_load(index)` (raising a
    DECODE_ERRORS error for a bad file; errors of the transform stage wrapped by `_transform_stage`), and
    calls `_init_skips()` at the end of its __init__."""

    files: list[Path]
    seed: int
    epoch: int

    def _init_skips(self) -> None:
        n = len(self.files)
        # 0 = not known bad, 1 = corrupt, 2 = unusable; shared so DataLoader workers learn from each other.
        self._bad = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._skip_stats = torch.zeros(_ROWS, len(MAP_STAT_KEYS), dtype=torch.int64).share_memory_()
        self._warned: set[int] = set()
        self._probe()

    def _load(self, index: int) -> dict[str, Any]:  # pragma: no cover - implemented by the readers
        raise NotImplementedError

    @staticmethod
    def _transform_stage(fn: Callable[[], Any]) -> Any:
        """Run the transform step `fn`; its DECODE_ERRORS (too small for the crop, ...) mark the image unusable."""
        try:
            return fn()
        except DECODE_ERRORS as e:
            raise UnusableImageError(e) from e

    # ---- counts -------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counts since creation, summed over DataLoader workers: items served, items replaced by reason."""
        return dict(zip(MAP_STAT_KEYS, (int(v) for v in self._skip_stats.sum(0))))

    @property
    def bad_files(self) -> list[Path]:
        """The files found unreadable or unusable so far (each replaced whenever it is asked for)."""
        return [self.files[i] for i in torch.nonzero(self._bad).reshape(-1).tolist()]

    @staticmethod
    def _row() -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (_ROWS - 1)

    # ---- loading --------------------------------------------------------------------------------
    def _try(self, index: int) -> tuple[dict[str, Any] | None, str, BaseException | None]:
        """(item, "", None) or (None, reason, error); a newly found bad file is remembered and logged once."""
        known = int(self._bad[index])
        if known:
            return None, MAP_STAT_KEYS[known], None
        try:
            return self._load(index), "", None
        except UnusableImageError as e:
            reason, error = "unusable", e.error
        except DECODE_ERRORS as e:
            reason, error = "corrupt", e
        self._bad[index] = MAP_STAT_KEYS.index(reason)
        if index not in self._warned:
            self._warned.add(index)
            log.warning("skipping %s image %s (%s); a replacement item is used", reason, self.files[index], _one_line(error))
        return None, reason, error

    def _candidates(self, index: int) -> Iterator[int]:
        """Replacement indices for `index`: seeded random picks, then every other index in order."""
        n = len(self.files)
        rng = np.random.default_rng([self.seed, self.epoch, index, 0x5EED])
        for j in rng.integers(0, n, size=min(_RANDOM_PROBES, n)).tolist():
            if j != index:
                yield int(j)
        for k in range(1, n):
            yield (index + k) % n

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self.files))
        row = self._row()
        item, reason, error = self._try(index)
        if item is None:
            self._skip_stats[row, MAP_STAT_KEYS.index(reason)] += 1
            for j in self._candidates(index):
                item, _, _ = self._try(j)
                if item is not None:
                    break
            else:
                raise self._exhausted(len(self.files), error)
        self._skip_stats[row, 0] += 1
        return item

    def _probe(self) -> None:
        """Decode one item so a folder of only broken images fails here, in one line."""
        n = len(self.files)
        if n == 0:
            return
        picks = np.random.default_rng([self.seed, 0x9B0BE]).choice(n, size=min(n, _CONSTRUCTION_PROBES), replace=False)
        order = ([0] + [int(j) for j in picks if j != 0])[:_CONSTRUCTION_PROBES]
        first: BaseException | None = None
        for j in order:
            item, _, error = self._try(j)
            if item is not None:
                return
            first = first or error
        raise self._exhausted(len(order), first)

    def _exhausted(self, tried: int, error: BaseException | None) -> DataExhaustedError:
        counts = {r: int((self._bad == MAP_STAT_KEYS.index(r)).sum()) for r in MAP_STAT_KEYS[1:]}
        n = len(self.files)
        where = getattr(self, "root", None) or (self.files[0].parent if self.files else "?")
        scope = f"all {n} images" if tried >= n else f"none of {tried} images tried (of {n})"
        what = f"{scope} under {str(where)!r} are unusable" if tried >= n else f"{scope} under {str(where)!r} is usable"
        first = f"; first error: {_one_line(error)}" if error is not None else ""
        return DataExhaustedError(f"{what} ({format_counts(counts)}){first}; replace or remove the broken files", counts)
