"""Write webdataset shards in img2dataset's output layout, from an image folder or a dataset.

Layout (img2dataset's webdataset output): for shard 00000,
  00000.tar          members 000000000.jpg (or .png/.webp), 000000000.txt (caption), 000000000.json
  00000.parquet      one row per sample: key, url, caption, status, error_message, width, height,
                     original_width, original_height (written only when pyarrow is installed)
  00000_stats.json   count, successes, failed_to_download, failed_to_resize, start/end time, status_dict
Keys are the 5-digit shard number followed by the sample number within the shard.

    write_shards("photos/", "shards/", samples_per_shard=1000)      # image files kept byte for byte
    shards_main(["photos/", "shards/", "--samples-per-shard", "1000"])  # the `versadiff shards` command
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from .folder import list_images

__all__ = ["write_shards", "shards_main"]

log = logging.getLogger(__name__)

_KEEP = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_PARQUET_COLUMNS = ("key", "url", "caption", "status", "error_message", "width", "height", "original_width", "original_height")


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


def _folder_samples(folder: Path, fmt: str, quality: int) -> Iterator[dict[str, Any] | None]:
    """Samples of an image folder; None marks an image that could not be read (counted, skipped)."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images found under {str(folder)!r}")
    for path in files:
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
        except (OSError, ValueError) as e:
            log.warning("skipping unreadable image %s: %s", path, e)
            yield None
            continue
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
        yield {"ext": ext, "data": data, "size": size, "caption": caption, "url": str(path.relative_to(folder))}


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
    pq.write_table(table, path)
    return True


def write_shards(
    source: str | Path | Dataset,
    out_dir: str | Path,
    samples_per_shard: int = 10000,
    image_format: str = "keep",
    quality: int = 95,
    overwrite: bool = False,
) -> list[Path]:
    """Write `source` (an image folder, captions from sibling .txt files, or a dataset of items
    {"image", "caption"?, "label"?}) as img2dataset-style shards in `out_dir`; returns the tar paths.

    image_format: "keep" stores image files byte for byte (jpg/png/webp; other files and dataset
    tensors become png), or "jpg" / "png" / "webp" re-encodes every image. Unreadable source images
    are skipped, logged and counted as failed_to_resize in the shard's stats (as img2dataset does).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if image_format not in ("keep", *_PIL_FORMAT):
        raise ValueError(f"image_format must be one of {['keep', *_PIL_FORMAT]}, got {image_format!r}")
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.glob("*.tar")) and not overwrite:
        raise FileExistsError(f"{str(out)!r} already holds .tar shards; choose an empty folder or pass overwrite=True")
    if isinstance(source, (str, Path)):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {str(folder)!r} does not exist or is not a directory")
        samples = _folder_samples(folder, image_format, quality)
    elif hasattr(source, "__getitem__") and hasattr(source, "__len__"):
        samples = _dataset_samples(source, image_format, quality)
    else:
        raise ValueError(f"source must be an image folder path or a map-style dataset, got {type(source).__name__}")
    out.mkdir(parents=True, exist_ok=True)
    from webdataset import TarWriter

    width = max(4, len(str(samples_per_shard - 1)))
    tars: list[Path] = []
    parquet_written = True
    batch: list[dict[str, Any] | None] = []

    def flush(shard: int) -> None:
        nonlocal parquet_written
        start = time.time()
        name = f"{shard:05d}"
        rows, failed = [], 0
        # mtime fixed so the same input gives byte-identical shards.
        with TarWriter(str(out / f"{name}.tar"), encoder=False, mtime=0) as tar:
            for i, s in enumerate(batch):
                if s is None:
                    failed += 1
                    continue
                key = f"{name}{i:0{width}d}"
                w, h = s["size"]
                meta = {"key": key, "url": s["url"], "caption": s["caption"], "status": "success", "error_message": None,
                        "width": w, "height": h, "original_width": w, "original_height": h}
                if "label" in s:
                    meta["label"] = s["label"]
                member = {"__key__": key, s["ext"]: s["data"], "json": json.dumps(meta).encode()}
                if s["caption"] is not None:
                    member["txt"] = s["caption"].encode("utf-8")
                tar.write(member)
                rows.append(meta)
        parquet_written = _write_parquet(out / f"{name}.parquet", rows) and parquet_written
        stats = {"count": len(batch), "successes": len(rows), "failed_to_download": 0, "failed_to_resize": failed,
                 "duration": time.time() - start, "start_time": start, "end_time": time.time(),
                 "status_dict": {"success": len(rows), **({"failed_to_resize": failed} if failed else {})}}
        (out / f"{name}_stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
        tars.append(out / f"{name}.tar")

    for sample in samples:
        batch.append(sample)
        if len(batch) == samples_per_shard:
            flush(len(tars))
            batch = []
    if batch:
        flush(len(tars))
    if not parquet_written:
        log.info("pyarrow is not installed: wrote no .parquet files (pip install pyarrow to get them)")
    return tars


def shards_main(argv: Sequence[str] | None = None) -> int:
    """`versadiff shards SOURCE OUT_DIR [--samples-per-shard N] [--format keep|jpg|png|webp]`; returns 0."""
    p = argparse.ArgumentParser(prog="versadiff shards", description="Write an image folder as img2dataset-style webdataset shards.")
    p.add_argument("source", help="folder of images (captions from sibling .txt files)")
    p.add_argument("out_dir", help="folder for 00000.tar, 00000.parquet, 00000_stats.json, ...")
    p.add_argument("--samples-per-shard", type=int, default=10000)
    p.add_argument("--format", default="keep", choices=["keep", *_PIL_FORMAT], help="keep = store files byte for byte")
    p.add_argument("--quality", type=int, default=95, help="jpg/webp quality when re-encoding")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds shards")
    args = p.parse_args(argv)
    tars = write_shards(args.source, args.out_dir, args.samples_per_shard, args.format, args.quality, args.overwrite)
    total = sum(json.loads(t.with_name(t.stem + "_stats.json").read_text())["successes"] for t in tars)
    print(f"wrote {total} samples in {len(tars)} shards to {args.out_dir}")
    return 0
