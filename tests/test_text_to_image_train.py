"""Text-to-image training end to end on tiny U-ViT and VQ-Diffusion models (the shapes_uvit_text and
shapes_vqdiffusion_text presets, shrunk): the cached-context path trains bit-identically to encoding on the fly,
the learned null of VQ-Diffusion is what dropout and guidance use, and `versadiff sample --prompt` / `versadiff
generate --task text-to-image` write the same files for both families."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from versadiff.cli import main
from versadiff.config import load_config
from versadiff.models import load_model
from versadiff.train.trainer import Trainer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "text_to_image.py"
RUN = ["train.batch_size=8", "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
       "train.warmup_steps=1", "train.ema_decay=0.5", "sample.n=2", "sample.steps=2"]
UVIT = RUN + ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "data.dataset.size=32"]
VQAE = RUN + ["data.size=32", "model.base_channels=8", "model.norm_groups=4", "model.z_channels=8",
              "model.embed_dim=4", "model.n_embed=16"]
VQD = RUN + ["data.size=32", "model.depth=1", "model.dim=16", "model.num_heads=2", "model.num_embed=16",
             "model.num_steps=10", "discrete.num_steps=10", "sample.steps=2", "train.mixed_precision='no'"]


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "stats.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uvit_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("uvit_text")
    cfg = load_config("shapes_uvit_text", UVIT + [f"data.path={root / 'contexts.safetensors'}", "train.max_steps=3"])
    trainer = Trainer(cfg, out=root / "run", quiet=True)
    assert set(trainer.task.cached_contexts) == {"text"}
    encoder, calls = trainer.task.flows[0].encoder, []
    encode = encoder.encode
    encoder.encode = lambda inputs: calls.append(len(inputs)) or encode(inputs)
    run = trainer.run()
    # the training steps read the cache; only the final sample grid encodes: its null ("") and its 2 prompts
    assert calls == [1, 2]
    return run, root


def test_cached_contexts_train_bit_identically_to_encoding_on_the_fly(uvit_run, tmp_path):
    cached, root = uvit_run
    assert (root / "contexts.safetensors").is_file()
    # the same preset on the plain shapes data: the frozen CLIP encodes every batch's captions
    fly = load_config("shapes_uvit_text", UVIT + ["train.max_steps=3"])
    fly.data = dict(fly.data["dataset"])
    run = Trainer(fly, out=tmp_path / "fly", quiet=True).run()
    assert _losses(cached) == _losses(run) and len(_losses(run)) == 3
    a, b = (load_file(str(r / "export" / "model.safetensors")) for r in (cached, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_uvit_text_model_samples_from_prompts_via_sample_and_generate(uvit_run, tmp_path, capsys):
    run, _ = uvit_run
    model = load_model(run)
    assert list(model.flows) == ["text-to-image"] and model.net.config.extras == 1 + 32
    images = model.text_to_image(["a red circle", "a blue square"], seeds=[0, 1], steps=2, guidance=1.0)
    alone = model.text_to_image("a blue square", seeds=[1], steps=2, guidance=1.0)
    assert images.shape == (2, 3, 32, 32) and torch.allclose(images[1:], alone, atol=1e-5)
    s, g = tmp_path / "s", tmp_path / "g"
    assert main(["sample", str(run), "--n", "2", "--prompt", "a red circle", "--steps", "2", "--out", str(s),
                 "--quiet"]) == 0
    assert main(["generate", str(run), "--task", "text-to-image", "--prompt", "a red circle", "--n", "2",
                 "--steps", "2", "--out", str(g), "--quiet"]) == 0
    names = {p.name for p in s.iterdir()}
    assert names == {p.name for p in g.iterdir()} == {"seed000000.png", "seed000001.png", "grid.png", "settings.json"}
    settings = json.loads((s / "settings.json").read_text())
    assert [r["prompt"] for r in settings["images"]] == ["a red circle"] * 2 and settings["guidance"] == 1.0
    assert main(["sample", str(run), "--n", "1", "--prompt", "x", "--class", "1", "--out", str(tmp_path / "x")]) == 2
    assert "give --class or --prompt" in capsys.readouterr().err


def test_vq_diffusion_text_trains_with_its_learned_null(tmp_path):
    ae, vq = tmp_path / "ae", tmp_path / "vq"
    assert main(["train", "shapes_vqae", "--out", str(ae), "--quiet", "--set", *VQAE, "train.max_steps=2"]) == 0
    cfg = load_config("shapes_vqdiffusion_text", VQD + [f"autoencoder.path={ae}", "train.max_steps=3",
                                                         "discrete.p_uncond=0.5"])
    trainer = Trainer(cfg, out=vq, quiet=True)
    init = trainer.net.null_context.detach().clone()
    trainer.run()
    model = load_model(vq)
    flow = model.flows["text-to-image"]
    assert flow.flow.null == "zeros" and flow.encoder.config.context == "normalized"
    ctx, null = flow.contexts(["a red circle"], 1, torch.device("cpu"))
    assert torch.allclose(ctx.norm(dim=-1), torch.ones(1, 32)) and not null.any()  # zeros -> the learned null
    assert not torch.equal(model.net.null_context, init)  # dropped captions trained it
    s, g = tmp_path / "s", tmp_path / "g"
    assert main(["sample", str(vq), "--n", "2", "--prompt", "a red circle", "--steps", "2", "--out", str(s),
                 "--quiet"]) == 0
    assert main(["generate", str(vq), "--task", "text-to-image", "--prompt", "a red circle", "--n", "2",
                 "--steps", "2", "--out", str(g), "--quiet"]) == 0
    assert {p.name for p in s.iterdir()} == {p.name for p in g.iterdir()}
    # benchmarks/text_to_image.py's diffusers VQDiffusionPipeline runs the same weights
    spec = importlib.util.spec_from_file_location("t2i_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pipe = bench.vq_diffusers_pipeline(model)
    x, ctx = torch.randint(0, 17, (2, 64)), flow.encoder.encode(["a red circle", "a blue square"])
    ours = model.sampling.process.log_x0_from_logits(model.net(x, torch.tensor([7, 7]), context=ctx))
    theirs = pipe.transformer(x, encoder_hidden_states=ctx, timestep=torch.tensor(7)).sample.float()
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(pipe.learned_classifier_free_sampling_embeddings.embeddings.data, model.net.null_context.data)
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=32, return_tensors="pt").input_ids
    assert torch.equal(ids, flow.encoder.tokenizer(["a red circle"]))
