"""Tasks end to end through the CLI: VQ autoencoder -> VQ-Diffusion -> sample -> eval, exact resume of the
vq_diffusion task, and latent Gaussian diffusion on a tiny KL autoencoder. Tiny sizes, a few steps each."""

import json

import pytest
import torch

from versadiff.cli import main
from versadiff.config import ConfigError, load_config
from versadiff.autoencoders import load_autoencoder
from versadiff.models import load_model
from versadiff.pipelines import Pipeline
from versadiff.sampling import DiscreteSampling
from versadiff.tasks import check_config
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer


RUN = ["data.size=32", "train.batch_size=8", "train.log_every=1", "train.sample_every=0", "train.warmup_steps=1",
       "train.ema_decay=0.5", "sample.n=4"]
VQAE = RUN + ["model.base_channels=8", "model.norm_groups=4", "model.z_channels=8", "model.embed_dim=4",
              "model.n_embed=16"]
VQD = RUN + ["model.depth=1", "model.dim=16", "model.num_heads=2", "model.num_embed=16", "model.num_steps=10",
             "discrete.num_steps=10", "sample.steps=5", "train.mixed_precision='no'"]


@pytest.fixture(scope="module")
def vq_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vq")
    ae, vq = root / "ae", root / "vq"
    assert main(["train", "shapes_vqae", "--out", str(ae), "--quiet", "--set", *VQAE, "train.max_steps=3"]) == 0
    assert main(["train", "shapes_vqdiffusion", "--out", str(vq), "--quiet", "--set", *VQD,
                 f"autoencoder.path={ae}", "train.max_steps=3"]) == 0
    return ae, vq


def test_vq_autoencoder_run_logs_codebook_and_exports(vq_runs):
    ae, _ = vq_runs
    assert (ae / "export" / "model.safetensors").is_file() and (ae / "samples" / "step-00000003.png").is_file()
    rows = [json.loads(line) for line in (ae / "stats.jsonl").read_text().splitlines()]
    assert all(1 <= r["codebook_used"] <= 16 and r["codebook_perplexity"] >= 1.0 for r in rows)
    net = load_autoencoder(ae)
    assert net.config.n_embed == 16 and not any(p.requires_grad for p in net.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = net.encode_tokens(x)
    assert tokens.shape == (2, 64) and net.decode_tokens(tokens, (8, 8)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="autoencoder, which has no sampler"):
        load_model(ae)


def test_vq_diffusion_generate_is_per_seed_and_honours_options(vq_runs):
    _, vq = vq_runs
    model = load_model(vq)
    assert isinstance(model, Pipeline) and isinstance(model.sampling, DiscreteSampling)
    assert model.num_classes == 18 and model.sample_shape() == (8, 8)
    both = model.generate([3, 4], class_labels=[1, 2], steps=5, guidance=1.0, truncation=0.9)
    alone = model.generate([4], class_labels=[2], steps=5, guidance=1.0, truncation=0.9)
    # same tokens; the decoder convolutions may round differently per batch size
    assert both.shape == (2, 3, 32, 32) and torch.allclose(both[1:], alone, atol=1e-5)
    assert not torch.equal(model.generate([4], class_labels=[2], steps=10), alone)
    with pytest.raises(ValueError, match="takes all 10 steps"):
        model.generate([0], sampler="standard", steps=5)
    with pytest.raises(ValueError, match="truncation rate"):
        model.generate([0], truncation=0.0)


def test_vq_diffusion_sample_and_eval_cli(vq_runs, tmp_path, capsys):
    _, vq = vq_runs
    out = tmp_path / "samples"
    assert main(["sample", str(vq), "--n", "4", "--steps", "5", "--guidance", "2", "--truncation", "0.85",
                 "--out", str(out), "--quiet"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["truncation"] == 0.85 and settings["steps"] == 5 and len(list(out.glob("seed*.png"))) == 4
    report = tmp_path / "report.json"
    assert main(["eval", str(vq), "--n", "6", "--metrics", "shapes_acc", "--truncation", "0.9", "--steps", "2",
                 "--out", str(report), "--quiet"]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    # the reader's class of the very images eval samples (seed i, class i mod 18), not a range
    from versadiff.eval.evaluate import GeneratorSource
    from versadiff.eval.features import ShapesFeatures

    images, labels = GeneratorSource(load_model(vq), n=6, steps=2, truncation=0.9).batch(range(6))
    assert metrics["shapes_acc"] == (ShapesFeatures()(images)["pred"] == labels).sum().item() / 6


def test_vq_diffusion_resume_is_exact(vq_runs, tmp_path):
    ae, _ = vq_runs
    cfg = load_config("shapes_vqdiffusion", VQD + [f"autoencoder.path={ae}", "train.max_steps=4",
                                                   "train.checkpoint_every=2", "model.dropout=0.1"])
    full = Trainer(cfg, out=tmp_path / "full", quiet=True)
    full.run()
    killed = tmp_path / "killed"
    Trainer(cfg, out=killed, quiet=True).run(until=3)
    resumed = Trainer(cfg, out=killed, resume=True, quiet=True)
    assert resumed.step == 2 and resumed.task.process.lt_count.sum() == 2 * 8
    resumed.run()
    for name in ("model.safetensors", "ema.safetensors"):
        a = ck.load_tensors(ck.latest_checkpoint(tmp_path / "full" / "checkpoints") / name)
        b = ck.load_tensors(ck.latest_checkpoint(killed / "checkpoints") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.task.process.lt_history, resumed.task.process.lt_history)


def test_latent_gaussian_diffusion_on_a_tiny_kl_autoencoder(tmp_path):
    kl = tmp_path / "kl"
    Trainer(load_config("shapes_klae", RUN + ["model.base_channels=8", "model.norm_groups=4", "train.max_steps=2"]),
            out=kl, quiet=True).run()
    tiny_unet = ["model.base_channels=16", "model.norm_groups=8", "model.emb_channels=32", "model.num_heads=1",
                 "sample.steps=3"]
    cfg = load_config("shapes_latent_unet", RUN + tiny_unet + [f"autoencoder.path={kl}", "train.max_steps=2"])
    run = Trainer(cfg, out=tmp_path / "latent", quiet=True).run()
    model = load_model(run)
    assert model.flows["class-to-image"].codec.module is not None and model.sample_shape() == (4, 8, 8)
    images = model.generate([0, 1], class_labels=[0, 5])
    assert images.shape == (2, 3, 32, 32) and images.std() > 0
    # decoded through the KL codec per sample: image 1 alone is image 1 of the batch
    torch.testing.assert_close(model.generate([1], class_labels=[5]), images[1:], rtol=0, atol=1e-4)
    bad = load_config("shapes_latent_unet", RUN + tiny_unet + [f"autoencoder.path={kl}", "model.in_channels=3"])
    with pytest.raises(ValueError, match="set model.in_channels=4"):
        Trainer(bad, out=tmp_path / "bad", quiet=True)


@pytest.mark.parametrize("argv, fragment", [
    (["train", "shapes_vqdiffusion"], "train one first: versadiff train shapes_vqae"),
    (["train", "shapes_vqae", "--set", "ae_loss.disc_weight=0.5"], "'ae_loss.disc_weight' (the trainer runs no"),
    (["train", "shapes_vqae", "--set", "task=nope", "--dry-run"], "'task' must be one of autoencoder, clip, gaussian, text_vae, vq_diffusion"),
    (["train", "shapes_unet_tiny", "--set", "discrete.num_steps=10", "--dry-run"], "'discrete' applies to task vq"),
    (["train", "shapes_vqdiffusion", "--set", "diffusion.prediction=v", "--dry-run"], "section 'diffusion' applies"),
    (["train", "shapes_vqdiffusion", "--set", "sample.truncation=1.5", "--dry-run"], "(0, 1]"),
])
def test_task_errors_are_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_vq_path_must_hold_a_vq_autoencoder(tmp_path):
    kl = tmp_path / "kl"
    Trainer(load_config("shapes_klae", RUN + ["model.base_channels=8", "model.norm_groups=4", "train.max_steps=1"]),
            out=kl, quiet=True).run()
    with pytest.raises(ValueError, match="holds a KL autoencoder"):
        Trainer(load_config("shapes_vqdiffusion", VQD + [f"autoencoder.path={kl}"]), out=tmp_path / "v", quiet=True)
    with pytest.raises(ConfigError, match="remove the 'autoencoder' section"):
        check_config(load_config("shapes_vqae", [f"autoencoder.path={kl}"]))
