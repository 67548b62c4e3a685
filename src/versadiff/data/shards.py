"""Stream img2dataset-style webdataset shards (see shard_writer.py for the layout).

Which shards a reader sees: each epoch orders the shards by a seeded permutation; after a resume
the first `shards_done` are skipped; the rest go round-robin to (rank, worker) slots, so ranks and
DataLoader workers never read the same shard. Within a worker, samples pass a seeded shuffle buffer.

Resuming "at a shard boundary": every item carries its worker's progress (`wds_worker`,
`wds_workers`, `wds_done` = how many of that worker's shards are completely emitted). The trainer
passes each consumed batch to `dataset.track(batch)`; `dataset.state_dict()` then gives
{"epoch", "shards_done"}: the prefix of the epoch's shard order whose samples have all been
consumed by this rank (with several ranks, take `merge_shard_states` = the minimum). After
`load_state_dict(state)`, the next `set_epoch(state["epoch"])` starts after that prefix. Samples
of a partly consumed shard are seen again, never lost.

Bad data never stops training: undecodable images, damaged tar files (counted once per shard), samples
without an image or caption, and samples a shard's _stats.json promises but the tar lacks ("missing")
are skipped and counted in `dataset.stats` (shared with DataLoader workers); each shard with skips
is reported by the `versadiff.data.shards` logger.

Captions and labels (see `ShardDataset`): `captions` is "auto" (default), "required" or "ignored";
"auto" keeps captions when the shards carry them (told by the versadiff_shards.json manifest that
`versadiff shards` writes, else by the first sample of the first shard), so shards of uncaptioned images
are read without skipping anything. A trainer whose model needs no text should pass "ignored"
(`build_dataset(cfg, needs_text=False)` does). Labels come from a sample's `cls` entry (an ASCII
integer); the class names, and so `num_classes`, from the manifest (or the `num_classes` option).

An epoch whose samples are all skipped would leave the trainer waiting for a batch forever: after a
pass, `dataset.check_epoch(batches, batch_size)` raises `DataExhaustedError` (one line, counts by skip
reason and the fix) when a full pass gave no batch; `dataset.epoch_stats` are the pass's counts.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from .skips import DataExhaustedError, format_counts
from .transforms import build_transform

__all__ = ["ShardDataset", "STAT_KEYS", "MANIFEST", "CAPTION_MODES", "LABEL_MODES", "list_shards", "merge_shard_states",
           "read_manifest"]

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
#: counters in `ShardDataset.stats`
STAT_KEYS = ("samples", "corrupt", "read_errors", "missing", "no_caption", "no_label", "caption_length", "too_small",
             "aspect")
#: the file `versadiff shards` writes beside its shards: class names, caption/label counts, the files it wrote
MANIFEST = "versadiff_shards.json"
MANIFEST_FORMAT = "versadiff-shards-1"
CAPTION_MODES = ("auto", "required", "ignored")
LABEL_MODES = ("auto", "required", "ignored")
_MAX_WORKERS = 256
_HINTS = {
    "no_caption": "the samples have no .txt caption and captions are required: set data.captions=ignored unless the "
                  "model needs text",
    "no_label": "the samples have no usable .cls label: set data.labels=ignored, or write the shards from class "
                "sub-folders with `versadiff shards`",
    "corrupt": "the shards hold no decodable images: rewrite them (versadiff shards SOURCE NEW_FOLDER)",
    "read_errors": "the .tar files are damaged or not tar files: rewrite them (versadiff shards SOURCE NEW_FOLDER)",
    "missing": "the .tar files are truncated (their _stats.json promise more samples): rewrite them",
    "caption_length": "loosen data.min_caption_len / data.max_caption_len",
    "too_small": "lower data.min_size / data.min_area",
    "aspect": "widen data.aspect",
}


def list_shards(shards: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a folder (its *.tar, sorted), a brace pattern ("d/{00000..00009}.tar") or a list."""
    if isinstance(shards, (list, tuple)):
        paths = [str(Path(p).expanduser()) for p in shards]
    else:
        text = str(shards)
        if "{" in text:
            import braceexpand

            paths = [str(Path(p).expanduser()) for p in braceexpand.braceexpand(text)]
        elif Path(text).expanduser().is_dir():
            paths = sorted(str(p) for p in Path(text).expanduser().glob("*.tar"))
            if not paths:
                raise FileNotFoundError(f"no .tar shards in {text!r}; write some with write_shards / `versadiff shards`")
        else:
            paths = [str(Path(text).expanduser())]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} shards do not exist, e.g. {missing[0]!r}")
    if not paths:
        raise ValueError("no shards given; pass a folder, a brace pattern or a list of .tar paths")
    return paths


def merge_shard_states(states: Sequence[dict[str, int]]) -> dict[str, int]:
    """The resume state of several ranks: the same epoch, the smallest `shards_done`."""
    epochs = {int(s["epoch"]) for s in states}
    if len(epochs) != 1:
        raise ValueError(f"ranks disagree on the epoch {sorted(epochs)}; gather the states at the same step")
    return {"epoch": epochs.pop(), "shards_done": min(int(s["shards_done"]) for s in states)}


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The versadiff_shards.json of `folder` (written by `versadiff shards`), or None when absent or unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable shard manifest %s", path)
        return None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        return None
    return raw


def _manifests(paths: list[str]) -> list[dict[str, Any]] | None:
    """The manifests of the shards' folders, or None unless every folder has one."""
    found = []
    for folder in sorted({str(Path(p).parent) for p in paths}):
        m = read_manifest(folder)
        if m is None:
            return None
        if not m.get("complete", False):
            log.warning("%s: `versadiff shards` did not finish writing this folder; some shards may be missing", folder)
        found.append(m)
    return found


def _peek_keys(path: str) -> set[str] | None:
    """The entry types (jpg, txt, cls, ...) of the first sample of a shard, or None when it cannot be read."""
    import tarfile

    try:
        with tarfile.open(path, "r|*") as tar:
            first, exts = None, set()
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                if first is None:
                    first = key
                elif key != first:
                    break
                exts.add(ext.lower())
            return exts if first is not None else None
    except (OSError, tarfile.TarError, EOFError):
        return None


def _mode(name: str, value: Any, modes: tuple[str, ...]) -> str:
    if value is True:
        return "required"
    if value is False or value is None:
        return "ignored"
    if value not in modes:
        raise ValueError(f"{name} must be one of {list(modes)} (or true/false), got {value!r}")
    return str(value)


def _num_samples(paths: list[str]) -> int | None:
    """Sum of `successes` in the shards' img2dataset stats files; None when any is missing."""
    total = 0
    for p in paths:
        stats = Path(p).with_name(Path(p).stem + "_stats.json")
        if not stats.is_file():
            return None
        total += int(json.loads(stats.read_text(encoding="utf-8")).get("successes", 0))
    return total


class ShardDataset(IterableDataset):
    """Items {"image": [C,R,R] in [-1,1], "caption"?: str, "key": str, "wds_worker", "wds_workers", "wds_done"}.

    shards: folder, brace pattern or list of .tar paths.
    captions: "required" = every item has the sample's .txt "caption" (samples without one are skipped,
        counted as no_caption); "ignored" = no "caption" (never skips); "auto" (default) = "required" when
        the shards carry captions (their manifest counts captioned samples; without one, the first sample
        of the first shard decides), else "ignored". True/False mean required/ignored.
        `captions_mode` is the resolved choice.
    labels: "required" = every item has "label" from the sample's .cls entry (missing, unparsable or out
        of 0..num_classes-1: skipped, counted as no_label); "ignored" = no "label", num_classes 0;
        "auto" (default) = "required" when the class names are known (the manifest of shards written
        from class sub-folders, or num_classes), else "ignored".
    num_classes: the class count of shards written by other tools with .cls entries (class names
        become "0".."K-1"); shards written by `versadiff shards` know theirs.
    shuffle_buffer: samples held for shuffling per worker (0 = stream order); shuffle_shards: permute
        the shard order each epoch. rank / world: this process's place among the ranks (default:
        torch.distributed when initialised, else 0 / 1, which is what accelerate sets up).
    Filters (skipped samples are counted): min_caption_len / max_caption_len in characters;
        min_size = shorter side and min_area = width*height in pixels, of the stored image;
        aspect = (lo, hi) bounds on width / height. Versatile Diffusion used aspect (0.6, 1.667)
        and min_area 256*256*0.75.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        resolution: int,
        transform: dict[str, Any] | None = None,
        channels: int = 3,
        captions: bool | str = "auto",
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        min_caption_len: int = 0,
        max_caption_len: int | None = None,
        min_size: int = 0,
        min_area: int = 0,
        aspect: tuple[float, float] | None = None,
        labels: str = "auto",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.shards = list_shards(shards)
        if rank is None and world is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        if rank is None or world is None or not 0 <= rank < world:
            raise ValueError(f"rank and world must be given together with 0 <= rank < world, got rank={rank}, world={world}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if aspect is not None and (len(aspect) != 2 or not 0 < aspect[0] <= aspect[1]):
            raise ValueError(f"aspect must be a (low, high) pair with 0 < low <= high, got {aspect}")
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.transform = build_transform(transform, self.resolution, self.channels)
        caption_mode, label_mode = _mode("captions", captions, CAPTION_MODES), _mode("labels", labels, LABEL_MODES)
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"num_classes must be a positive int or null, got {num_classes!r}")
        manifests = _manifests(self.shards)
        if caption_mode == "auto":
            if manifests is not None:
                captioned = sum(int(m.get("captioned", 0)) for m in manifests)
            else:
                exts = _peek_keys(self.shards[0])
                captioned = 1 if exts is None or "txt" in exts else 0  # unreadable first shard: img2dataset's default
            caption_mode = "required" if captioned else "ignored"
        self.captions_mode = caption_mode
        self.captions = caption_mode == "required"
        self.class_names = self._class_names(manifests, label_mode, num_classes)
        self.num_classes = len(self.class_names)
        self.labels = self.num_classes > 0
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_shards = bool(shuffle_shards)
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self.min_caption_len, self.max_caption_len = int(min_caption_len), max_caption_len
        self.min_size, self.min_area = int(min_size), int(min_area)
        self.aspect = None if aspect is None else (float(aspect[0]), float(aspect[1]))
        self.num_samples = _num_samples(self.shards)  # before filtering; None when stats files are absent
        # One row per worker, in shared memory so counts made inside DataLoader workers reach the trainer.
        self._stats = torch.zeros(_MAX_WORKERS, len(STAT_KEYS), dtype=torch.int64).share_memory_()
        self._epoch_base = self._stats.clone()  # the counts when the current pass began
        self._loader_workers = torch.ones(1, dtype=torch.int64).share_memory_()  # workers of the last pass
        self.epoch = 0
        self.start = 0
        self._resume: dict[str, int] | None = None
        self._progress: dict[int, int] = {}
        self._num_workers = 1

    @staticmethod
    def _class_names(manifests: list[dict[str, Any]] | None, mode: str, num_classes: int | None) -> list[str]:
        if mode == "ignored":
            return []
        known: list[str] = []
        if manifests:
            names = [list(map(str, m.get("class_names") or [])) for m in manifests]
            if any(n != names[0] for n in names):
                raise ValueError("the shard folders list different class names in their versadiff_shards.json; "
                                 "read folders written from the same class sub-folders together")
            known = names[0]
        if num_classes is not None:
            if known and len(known) != int(num_classes):
                raise ValueError(f"num_classes={num_classes} but the shards' manifest lists {len(known)} classes; "
                                 "drop num_classes")
            known = known or [str(i) for i in range(int(num_classes))]
        if mode == "required" and not known:
            raise ValueError("labels: required needs the class count: write the shards from class sub-folders with "
                             "`versadiff shards`, or set num_classes")
        return known

    # ---- epoch, resume state -------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """Counts since creation, summed over workers: samples yielded and samples skipped, by reason."""
        return dict(zip(STAT_KEYS, (int(v) for v in self._stats.sum(0))))

    @property
    def epoch_stats(self) -> dict[str, int]:
        """The counts of the current pass (since the last set_epoch / load_state_dict), summed over workers."""
        return dict(zip(STAT_KEYS, (int(v) for v in (self._stats - self._epoch_base).sum(0))))

    def check_workers(self, num_workers: int) -> None:
        """ValueError (one line, in the calling process) when the shards cannot feed the ranks x `num_workers`
        DataLoader workers without duplicates; __iter__ checks the same inside the workers."""
        nw = max(1, int(num_workers))
        if nw > _MAX_WORKERS:
            raise ValueError(f"at most {_MAX_WORKERS} DataLoader workers are supported, got {nw}")
        if len(self.shards) < self.world * nw:
            raise ValueError(
                f"{len(self.shards)} shards cannot feed {self.world} ranks x {nw} workers without duplicates; "
                "write more, smaller shards or use fewer workers"
            )

    def check_epoch(self, batches: int, batch_size: int) -> None:
        """Call after a pass over a DataLoader of this dataset gave `batches` batches of `batch_size`:
        raises DataExhaustedError when a full pass (not one resumed part-way) gave none, naming the counts
        of the pass by skip reason and the fix. Without this check a trainer would start pass after pass."""
        if batches > 0 or self.start > 0:
            return
        counts = self.epoch_stats
        usable = counts["samples"]
        skipped = sum(v for k, v in counts.items() if k != "samples")
        nw = int(self._loader_workers[0])
        if usable >= batch_size:
            hint = (f"each of the {nw} DataLoader workers batches its own samples and drops its partial batch: "
                    "use fewer train.num_workers or a smaller train.batch_size")
        elif skipped:
            top = max((k for k in STAT_KEYS if k != "samples"), key=lambda k: counts[k])
            hint = _HINTS[top]
        else:
            hint = "the shards hold fewer samples than one batch: lower train.batch_size or add data"
        mine = len(range(self.rank, len(self.shards), self.world))
        scope = "the" if self.world == 1 else "this rank's"
        raise DataExhaustedError(
            f"one pass over {scope} {mine} shards (epoch {self.epoch}) "
            f"gave no batch of {batch_size}: {usable} usable samples, {skipped} skipped ({format_counts(counts)}); {hint}",
            counts,
        )

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch`; resumes after the loaded `shards_done` when it is the loaded state's epoch."""
        self.epoch = int(epoch)
        resume, self._resume = self._resume, None
        self.start = resume["shards_done"] if resume is not None and resume["epoch"] == self.epoch else 0
        self._progress = {}
        self._epoch_base = self._stats.clone()

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from {"epoch", "shards_done"}; takes effect at once and on the next set_epoch(epoch)."""
        if set(state) != {"epoch", "shards_done"} or not 0 <= int(state["shards_done"]) <= len(self.shards):
            raise ValueError(f"a shard state is {{'epoch', 'shards_done' in 0..{len(self.shards)}}}, got {state}")
        self._resume = {"epoch": int(state["epoch"]), "shards_done": int(state["shards_done"])}
        self.epoch, self.start, self._progress = self._resume["epoch"], self._resume["shards_done"], {}
        self._epoch_base = self._stats.clone()

    def track(self, batch: dict[str, Any]) -> None:
        """Record that the trainer consumed `batch` (a collated batch or a single item)."""
        if not all(k in batch for k in ("wds_worker", "wds_workers", "wds_done")):
            raise ValueError("track() needs the batch as the loader gave it, with its wds_worker/wds_workers/wds_done keys")
        workers = torch.as_tensor(batch["wds_worker"]).reshape(-1).tolist()
        counts = torch.as_tensor(batch["wds_workers"]).reshape(-1).tolist()
        done = torch.as_tensor(batch["wds_done"]).reshape(-1).tolist()
        for w, n, d in zip(workers, counts, done):
            self._num_workers = int(n)
            self._progress[int(w)] = max(self._progress.get(int(w), 0), int(d))

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "shards_done"}: the shards of this epoch's order that this rank has fully consumed."""
        nw = self._num_workers
        for pos in range(self.start, len(self.shards)):
            slot = (pos - self.start) % (self.world * nw)
            if slot // nw != self.rank:
                continue  # another rank's shard: its own state covers it
            worker = slot % nw
            nth = (pos - self.start) // (self.world * nw)  # how many shards this worker read before this one
            if self._progress.get(worker, 0) <= nth:
                return {"epoch": self.epoch, "shards_done": pos}
        return {"epoch": self.epoch, "shards_done": len(self.shards)}

    def shard_order(self) -> list[int]:
        """Indices into `self.shards` in this epoch's reading order."""
        n = len(self.shards)
        if not self.shuffle_shards:
            return list(range(n))
        return np.random.default_rng([self.seed, self.epoch]).permutation(n).tolist()

    # ---- reading -------------------------------------------------------------------------
    def _count(self, row: int, key: str) -> None:
        self._stats[row, STAT_KEYS.index(key)] += 1

    def _decode(self, sample: dict[str, Any], row: int) -> dict[str, Any] | None:
        """An item, or None after counting why the sample is skipped."""
        ext = next((k for k in IMAGE_KEYS if k in sample), None)
        if ext is None:
            self._count(row, "corrupt")
            return None
        caption = None
        if self.captions:
            if "txt" not in sample:
                self._count(row, "no_caption")
                return None
            try:
                caption = sample["txt"].decode("utf-8").strip()
            except UnicodeDecodeError:
                self._count(row, "corrupt")
                return None
            if len(caption) < self.min_caption_len or (self.max_caption_len is not None and len(caption) > self.max_caption_len):
                self._count(row, "caption_length")
                return None
        label = None
        if self.labels:
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except (KeyError, AttributeError, UnicodeDecodeError, ValueError):
                label = -1
            if not 0 <= label < self.num_classes:
                self._count(row, "no_label")
                return None
        key = str(sample["__key__"])
        try:
            with Image.open(io.BytesIO(sample[ext])) as img:
                w, h = img.size  # from the header: filter before paying for the decode
                if min(w, h) < self.min_size or w * h < self.min_area:
                    self._count(row, "too_small")
                    return None
                if self.aspect is not None and not self.aspect[0] <= w / h <= self.aspect[1]:
                    self._count(row, "aspect")
                    return None
                img.load()
                # Per-sample seed from the key, so augmentations survive reshuffling and resumes.
                seed = None
                if self.transform.is_random:
                    seed = int(np.random.SeedSequence([self.seed, self.epoch, zlib.crc32(key.encode())]).generate_state(1)[0])
                image = self.transform(img, seed)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            log.debug("undecodable sample %s: %s", key, e)
            self._count(row, "corrupt")
            return None
        item: dict[str, Any] = {"image": image, "key": key}
        if caption is not None:
            item["caption"] = caption
        if label is not None:
            item["label"] = label
        return item

    def _read_shard(self, path: str, row: int) -> Iterator[dict[str, Any]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        errors: list[Exception] = []

        def handler(exn: Exception) -> bool:
            errors.append(exn)
            return True  # skip and continue: bad data is never fatal

        files = tar_file_expander(url_opener([{"url": path}], handler=handler), handler=handler)
        groups = 0
        for sample in group_by_keys(files, handler=handler):
            groups += 1
            item = self._decode(sample, row)
            if item is not None:
                yield item
        if errors:  # one damaged tar stream raises at several levels: count the shard once
            log.warning("read error in shard %s: %s", path, errors[0])
            self._count(row, "read_errors")
        # tarfile ends quietly when a shard is cut at a block boundary: compare with img2dataset's count.
        stats = Path(path).with_name(Path(path).stem + "_stats.json")
        if stats.is_file():
            try:
                expected = int(json.loads(stats.read_text(encoding="utf-8"))["successes"])
            except (ValueError, KeyError, TypeError):
                expected = groups
            if expected > groups:
                self._stats[row, STAT_KEYS.index("missing")] += expected - groups

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        self.check_workers(nw)
        self._loader_workers[0] = nw
        slots = self.world * nw
        order = self.shard_order()
        mine = [order[p] for p in range(self.start + self.rank * nw + worker, len(order), slots)]
        rng = np.random.default_rng([self.seed, self.epoch, self.start, self.rank, worker])
        buffer: list[tuple[dict[str, Any], int]] = []
        in_buffer = [0] * len(mine)
        finished = [False] * len(mine)
        done = 0

        def emit() -> dict[str, Any]:
            nonlocal done
            i = int(rng.integers(len(buffer))) if self.shuffle_buffer else 0
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            item, j = buffer.pop()
            in_buffer[j] -= 1
            while done < len(mine) and finished[done] and in_buffer[done] == 0:
                done += 1
            item.update(wds_worker=worker, wds_workers=nw, wds_done=done)
            self._count(worker, "samples")
            return item

        for j, index in enumerate(mine):
            before = self._stats[worker].clone()
            for item in self._read_shard(self.shards[index], worker):
                buffer.append((item, j))
                in_buffer[j] += 1
                while len(buffer) > self.shuffle_buffer:
                    yield emit()
            finished[j] = True
            skipped = {k: int(v) for k, v in zip(STAT_KEYS, self._stats[worker] - before) if v and k != "samples"}
            if skipped:
                log.warning("shard %s: skipped %d samples %s", self.shards[index], sum(skipped.values()), skipped)
        while buffer:
            yield emit()
