"""Shards without captions, class labels in shards, epochs that give no batch, and a writer that never
overwrites what it did not write."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from versadiff.data import build_dataset
from versadiff.data.shard_writer import ShardFolderError, shards_main, write_shards
from versadiff.data.shards import MANIFEST, ShardDataset
from versadiff.data.skips import DataExhaustedError, check_epoch


def folder(root: Path, n: int, classes=None, captions=False) -> Path:
    for i in range(n):
        sub = root / classes[i % len(classes)] if classes else root
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 10, 3), 20 * i % 256, np.uint8)).save(sub / f"img{i:03d}.png")
        if captions:
            (sub / f"img{i:03d}.txt").write_text(f"caption {i}")
    return root


def tar_of(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), (0, 255, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_readme_recipe_uncaptioned_shards_are_read(tmp_path, capsys):
    src = folder(tmp_path / "pets", 6)
    assert shards_main([str(src), str(tmp_path / "out"), "--samples-per-shard", "4"]) == 0
    assert "wrote 6 samples in 2 shards" in capsys.readouterr().out
    ds = build_dataset({"name": "webdataset", "shards": str(tmp_path / "out/{00000..00001}.tar"), "resolution": 8})
    assert ds.captions_mode == "ignored" and ds.num_classes == 0
    items = list(ds)
    assert len(items) == 6 and "caption" not in items[0] and "label" not in items[0]
    assert ds.stats["no_caption"] == 0
    # required captions on uncaptioned shards: every sample skipped, and the epoch check says why in one line
    strict = ShardDataset(tmp_path / "out", resolution=8, captions="required")
    batches = sum(1 for _ in DataLoader(strict, batch_size=2, drop_last=True))
    with pytest.raises(DataExhaustedError) as err:
        check_epoch(strict, batches, 2)
    msg = str(err.value)
    assert "\n" not in msg and "gave no batch of 2" in msg and "0 usable samples, 6 skipped (no_caption=6)" in msg
    assert "data.captions=ignored" in msg and err.value.counts["no_caption"] == 6


def test_captions_follow_what_the_config_needs(tmp_path):
    write_shards(folder(tmp_path / "src", 4, captions=True), tmp_path / "out", samples_per_shard=10)
    cfg = {"name": "webdataset", "shards": str(tmp_path / "out"), "resolution": 8}
    assert build_dataset(cfg).captions_mode == "required"  # auto: the shards carry captions
    assert [it["caption"] for it in ShardDataset(tmp_path / "out", 8, shuffle_buffer=0)] == [f"caption {i}" for i in range(4)]
    assert build_dataset(cfg, needs_text=False).captions_mode == "ignored"
    assert build_dataset(cfg, needs_text=True).captions_mode == "required"
    assert build_dataset({**cfg, "captions": "required"}, needs_text=False).captions_mode == "required"  # explicit wins
    assert build_dataset({**cfg, "captions": False}).captions_mode == "ignored"
    with pytest.raises(ValueError, match=r"captions must be one of \['auto', 'required', 'ignored'\]"):
        build_dataset({**cfg, "captions": "sometimes"})
    imgs = folder(tmp_path / "plain", 2)
    with pytest.raises(FileNotFoundError, match="lack a caption file"):  # image_folder with a text model
        build_dataset({"name": "image_folder", "root": str(imgs), "resolution": 8}, needs_text=True)


def test_class_subfolders_become_cls_labels(tmp_path):
    src = folder(tmp_path / "src", 6, classes=["dog", "cat"])  # sorted: cat=0, dog=1
    tars = write_shards(src, tmp_path / "out", samples_per_shard=4)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["class_names"] == ["cat", "dog"] and manifest["labelled"] == 6 and manifest["complete"]
    with tarfile.open(tars[0]) as tar:
        assert tar.extractfile("000000000.cls").read() == b"0"
    ds = build_dataset({"name": "webdataset", "shards": str(tmp_path / "out"), "resolution": 8, "shuffle_buffer": 0,
                        "shuffle_shards": False})
    assert ds.num_classes == 2 and ds.class_names == ["cat", "dog"]
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1] and batch["label"].dtype == torch.int64
    assert ShardDataset(tmp_path / "out", 8, labels="ignored").num_classes == 0
    assert write_shards(src, tmp_path / "flat", classes="none") and not json.loads(
        (tmp_path / "flat" / MANIFEST).read_text())["class_names"]


def test_labels_from_a_dataset_and_from_foreign_shards(tmp_path):
    shapes = build_dataset({"name": "shapes", "size": 5, "seed": 0, "resolution": 16})
    write_shards(shapes, tmp_path / "ds", samples_per_shard=5)
    ds = ShardDataset(tmp_path / "ds", 16, shuffle_buffer=0)
    assert ds.class_names == shapes.class_names and ds.captions_mode == "required"
    assert [it["label"] for it in ds] == [shapes[i]["label"] for i in range(5)]
    # shards from another tool: no manifest; the first sample decides about captions; cls needs num_classes
    other = tmp_path / "other"
    other.mkdir()
    tar_of(other / "a.tar", {"k1.png": png(), "k1.cls": b"2", "k2.png": png(), "k2.cls": b"7", "k3.png": png()})
    plain = ShardDataset(other, 8)
    assert plain.captions_mode == "ignored" and plain.num_classes == 0 and len(list(plain)) == 3
    labelled = ShardDataset(other, 8, num_classes=5, shuffle_buffer=0)
    assert [it["label"] for it in labelled] == [2] and labelled.stats["no_label"] == 2  # 7 out of range, k3 none
    with pytest.raises(ValueError, match="labels: required needs the class count"):
        ShardDataset(other, 8, labels="required")
    with pytest.raises(ValueError, match="num_classes=3 but the shards' manifest lists 18 classes"):
        ShardDataset(tmp_path / "ds", 16, num_classes=3)


def test_epoch_check_counts_by_reason_and_allows_resumed_passes(tmp_path):
    write_shards(folder(tmp_path / "src", 6, captions=True), tmp_path / "out", samples_per_shard=3)
    ds = ShardDataset(tmp_path / "out", 8, min_caption_len=50)
    ds.set_epoch(0)
    assert sum(1 for _ in DataLoader(ds, batch_size=2, drop_last=True)) == 0
    with pytest.raises(DataExhaustedError, match=r"epoch 0\) gave no batch of 2: 0 usable samples, 6 skipped "
                                                 r"\(caption_length=6\); loosen data.min_caption_len"):
        ds.check_epoch(0, 2)
    ok = ShardDataset(tmp_path / "out", 8)
    ok.set_epoch(1)
    n = sum(1 for _ in DataLoader(ok, batch_size=2, drop_last=True))
    assert n == 3 and ok.epoch_stats["samples"] == 6
    ok.check_epoch(n, 2)  # batches: fine
    ok.set_epoch(2)
    assert ok.epoch_stats["samples"] == 0 and ok.stats["samples"] == 6
    # two workers of three samples each cannot fill a batch of 4 although the pass had 6 usable samples
    batches = sum(1 for _ in DataLoader(ok, batch_size=4, drop_last=True, num_workers=2))
    with pytest.raises(DataExhaustedError, match="each of the 2 DataLoader workers batches its own samples"):
        ok.check_epoch(batches, 4)
    ok.set_epoch(3)
    assert len(list(ok)) == 6
    with pytest.raises(DataExhaustedError, match="fewer samples than one batch: lower train.batch_size"):
        ok.check_epoch(0, 40)
    ok.load_state_dict({"epoch": 4, "shards_done": 2})  # resumed at the end of an epoch: nothing left is fine
    ok.set_epoch(4)
    assert list(ok) == [] and ok.check_epoch(0, 2) is None
    with pytest.raises(ValueError, match="2 shards cannot feed 1 ranks x 3 workers"):
        ok.check_workers(3)


def test_writer_refuses_folders_it_did_not_fill(tmp_path):
    src = folder(tmp_path / "src", 5)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ShardFolderError, match=r"holds files that `versadiff shards` did not write there \(e.g. "
                                                   r"'notes.txt'\); choose a new or empty folder"):
            write_shards(src, other, overwrite=overwrite)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    tar_of(foreign / "00000.tar", {"k.png": png()})
    with pytest.raises(FileExistsError, match="shards written by another tool or run"):
        write_shards(src, foreign, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write_shards(src, tmp_path / "file")

    out = tmp_path / "out"
    write_shards(src, out, samples_per_shard=2)  # 3 shards
    assert len(list(out.glob("*.tar"))) == 3
    with pytest.raises(ShardFolderError, match="already holds 3 .tar shards .* or pass --overwrite"):
        write_shards(src, out, samples_per_shard=5)
    write_shards(src, out, samples_per_shard=5, overwrite=True)  # our own files: replaced, old shards gone
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar"]
    assert json.loads((out / MANIFEST).read_text())["shards"] == ["00000.tar"]


def test_killed_writer_leaves_no_half_shard(tmp_path, monkeypatch):
    import versadiff.data.shard_writer as sw

    src = folder(tmp_path / "src", 6)
    out = tmp_path / "out"
    real = sw.os.replace
    calls = []

    def dies_on_second_tar(a, b):
        calls.append(str(b))
        if str(b).endswith("00001.tar"):
            Path(a).with_name("00001.tar.partial").write_bytes(b"half a tar")  # what a killed process leaves
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(sw.os, "replace", dies_on_second_tar)
    with pytest.raises(KeyboardInterrupt):
        write_shards(src, out, samples_per_shard=2)
    monkeypatch.setattr(sw.os, "replace", real)
    assert (out / "00000.tar").is_file() and not (out / "00001.tar").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] is False and "00001.tar.partial" in manifest["files"]
    assert len(list(ShardDataset(out, 8))) == 2  # the complete shard reads; no .partial is taken for a shard
    (out / "00001.tar.partial").write_bytes(b"left by kill -9")
    with pytest.raises(ShardFolderError, match="written by `versadiff shards`"):
        write_shards(src, out, samples_per_shard=2)
    write_shards(src, out, samples_per_shard=2, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".partial")] and names.count("00002.tar") == 1
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_writer_with_only_corrupt_images_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "b.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataExhaustedError, match=r"none of the 2 images .* could be read \(corrupt=2\); no shards written"):
        write_shards(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        write_shards(tmp_path / "empty", tmp_path / "out2")


def test_shards_command_help_and_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as ex:
        shards_main(["--help"])
    assert ex.value.code == 0 and "--samples-per-shard N" in capsys.readouterr().out
    for bad in (["src"], ["a", "b", "--samples-per-shard", "0"], ["a", "b", "--quality", "101"], ["a", "b", "--classes", "x"]):
        with pytest.raises(SystemExit) as ex:
            shards_main(bad)
        err = capsys.readouterr().err
        assert ex.value.code == 2 and err.count("\n") == 1 and err.startswith("versadiff shards: error:")
    from versadiff.cli import main

    src = folder(tmp_path / "src", 2, classes=["a", "b"])
    assert main(["shards", str(src), str(tmp_path / "out")]) == 0
    assert "wrote 2 samples in 1 shards" in capsys.readouterr().out.replace("; 2 classes", "2 classes")
    assert main(["shards", str(src), str(tmp_path / "out")]) == 2  # an existing shard folder: one line, no traceback
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds 1 .tar shards" in err
