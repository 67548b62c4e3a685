"""End to end: sources -> sharded features -> report; 1 vs 2 processes; the CLI; the domain evaluators."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from versadiff.eval.classifier import classifier_metadata, load_fmnist_classifier, shipped_classifier_path
from versadiff.eval.evaluate import EvalOptions, GeneratorSource, NpzSource, evaluate, write_report
from versadiff.eval.features import FeatureExtractor, FMNISTFeatures, ShapesFeatures

METRICS = ["fid", "kid", "pr", "is", "fmnist_fd", "fmnist_acc"]


class TinyGenerator:
    """A real (tiny, fixed) conv net applied to per-seed noise: image i depends only on its seed and class."""

    num_classes = 10

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))

    @torch.no_grad()
    def generate(self, seeds, *, sampler, steps, guidance, class_labels, batch_size, device, progress=False):
        noise = torch.cat([torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in seeds])
        shift = torch.tensor(class_labels, dtype=torch.float32).view(-1, 1, 1, 1) / 10
        return torch.tanh(self.net(noise) + shift)


class PixelFeatures(FeatureExtractor):
    """A pluggable stand-in for Inception (fast): a fixed random projection of the pixels, plus logits."""

    name = "pixel_projection_16"
    dim = 16

    def __init__(self) -> None:
        self.proj = torch.randn(28 * 28, 16, generator=torch.Generator().manual_seed(0))

    def extract(self, images):
        f = images.flatten(1) @ self.proj
        return {"features": f, "logits": f[:, :10]}


def make_reference(path: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), labels=np.arange(n) % 10)
    return path


def run_eval(ref: Path, out: Path, cache: Path | None = None) -> dict:
    """The evaluation both the 1-process test and the 2-process workers run."""
    source = GeneratorSource(TinyGenerator(), n=10, seed=3, sampler="ddim", steps=1, guidance=0.0)
    opts = EvalOptions(metrics=METRICS, batch_size=3, kid_subsets=5, is_splits=2)
    report = evaluate(source, [ref], opts, extractors={"inception": PixelFeatures()}, cache_dir=cache)
    write_report(report, out)
    return report


def test_report_is_identical_on_one_and_two_processes(tmp_path, one_thread):
    ref = make_reference(tmp_path / "ref.npz")
    one = run_eval(ref, tmp_path / "one.json", cache=tmp_path / "cache")
    m = one["metrics"]
    assert set(m) == set(METRICS) and m["fid"] > 0
    # fmnist_acc is the classifier's argmax against the requested classes of these very images (an oracle,
    # not a range; image i: seed 3 + i, class i mod 10)
    images, labels = GeneratorSource(TinyGenerator(), n=10, seed=3, sampler="ddim", steps=1, guidance=0.0).batch(range(10))
    pred = load_fmnist_classifier()(images).argmax(1)
    assert m["fmnist_acc"] == (pred == labels).sum().item() / 10
    assert one["samples"]["seeds"] == [3, 12] and one["features"]["inception"] == "pixel_projection_16"
    assert {"torch", "numpy", "scipy", "accelerate"} <= set(one["versions"])
    assert list((tmp_path / "cache").glob("*.npz"))  # reference statistics were cached
    # same settings again, reference statistics from the cache: the same report
    again = run_eval(ref, tmp_path / "again.json", cache=tmp_path / "cache")
    assert json.dumps(again, default=str) == json.dumps(one, default=str)

    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import torch\ntorch.set_num_threads(1)\n"
        "from test_eval_pipeline import run_eval\n"
        "run_eval(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    # two workers wired up as torchrun would (rank / world size / rendezvous in the environment);
    # ACCELERATE_USE_CPU makes accelerate form a gloo process group on CPU
    port = str(20000 + os.getpid() % 20000)
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, str(script), str(ref), str(tmp_path / "two.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["runtime"]["num_processes"] == 2
    one_saved = json.loads((tmp_path / "one.json").read_text())
    for report in (one_saved, two):
        report.pop("runtime")
    assert two == one_saved


def test_image_i_uses_seed_base_plus_i(one_thread):
    from versadiff.eval.evaluate import extract_features

    ex = {"fmnist": FMNISTFeatures()}
    whole, labels = extract_features(GeneratorSource(TinyGenerator(), n=6, seed=10, guidance=0.0), ex, batch_size=4)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5]  # classes cycle: image i gets class i mod 10
    # a shorter run in other batches makes the same first images (up to float rounding: kernels depend on the
    # batch size, which is why reports fix the batches); another seed base does not
    head, _ = extract_features(GeneratorSource(TinyGenerator(), n=3, seed=10, guidance=0.0), ex, batch_size=1)
    np.testing.assert_allclose(head["fmnist"]["features"], whole["fmnist"]["features"][:3], rtol=1e-5, atol=1e-6)
    other, _ = extract_features(GeneratorSource(TinyGenerator(), n=3, seed=11, guidance=0.0), ex, batch_size=1)
    assert not np.allclose(other["fmnist"]["features"], head["fmnist"]["features"])


def test_checkpoint_samples_equal_their_saved_pngs(tmp_path, one_thread):
    from versadiff.eval.evaluate import FolderSource, extract_features

    source = GeneratorSource(TinyGenerator(), n=4, seed=0, guidance=0.0)
    images, _ = source.batch(range(4))
    for i, img in enumerate(((images + 1) * 127.5).round().byte()[:, 0].numpy()):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    ex = {"fmnist": FMNISTFeatures()}
    a, _ = extract_features(source, ex, batch_size=4)
    b, _ = extract_features(FolderSource(tmp_path), ex, batch_size=4)
    np.testing.assert_array_equal(a["fmnist"]["features"], b["fmnist"]["features"])


def test_cli_images_folder_with_labels(tmp_path, one_thread):
    from versadiff.cli import main

    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    (tmp_path / "labels.txt").write_text("\n".join(str(i % 10) for i in range(6)))
    ref = make_reference(tmp_path / "ref.npz")
    out = tmp_path / "report.json"
    rc = main(["eval", "--images", str(folder), "--labels", str(tmp_path / "labels.txt"), "--ref", str(ref),
               "--metrics", "fd,acc", "--domain", "fmnist", "--save-ref", str(tmp_path / "stats.npz"),
               "--batch-size", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fmnist_fd", "fmnist_acc"} and report["samples"]["n"] == 6
    assert report["metrics"]["fmnist_fd"] > 0
    saved = np.load(tmp_path / "stats.npz")  # one feature space: the path as given
    assert str(saved["feature"]) == "fmnist_classifier_fc1" and int(saved["n"]) == 24
    # the saved statistics now serve as the reference, with the same FD
    rc = main(["eval", "--images", str(folder), "--ref", str(tmp_path / "stats.npz"),
               "--metrics", "fmnist_fd", "--out", str(tmp_path / "r2.json"), "--quiet"])
    assert rc == 0
    fd2 = json.loads((tmp_path / "r2.json").read_text())["metrics"]["fmnist_fd"]
    assert fd2 == pytest.approx(report["metrics"]["fmnist_fd"], rel=1e-6)
    # reference statistics alone (nothing sampled) are the same numbers
    assert main(["eval", "--ref", str(ref), "--metrics", "fmnist_fd", "--save-ref", str(tmp_path / "only.npz"),
                 "--out", str(tmp_path / "only.json"), "--quiet"]) == 0
    only = np.load(tmp_path / "only.npz")
    # the same statistics, up to float32 rounding: oneDNN's kernels (AVX-512/AMX) differ by batch size
    np.testing.assert_allclose(only["sigma"], saved["sigma"], rtol=1e-5, atol=1e-6 * np.abs(saved["sigma"]).max())
    assert "features" not in only.files  # FD alone needs no raw features
    # statistics without a feature name (pytorch-fid's format) are used only when vouched for
    np.savez(tmp_path / "plain.npz", mu=only["mu"], sigma=only["sigma"])
    args = ["eval", "--images", str(folder), "--ref", str(tmp_path / "plain.npz"), "--metrics", "fmnist_fd",
            "--out", str(tmp_path / "r3.json"), "--quiet"]
    assert main(args) == 2
    assert main(args + ["--ref-feature", "fmnist_classifier_fc1"]) == 0
    assert json.loads((tmp_path / "r3.json").read_text())["metrics"]["fmnist_fd"] == pytest.approx(fd2, rel=1e-6)  # plain.npz holds only.npz (other batch size)


def test_cli_reads_a_sample_folder_settings_json(tmp_path, one_thread):
    from versadiff.cli import main

    folder = tmp_path / "samples"
    folder.mkdir()
    rng = np.random.default_rng(2)
    records = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(28, 28), dtype=np.uint8)).save(folder / f"seed{i:06d}.png")
        records.append({"file": f"seed{i:06d}.png", "seed": i, "class": i % 10})
    (folder / "settings.json").write_text(json.dumps({"images": records}))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "grid.png")  # not a sample: must be skipped
    out = tmp_path / "r.json"
    assert main(["eval", "--images", str(folder), "--metrics", "fmnist_acc", "--out", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["samples"]["n"] == 5 and report["samples"]["labels"] == "given"
    pred = load_fmnist_classifier()(torch.stack([
        torch.from_numpy(np.array(Image.open(folder / r["file"]))).float().div(127.5).sub(1)[None] for r in records
    ])).argmax(1)
    assert report["metrics"]["fmnist_acc"] == pytest.approx((pred == torch.arange(5)).float().mean().item())


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from versadiff.cli import main
    from versadiff.eval.inception import WEIGHTS_ENV, WEIGHTS_FILENAME

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "a.png")
    cases = [
        (["--metrics", "fid", "--ref", str(folder)], WEIGHTS_FILENAME),
        (["--metrics", "acc"], "--domain"),
        (["--metrics", "fmnist_acc"], "--labels"),
        (["--metrics", "bogus"], "unknown metric"),
        (["--metrics", "fmnist_fd"], "--ref"),
    ]
    for extra, needle in cases:
        assert main(["eval", "--images", str(folder), "--out", str(tmp_path / "r.json"), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    assert main(["eval", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "r.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_classifier_is_small_documented_and_deterministic(one_thread):
    path = shipped_classifier_path()
    assert path.stat().st_size < 2_000_000
    # its accuracy is measured on the real test set in tests/test_shipped_models.py, not read from here
    assert {"seed", "epochs", "test_accuracy", "script"} <= set(classifier_metadata())
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = load_fmnist_classifier()(x), load_fmnist_classifier()(x)
    assert a.shape == (4, 10) and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[N, 1, 28, 28\]"):
        load_fmnist_classifier()(torch.zeros(1, 1, 32, 32))
    # 32x32 images padded from 28x28 are cropped back: same features as the 28x28 original
    ex = FMNISTFeatures(input_mode="pad")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    torch.testing.assert_close(ex(padded)["features"], ex(x)["features"])
    with pytest.raises(ValueError, match="--fmnist-input"):
        FMNISTFeatures()(padded)


def test_classifier_accuracy_on_real_fashion_mnist_through_the_dataset_reader(fashion_mnist, one_thread):
    from versadiff.data import idx

    ds = idx.MNISTDataset(fashion_mnist, split="test")
    items = [ds[i] for i in range(1000)]
    x = torch.stack([it["image"] for it in items])
    y = torch.tensor([it["label"] for it in items])
    acc = (load_fmnist_classifier()(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.88


def test_shapes_evaluator_reads_dataset_classes():
    from versadiff.data.shapes import ShapesDataset

    ds = ShapesDataset(size=12, seed=1)
    images = torch.stack([ds[i]["image"] for i in range(12)])
    labels = np.array([ds[i]["label"] for i in range(12)])
    out = ShapesFeatures()(images)
    assert out["features"].shape == (12, 33) and (out["pred"].numpy() == labels).all()
    # an empty (black) image reads as "no shape": predicted -1, flagged in the last feature
    blank = ShapesFeatures()(-torch.ones(1, 3, 32, 32))
    assert blank["pred"].item() == -1 and blank["features"][0, -1] == 1


def test_npz_source_rejects_bad_arrays(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 28, 28), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        NpzSource(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", other=np.zeros(2))
    with pytest.raises(ValueError, match="holds no images"):
        NpzSource(tmp_path / "g.npz")
