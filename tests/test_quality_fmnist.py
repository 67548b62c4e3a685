"""The Fashion-MNIST quality benchmark: the diffusers peer script and the driver's scoring and table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from extras import require_extra

require_extra("diffusers")  # installed but broken fails; missing skips with the reason (fails under CI)

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import peer_diffusers_fmnist as peer  # noqa: E402
import quality_fmnist as qf  # noqa: E402

# Fashion-MNIST is installed by the test set-up when absent (tests/extras.py), not skipped
needs_fmnist = pytest.mark.usefixtures("fashion_mnist")


@pytest.fixture(scope="module")
def random_unet():
    torch.manual_seed(0)
    return peer.build_unet().eval()


def test_peer_size_close_to_our_preset(random_unet):
    from versadiff.nets import count_parameters

    ours = count_parameters({"preset": "unet_tiny_gray", "num_classes": 10})
    assert abs(peer.count_parameters(random_unet) / ours - 1) < 0.10


def test_peer_image_depends_only_on_its_seed(random_unet):
    batch = peer.generate(random_unet, [3, 4, 5], [0, 1, 2], "ddim", 2, batch_size=3)
    alone = peer.generate(random_unet, [4], [1], "ddim", 2, batch_size=1)
    assert batch.shape == (3, 1, 28, 28) and batch.abs().max() <= 1
    # kernels differ by batch shape in the last bits; another seed would differ by O(1)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-3, rtol=0)
    assert not torch.allclose(batch[0], batch[1])


def test_peer_guidance_changes_samples(random_unet):
    plain = peer.generate(random_unet, [0, 1], [0, 1], "dpmpp", 2, guidance=0.0)
    guided = peer.generate(random_unet, [0, 1], [0, 1], "dpmpp", 2, guidance=1.0)
    assert (plain - guided).abs().max() > 1e-4


def test_peer_dpmpp_clips_x0_like_ddim():
    # the peer's DDIM clips x0 to [-1, 1] (clip_sample); its DPM-Solver++ must do the same, via thresholding
    sched = peer.build_sampler("dpmpp", peer.build_train_scheduler().config)
    x0 = torch.linspace(-3, 3, 2 * 28 * 28).reshape(2, 1, 28, 28)
    torch.testing.assert_close(sched._threshold_sample(x0), x0.clamp(-1, 1))
    assert peer.build_sampler("ddim", peer.build_train_scheduler().config).config.clip_sample


def test_peer_bad_input(random_unet):
    with pytest.raises(ValueError, match="one label per seed"):
        peer.generate(random_unet, [0, 1], [0], "ddim", 2)
    with pytest.raises(ValueError, match="unknown sampler"):
        peer.build_sampler("heun", peer.build_train_scheduler().config)
    assert peer.main(["sample", "nowhere", "--sampler", "ddim", "--steps", "2", "--n", "0", "--out", "x.npz"]) == 2


def test_peer_quantisation_matches_our_png_writer():
    from versadiff.images import to_pil

    x = torch.linspace(-1.2, 1.2, 2 * 28 * 28).reshape(2, 1, 28, 28)
    ours = np.stack([np.asarray(im) for im in to_pil(x)])
    np.testing.assert_array_equal(peer.to_uint8(x), ours)


@needs_fmnist
def test_peer_trains_saves_and_samples(tmp_path):
    rec = peer.train(tmp_path / "run", max_steps=2, batch_size=8, warmup=1, log_every=1)
    assert rec["steps"] == 2 and len(rec["log"]) == 2 and rec["parameters"] > 2e6
    assert (tmp_path / "run" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    unet = peer.load_unet(tmp_path / "run")
    images = peer.generate(unet, [0, 1], [0, 1], "ddpm", 3)
    path = peer.save_npz(tmp_path / "s.npz", images, [0, 1])
    with np.load(path) as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (2, 28, 28)
        assert f["labels"].tolist() == [0, 1]


def test_load_unet_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained peer network"):
        peer.load_unet(tmp_path)


@needs_fmnist
def test_score_separates_real_images_from_noise(tmp_path, fashion_mnist):
    from versadiff.data.idx import find_idx_pair, read_idx

    img_path, lbl_path = find_idx_pair(fashion_mnist, "train")
    real, labels = read_idx(img_path)[:200], read_idx(lbl_path)[:200].astype(np.int64)
    np.savez(tmp_path / "real.npz", images=real, labels=labels)
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=noise, labels=labels)
    np.savez(tmp_path / "wrong.npz", images=real, labels=(labels + 1) % 10)
    r, n, w = (qf.score(tmp_path / f"{k}.npz", tmp_path / "cache") for k in ("real", "noise", "wrong"))
    assert r["acc"] > 0.85 and w["acc"] < 0.15
    assert r["fd"] == pytest.approx(w["fd"])  # labels do not enter the Fréchet distance
    assert n["fd"] > 10 * r["fd"]


def test_save_samples_layout(tmp_path):
    x = torch.zeros(12, 1, 28, 28)
    with np.load(qf.save_samples(tmp_path / "s.npz", x, 12)) as f:
        assert f["images"].shape == (12, 28, 28) and int(f["images"][0, 0, 0]) == 128
        assert f["labels"].tolist() == [i % 10 for i in range(12)]


def test_warmup_and_cost_rules():
    assert qf.warmup_for(1000, 200) == 200
    assert qf.warmup_for(150, 200) == 30
    assert qf.warmup_for(3, 200) == 1
    assert qf.Setting("dpmpp", 10, 0.0, 200).nfe_images == 2000
    assert qf.Setting("dpmpp", 10, 1.0, 200).nfe_images == 4000
    assert qf.Setting("ddpm", 1000, 1.0, 50).key == "ddpm1000_w1"


def test_train_commands_share_batch_and_budget_steps(tmp_path):
    ours = qf.train_command("ours-unet", tmp_path, 123, 24, 12)
    theirs = qf.train_command("peer", tmp_path, 123, 24, 12)
    assert "fmnist_unet_tiny" in ours and "train.max_steps=123" in ours and "train.batch_size=64" in ours
    assert theirs[theirs.index("--max-steps") + 1] == "123" and theirs[theirs.index("--batch-size") + 1] == "64"


def test_table_margins_errors_and_missing():
    row = lambda c, k, acc, fd: {"contender": c, "setting": k, "n": 200, "acc": acc, "fd": fd}  # noqa: E731
    results = {
        "device": "test CPU", "budget_min": 8,
        "train": {c: {"steps": 10, "wall_s": 480.0, "parameters": 2e6, "calibrated_steps_per_s": 0.5,
                        "train_steps_per_s": 0.02} for c in qf.CONTENDERS},
        "rows": [row("ours-unet", "ddim10_w0", 0.60, 30.0), row("ours-uvit", "ddim10_w0", 0.70, 40.0),
                 row("peer", "ddim10_w0", 0.50, 60.0),
                 {"contender": "ours-unet", "setting": "ddim10_w1", "n": 200, "error": "no guidance"}],
        "requested": ["ddim10_w0", "ddim10_w1"],
    }
    table = qf.markdown(results)
    line = next(ln for ln in table.splitlines() if ln.startswith("| ddim10_w0 |"))
    assert line.endswith("| +0.200 | x0.50 |")  # best acc 0.70 vs 0.50; best FD 30 / 60
    assert "ours-unet ddim10_w1: no guidance" in table
    # failed rows are reported as failures, pairs with no row at all as not run yet
    assert "Not run yet" in table and "ours-uvit ddim10_w1, peer ddim10_w1" in table
    assert "ours-unet ddim10_w1," not in table.split("Not run yet")[1]
    assert "test CPU" in table and "| ours-unet | 2.00M | 0.500 | 10 | 0.020 | 480 |" in table


@needs_fmnist
def test_worker_appends_rows_and_resumes(tmp_path):
    peer.train(tmp_path / "train" / "peer", max_steps=1, batch_size=4, warmup=1, log_every=1)
    settings = [qf.Setting("ddim", 2, 0.0, 10), qf.Setting("ddim", 2, 1.0, 10)]
    qf.sample_and_score("peer", tmp_path, settings[:1])
    rows = qf.read_rows(qf.rows_file(tmp_path, "peer"))
    assert [r["setting"] for r in rows] == ["ddim2_w0"] and rows[0]["fd"] > 0
    npz = tmp_path / "samples" / "peer_ddim2_w0.npz"
    assert npz.is_file()
    # the row's accuracy is the classifier's on the saved samples (an oracle, not a range)
    from versadiff.eval.classifier import load_fmnist_classifier

    with np.load(npz) as f:
        x = torch.from_numpy(f["images"]).float().div(127.5).sub(1)[:, None]
        pred = load_fmnist_classifier()(x).argmax(1).numpy()
        assert rows[0]["acc"] == pytest.approx(float((pred == f["labels"]).mean()), abs=1e-12)
    qf.sample_and_score("peer", tmp_path, settings)  # the scored setting is kept, only the new one runs
    again = qf.read_rows(qf.rows_file(tmp_path, "peer"))
    assert [r["setting"] for r in again] == ["ddim2_w0", "ddim2_w1"] and again[0] == rows[0]
    with pytest.raises(ValueError, match="already scored ddim2_w0 with N=10, not 20"):
        qf.sample_and_score("peer", tmp_path, [qf.Setting("ddim", 2, 0.0, 20)])


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        qf.main(["--out", str(tmp_path), "--settings", "ddim7_w0"])
    assert "unknown settings ['ddim7_w0']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qf.main(["--out", str(tmp_path), "--skip-train"])
    assert "--skip-train needs the trained runs" in capsys.readouterr().err


def test_grid_has_one_block_per_contender(tmp_path):
    from PIL import Image

    (tmp_path / "samples").mkdir()
    for value, c in enumerate(["a", "b"]):
        np.savez(tmp_path / "samples" / f"{c}_ddim20_w1.npz", images=np.full((30, 28, 28), 100 + value, np.uint8),
                 labels=np.arange(30) % 10)
    grid = np.asarray(Image.open(qf.write_grid(tmp_path, ["a", "b"], "ddim20_w1")))
    assert grid.shape == (2 * 90 + 8, 300)
    assert grid[1, 1] == 100 and grid[98 + 1, 1] == 101  # block b starts after block a and the 8-px gap
    assert qf.write_grid(tmp_path, ["a", "missing"], "ddim20_w1") is None
