"""Write webdataset shards in img2dataset's output layout, from an image folder or a dataset.

Layout (img2dataset's webdataset output): for shard 00000,
  00000.tar          members 000000000.jpg (or .png/.webp), 000000000.txt (caption, when the source has
                     one), 000000000.cls (class index as ASCII, for class sub-folders or labelled
                     datasets), 000000000.json
  00000.parquet      one row per sample: key, url, caption, status, error_message, width, height,
                     original_width, original_height (written only when pyarrow is installed)
  00000_stats.json   count, successes, failed_to_download, failed_to_resize, start/end time, status_dict
and once per folder versadiff_shards.json (the reader's manifest): class names, how many samples have
captions and labels, whether the run finished, and every file this writer created there.
Keys are the 5-digit shard number followed by the sample number within the shard.

Never overwrite: the output folder must be new or empty; `overwrite=True` (--overwrite) replaces only
a folder this writer filled before (every file in it listed by its manifest). Every file is written
under a temporary name (NAME.partial) and renamed when complete, so a killed run leaves no half shard
under a final name (and its manifest says complete: false).

    write_shards("photos/", "shards/", samples_per_shard=1000)      # image files kept byte for byte
    shards_main(["photos/", "shards/", "--samples-per-shard", "1000"])  # the `versadiff shards` command
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .folder import CLASS_MODES, IMAGE_EXTENSIONS, list_images, split_classes
from .shards import MANIFEST, MANIFEST_FORMAT, read_manifest
from .skips import DECODE_ERRORS, DataExhaustedError

__all__ = ["write_shards", "shards_main", "add_shards_arguments", "run_shards", "ShardFolderError"]

log = logging.getLogger(__name__)

_KEEP = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_PARQUET_COLUMNS = ("key", "url", "caption", "status", "error_message", "width", "height", "original_width", "original_height")
_PARTIAL = ".partial"


class ShardFolderError(FileExistsError, ValueError):
    """The output folder cannot be used (it holds other files, or shards without --overwrite); one line.
    A FileExistsError, and a ValueError so the CLI reports it as a user error."""


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")  # JPEG stores no alpha
    img.save(buf, format=_PIL_FORMAT[fmt], **({"quality": quality} if fmt in ("jpg", "webp") else {}))
    return buf.getvalue()


def _tensor_to_pil(x: torch.Tensor) -> Image.Image:
    if not torch.is_tensor(x) or x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"dataset images must be tensors [1 or 3, H, W] in [-1, 1], got {getattr(x, 'shape', type(x))}")
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)


def _folder_samples(folder: Path, files: list[Path], labels: list[int] | None, fmt: str,
                    quality: int) -> Iterator[dict[str, Any] | None]:
    """Samples of an image folder; None marks an image that could not be read (counted, skipped)."""
    for n, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img.load()
                size = img.size
                keep = _KEEP.get(path.suffix.lower())
                if fmt == "keep" and keep is not None:
                    ext, data = keep, path.read_bytes()
                else:
                    ext = "png" if fmt == "keep" else fmt
                    data = _encode(img, ext, quality)
        except DECODE_ERRORS as e:
            log.warning("skipping unreadable image %s: %s", path, " ".join(str(e).split()) or type(e).__name__)
            yield None
            continue
        txt, caption = path.with_suffix(".txt"), None
        if txt.is_file():
            try:
                caption = txt.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                log.warning("ignoring unreadable caption file %s: %s", txt, e)
        sample = {"ext": ext, "data": data, "size": size, "caption": caption or None, "url": str(path.relative_to(folder))}
        if labels is not None:
            sample["label"] = labels[n]
        yield sample


def _dataset_samples(dataset: Dataset, fmt: str, quality: int) -> Iterator[dict[str, Any] | None]:
    ext = "png" if fmt == "keep" else fmt
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        img = _tensor_to_pil(item["image"])
        sample = {"ext": ext, "data": _encode(img, ext, quality), "size": img.size, "caption": item.get("caption"),
                  "url": f"item/{i}"}
        if "label" in item:
            sample["label"] = int(item["label"])
        yield sample


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    table = pa.table({c: [r.get(c) for r in rows] for c in _PARQUET_COLUMNS})
    _atomic(path, lambda tmp: pq.write_table(table, tmp))
    return True


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` through `write(temporary path)`, then rename: never a half-written file under `path`."""
    tmp = path.with_name(path.name + _PARTIAL)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _names(shard: str) -> list[str]:
    """The files of one shard, final and temporary names."""
    final = [f"{shard}.tar", f"{shard}.parquet", f"{shard}_stats.json"]
    return final + [f + _PARTIAL for f in final]


def _prepare_out(out: Path, overwrite: bool) -> bool:
    """Check that `out` may be written (see the module docstring); clear this writer's old files when
    overwriting. Returns whether `out` was created here."""
    if out.exists() and not out.is_dir():
        raise ShardFolderError(f"{str(out)!r} is a file, not a folder; choose a new or empty folder for the shards")
    if not out.exists():
        try:
            out.mkdir(parents=True)
        except OSError as e:
            raise ShardFolderError(f"cannot create the shard folder {str(out)!r}: {e.strerror or e}") from e
        return True
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return False
    manifest = read_manifest(out)
    ours = set(manifest.get("files", [])) | {MANIFEST, MANIFEST + _PARTIAL} if manifest else set()
    foreign = [n for n in present if n not in ours]
    if foreign:
        what = "shards written by another tool or run" if any(n.endswith(".tar") for n in foreign) else "files"
        raise ShardFolderError(
            f"{str(out)!r} already holds {what} that `versadiff shards` did not write there (e.g. {foreign[0]!r}); "
            "choose a new or empty folder"
        )
    if not overwrite:
        tars = sum(n.endswith(".tar") for n in present)
        raise ShardFolderError(
            f"{str(out)!r} already holds {tars} .tar shards written by `versadiff shards`; choose a new or empty "
            "folder, or pass --overwrite to replace them"
        )
    for name in present:
        if name != MANIFEST:
            (out / name).unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    return False


def write_shards(
    source: str | Path | Dataset,
    out_dir: str | Path,
    samples_per_shard: int = 10000,
    image_format: str = "keep",
    quality: int = 95,
    overwrite: bool = False,
    classes: str = "auto",
) -> list[Path]:
    """Write `source` (an image folder, captions from sibling .txt files, or a dataset of items
    {"image", "caption"?, "label"?}) as img2dataset-style shards in `out_dir`; returns the tar paths.

    image_format: "keep" stores image files byte for byte (jpg/png/webp; other files and dataset
    tensors become png), or "jpg" / "png" / "webp" re-encodes every image. Unreadable source images
    are skipped, logged and counted as failed_to_resize in the shard's stats (as img2dataset does);
    when none can be read, DataExhaustedError and nothing is left behind.
    classes (image folders): "auto" = class sub-folders become labels (a `cls` entry per sample, the
    sorted folder names in the manifest) when every image is in one, no labels for a flat folder;
    "folders" / "none" force either (see ImageFolderDataset). Datasets: items' "label" and the
    dataset's class_names.
    out_dir: a new or empty folder; overwrite=True replaces shards this function wrote there before,
    and nothing else (ShardFolderError otherwise).
    """
    if isinstance(samples_per_shard, bool) or int(samples_per_shard) < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if image_format not in ("keep", *_PIL_FORMAT):
        raise ValueError(f"image_format must be one of {['keep', *_PIL_FORMAT]}, got {image_format!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if classes not in CLASS_MODES:
        raise ValueError(f"classes must be one of {list(CLASS_MODES)}, got {classes!r}")
    samples_per_shard = int(samples_per_shard)
    out = Path(out_dir).expanduser()
    if isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a directory")
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"no images found under {str(folder)!r} (searched recursively for "
                                    f"{', '.join(IMAGE_EXTENSIONS)})")
        files, class_names, labels = split_classes(folder, files, classes)
        samples = _folder_samples(folder, files, labels, image_format, quality)
        described = str(folder)
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        class_names = [str(c) for c in (getattr(source, "class_names", None) or [])]
        if not class_names and int(getattr(source, "num_classes", 0) or 0) > 0:
            class_names = [str(i) for i in range(int(source.num_classes))]
        samples = _dataset_samples(source, image_format, quality)
        described = type(source).__name__
    else:
        raise ValueError(f"source must be an image folder path or a map-style dataset, got {type(source).__name__}")
    created = _prepare_out(out, overwrite)
    from webdataset import TarWriter

    width = max(4, len(str(samples_per_shard - 1)))
    tars: list[Path] = []
    written: list[str] = []  # every name this run may have created in `out`
    totals = {"samples": 0, "failed": 0, "captioned": 0, "labelled": 0, "max_label": -1}
    parquet_written = True
    batch: list[dict[str, Any] | None] = []

    def save_manifest(complete: bool) -> None:
        names = class_names or ([str(i) for i in range(totals["max_label"] + 1)] if totals["labelled"] else [])
        files_now = sorted(set(written) if not complete else {n for n in written if (out / n).exists()})
        manifest = {"format": MANIFEST_FORMAT, "complete": complete, "source": described,
                    "samples": totals["samples"], "failed": totals["failed"], "captioned": totals["captioned"],
                    "labelled": totals["labelled"], "class_names": names,
                    "shards": [t.name for t in tars], "files": files_now}
        _atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))

    def flush(shard: int) -> None:
        nonlocal parquet_written
        start = time.time()
        name = f"{shard:05d}"
        written.extend(_names(name))
        save_manifest(False)  # first, so the files of a killed run are known to be ours
        rows, failed = [], 0

        def write_tar(tmp: Path) -> None:
            nonlocal failed
            # mtime fixed so the same input gives byte-identical shards.
            with open(tmp, "wb") as stream:
                tar = TarWriter(stream, encoder=False, mtime=0)
                for i, s in enumerate(batch):
                    if s is None:
                        failed += 1
                        continue
                    key = f"{name}{i:0{width}d}"
                    w, h = s["size"]
                    meta = {"key": key, "url": s["url"], "caption": s["caption"], "status": "success",
                            "error_message": None, "width": w, "height": h, "original_width": w, "original_height": h}
                    member = {"__key__": key, s["ext"]: s["data"]}
                    if s.get("label") is not None:
                        label = meta["label"] = int(s["label"])
                        if label >= 0 and (not class_names or label < len(class_names)):
                            member["cls"] = str(label).encode("ascii")
                            totals["labelled"] += 1
                            totals["max_label"] = max(totals["max_label"], label)
                    member["json"] = json.dumps(meta).encode()
                    if s["caption"] is not None:
                        member["txt"] = s["caption"].encode("utf-8")
                        totals["captioned"] += 1
                    tar.write(member)
                    rows.append(meta)
                tar.close()

        _atomic(out / f"{name}.tar", write_tar)
        parquet_written = _write_parquet(out / f"{name}.parquet", rows) and parquet_written
        stats = {"count": len(batch), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": failed,
                 "duration": time.time() - start, "start_time": start, "end_time": time.time(),
                 "status_dict": {"success": len(rows), **({"failed_to_resize": failed} if failed else {})}}
        _atomic(out / f"{name}_stats.json", lambda tmp: tmp.write_text(json.dumps(stats, indent=2), encoding="utf-8"))
        totals["samples"] += len(rows)
        totals["failed"] += failed
        tars.append(out / f"{name}.tar")

    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            flush(len(tars))
            batch = []
    if batch:
        flush(len(tars))
    if totals["samples"] == 0:
        for n in [*written, MANIFEST]:
            (out / n).unlink(missing_ok=True)
        if created:
            out.rmdir()
        if not totals["failed"]:
            raise DataExhaustedError(f"{described!r} has no samples; no shards written")
        raise DataExhaustedError(f"none of the {totals['failed']} images of {described!r} could be read "
                                 f"(corrupt={totals['failed']}); no shards written", {"corrupt": totals["failed"]})
    save_manifest(True)
    if not parquet_written:
        log.info("pyarrow is not installed: wrote no .parquet files (pip install pyarrow to get them)")
    return tars


# ---- the `versadiff shards` command -----------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {value}")
    return value


def add_shards_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of `versadiff shards` to `p` (a subcommand parser); run them with `run_shards`."""
    p.description = p.description or "Write an image folder as img2dataset-style webdataset shards."
    p.add_argument("source", metavar="SOURCE",
                   help="folder of images or of class sub-folders (labels); captions from sibling .txt files; with "
                        "--dataset, a dataset config in YAML flow form, e.g. '{name: shapes, size: 20000}'")
    p.add_argument("out_dir", metavar="OUT_DIR",
                   help="a new or empty folder for 00000.tar, 00000.parquet, 00000_stats.json, ...")
    p.add_argument("--samples-per-shard", type=_positive_int, default=10000, metavar="N", help="default 10000")
    p.add_argument("--format", default="keep", choices=["keep", *_PIL_FORMAT], help="keep = store files byte for byte")
    p.add_argument("--quality", type=_quality, default=95, metavar="Q", help="jpg/webp quality when re-encoding (1..100)")
    p.add_argument("--classes", default="auto", choices=list(CLASS_MODES),
                   help="auto = class sub-folders become labels (.cls), a flat folder has none")
    p.add_argument("--dataset", action="store_true",
                   help="SOURCE is a dataset config (versadiff.data.build_dataset): its images, captions and labels")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards an earlier `versadiff shards` wrote into OUT_DIR (never other files)")
    return p


def run_shards(args: argparse.Namespace) -> int:
    """Run `versadiff shards` with parsed arguments; prints a summary and returns 0. User errors raise
    ValueError / FileNotFoundError subclasses with one-line messages."""
    source: Any = args.source
    if args.dataset:
        import yaml

        from versadiff.data.registry import build_dataset

        try:
            spec = yaml.safe_load(args.source)
        except yaml.YAMLError:
            raise ValueError(f"--dataset: {args.source!r} is not YAML (e.g. '{{name: shapes, size: 20000}}')") from None
        source = build_dataset(spec)
    tars = write_shards(source, args.out_dir, args.samples_per_shard, args.format, args.quality, args.overwrite,
                        args.classes)
    manifest = read_manifest(Path(args.out_dir).expanduser()) or {}
    extra = []
    if manifest.get("failed"):
        extra.append(f"skipped {manifest['failed']} unreadable images")
    if manifest.get("class_names"):
        extra.append(f"{len(manifest['class_names'])} classes")
    extra.append(f"{manifest.get('captioned', 0)} with captions")
    print(f"wrote {manifest.get('samples', 0)} samples in {len(tars)} shards to {args.out_dir} ({'; '.join(extra)})")
    return 0


class _Parser(argparse.ArgumentParser):
    """One-line argument errors, like the `versadiff` command."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def shards_main(argv: Sequence[str] | None = None) -> int:
    """`versadiff shards SOURCE OUT_DIR [--samples-per-shard N] [--format keep|jpg|png|webp] [--classes ...]`;
    returns 0. Bad arguments exit with status 2 and one line; other user errors raise (one-line messages)."""
    p = add_shards_arguments(_Parser(prog="versadiff shards"))
    return run_shards(p.parse_args(argv))
