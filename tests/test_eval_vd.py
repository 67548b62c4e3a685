"""`versadiff eval --task`: VD's text -> image and image -> text flows scored against a COCO-captions set, on the
shipped vd-shapes model (few steps, n = 8) and a shapes caption set written here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from versadiff.eval.captions import CaptionImageSource, load_caption_set, write_shapes_caption_set
from versadiff.eval.evaluate import EvalOptions, write_report
from versadiff.eval.features import FeatureExtractor, build_feature_extractor
from versadiff.eval.metrics import clip_score
from versadiff.eval.text_metrics import caption_metric, reference_streams
from versadiff.eval.vd import PromptSource, evaluate_flow

N, STEPS = 8, 6


class PixelFeatures(FeatureExtractor):
    """A fast stand-in for the FID Inception network (whose weights are not shipped): a fixed random projection."""

    name = "pixel_projection_12"
    dim = 12

    def __init__(self) -> None:
        self.proj = torch.randn(3 * 32 * 32, 12, generator=torch.Generator().manual_seed(0))

    def extract(self, images):
        return {"features": images.flatten(1) @ self.proj}


def caption_set_dir(root: Path) -> Path:
    folder = root / "shapes_captions"
    if not folder.exists():
        write_shapes_caption_set(folder, N)
    return folder


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return load_caption_set(caption_set_dir(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def vd():
    from versadiff.models import load_model

    return load_model("vd-shapes")


def run_t2i(model, captions, batch_size: int = 4) -> dict:
    opts = EvalOptions(metrics=["fid", "shapes_fd", "clip"], batch_size=batch_size, seed=5)
    return evaluate_flow(model, "text-to-image", captions, opts, steps=STEPS, extractors={"inception": PixelFeatures()})


def run_i2t(model, captions, batch_size: int = 4) -> dict:
    opts = EvalOptions(metrics=["bleu", "chrf", "clip"], batch_size=batch_size, seed=5)
    return evaluate_flow(model, "image-to-text", captions, opts, steps=STEPS)


def test_shapes_caption_set_is_coco_format_with_every_true_phrasing(captions):
    from versadiff.data.shapes import ShapesDataset, parse_caption

    doc = json.loads(captions.json_path.read_text())
    assert {"images", "annotations"} <= set(doc) and len(doc["images"]) == N
    ds = ShapesDataset(size=N, seed=1)
    ref = CaptionImageSource(captions).images(range(N))
    for i in range(N):
        truth = ds.describe(i)["shapes"][0]
        caps = captions.captions[i]
        assert caps[0] == ds.describe(i)["caption"] and len(caps) == len(set(caps)) == 6
        for c in caps:  # every reference caption is true of its image
            stated = parse_caption(c)
            assert all(stated[k] == truth[k] for k in stated), (c, truth)
    # the PNGs are the dataset's images, 8-bit quantised
    want = ((ds.render(list(range(N))).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    torch.testing.assert_close(ref, want, atol=1e-6, rtol=0)
    # n > M walks through each image's other captions
    assert [captions.prompt(i) for i in (0, 1, N)] == [captions.captions[0][0], captions.captions[1][0],
                                                        captions.captions[0][1]]


def test_text_to_image_metrics_are_finite_deterministic_and_clip_prefers_matching_prompts(vd, captions):
    one = run_t2i(vd, captions)
    assert one["task"] == "text-to-image" and set(one["metrics"]) == {"fid", "shapes_fd", "clip"}
    assert all(np.isfinite(v) for v in one["metrics"].values())
    s = one["samples"]
    assert (s["n"], s["seeds"], s["sampler"], s["steps"], s["guidance"]) == (N, [5, 5 + N - 1], "ddim", STEPS, 2.0)
    assert one["reference"]["caption_set"]["images"] == N and one["versions"]["torch"]
    two = run_t2i(vd, captions)
    assert json.dumps(two, default=str) == json.dumps(one, default=str)

    # CLIP score of the very samples against their prompts, and against shuffled prompts: a matching caption
    # must score far higher (the model draws what it is asked for)
    source = PromptSource(vd, captions, N, seed=5, steps=STEPS)
    images = source.batch(list(range(N)))[0]
    clip = build_feature_extractor("clip", model_dir="asset:vd_shapes/clip")
    img = clip(images)["features"].numpy()
    matched = clip_score(img, clip.text_features(source.prompts).numpy())
    shuffled = clip_score(img, clip.text_features(source.prompts[3:] + source.prompts[:3]).numpy())
    assert one["metrics"]["clip"] == pytest.approx(matched, abs=1e-4)
    assert matched > shuffled + 25, (matched, shuffled)


def test_image_to_text_bleu_is_far_above_shuffled_and_equals_sacrebleu(vd, captions):
    import sacrebleu

    rep = run_i2t(vd, captions)
    m = rep["metrics"]
    assert set(m) == {"bleu", "chrf", "clip"} and 0 <= m["clip"] <= 100
    texts = [c["text"] for c in rep["captions"]]
    assert [c["seed"] for c in rep["captions"]] == list(range(5, 5 + N))
    refs = captions.captions
    # a direct sacrebleu call on the same strings (every image has six references: one stream per slot)
    streams = [[refs[i][k] for i in range(N)] for k in range(6)]
    assert m["bleu"] == sacrebleu.corpus_bleu(texts, streams).score
    assert m["chrf"] == sacrebleu.corpus_chrf(texts, streams).score
    assert rep["metric_details"]["bleu"]["signature"].startswith("nrefs:6")
    shuffled = caption_metric("bleu", texts[1:] + texts[:1], refs)["score"]
    assert m["bleu"] > 60 and m["bleu"] > shuffled + 30, (m["bleu"], shuffled)
    # another batch size: the same captions (sample i depends on its seed and image only)
    assert [c["text"] for c in run_i2t(vd, captions, batch_size=8)["captions"]] == texts


def test_reference_streams_pad_uneven_references_as_sacrebleu_takes_them():
    import sacrebleu

    hyps = ["a red circle on the left", "a big blue square", "green triangle"]
    refs = [["a red circle on the left", "a red circle"], ["a blue square"], ["a green triangle", "green", "tri"]]
    streams = reference_streams(refs)
    assert streams == [[refs[0][0], refs[1][0], refs[2][0]], [refs[0][1], None, refs[2][1]], [None, None, refs[2][2]]]
    assert caption_metric("bleu", hyps, refs)["score"] == sacrebleu.corpus_bleu(hyps, streams).score
    assert caption_metric("chrf", hyps, refs)["score"] == sacrebleu.corpus_chrf(hyps, streams).score


def test_cli_reports_and_one_line_errors(tmp_path, capsys, captions):
    from versadiff.cli import main

    folder = caption_set_dir(tmp_path)
    common = ["--steps", "4", "-n", "4", "--batch-size", "2", "--seed", "3", "--quiet"]
    assert main(["eval", "vd-shapes", "--task", "text-to-image", "--captions", str(folder), "--metrics",
                 "shapes_fd,clip", "-o", str(tmp_path / "t2i.json"), *common]) == 0
    r = json.loads((tmp_path / "t2i.json").read_text())
    assert r["task"] == "text-to-image" and set(r["metrics"]) == {"shapes_fd", "clip"}
    assert {"n", "seeds", "sampler", "steps", "guidance", "precision"} <= set(r["samples"]) and r["versions"]
    assert r["samples"]["seeds"] == [3, 6] and r["settings"]["metrics"] == ["shapes_fd", "clip"]
    assert main(["eval", "vd-shapes", "--task", "image-to-text", "--captions", str(folder / "captions.json"),
                 "-o", str(tmp_path / "i2t.json"), *common]) == 0
    r = json.loads((tmp_path / "i2t.json").read_text())
    assert set(r["metrics"]) == {"bleu", "chrf", "clip"} and len(r["captions"]) == 4
    assert r["versions"]["sacrebleu"] and r["settings"]["clip_model"] == "asset:vd_shapes/clip"
    capsys.readouterr()

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notjson.json").write_text("{images: ")
    (bad / "nokeys.json").write_text(json.dumps({"images": []}))
    (bad / "orphan.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                                                 "annotations": [{"image_id": 2, "caption": "x"}]}))
    (bad / "missing.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "nope.png"}],
                                                  "annotations": [{"image_id": 1, "caption": "a red circle"}]}))
    cases = [
        (["--task", "text-to-image", "--captions", str(bad / "notjson.json")], "not valid JSON"),
        (["--task", "text-to-image", "--captions", str(bad / "nokeys.json")], "'annotations'"),
        (["--task", "image-to-text", "--captions", str(bad / "orphan.json")], "image_id 2"),
        (["--task", "image-to-text", "--captions", str(bad / "missing.json")], "nope.png"),
        (["--task", "text-to-image", "--captions", str(folder), "--metrics", "bleu"], "does not fit"),
        (["--task", "image-to-text", "--captions", str(folder), "--metrics", "fid"], "does not fit"),
        (["--task", "text-to-image", "--captions", str(folder), "--metrics", "shapes_acc"], "class labels"),
        (["--task", "image-variation", "--captions", str(folder)], "--task text-to-image or image-to-text"),
        (["--task", "text-to-image"], "--captions"),
        (["--task", "text-to-image", "--captions", str(folder), "--ref", str(folder)], "--ref"),
    ]
    for extra, needle in cases:
        assert main(["eval", "vd-shapes", "-o", str(tmp_path / "r.json"), "--quiet", *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, (extra, err)
    # a model that lacks the flow (the class-conditional shapes UNet)
    assert main(["eval", "shapes-unet", "--task", "image-to-text", "--captions", str(folder), "-o",
                 str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no 'image-to-text' flow" in err and "\n" not in err
    assert not (tmp_path / "r.json").exists()
    # the caption-set writer refuses a folder in use, and needs -n
    assert main(["eval", "--write-caption-set", "shapes", "-n", "2", "-o", str(folder)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["eval", "--write-caption-set", "shapes", "-o", str(tmp_path / "new")]) == 2
    assert "-n" in capsys.readouterr().err


def run_both(folder: Path, out: Path) -> None:
    """What the 1-process run and each of the 2 workers compute (n = 8 in batches of 3: 3 batches, uneven split)."""
    from versadiff.models import load_model

    model, caps = load_model("vd-shapes"), load_caption_set(folder)
    reports = {"t2i": evaluate_flow(model, "text-to-image", caps, EvalOptions(metrics=["shapes_fd", "clip"],
                                                                                batch_size=3), steps=4),
               "i2t": evaluate_flow(model, "image-to-text", caps, EvalOptions(metrics=["bleu", "chrf", "clip"],
                                                                                batch_size=3), steps=4)}
    processes = {r.pop("runtime")["num_processes"] for r in reports.values()}
    write_report({"reports": reports, "num_processes": sorted(processes)}, out)


def test_two_processes_give_the_one_process_report(tmp_path):
    folder = caption_set_dir(tmp_path)
    run_both(folder, tmp_path / "one.json")
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import torch\ntorch.set_num_threads(1)\n"
        "from test_eval_vd import run_both\n"
        "run_both(Path(sys.argv[1]), Path(sys.argv[2]))\n"
    )
    port = str(20000 + (os.getpid() + 7) % 20000)
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, str(script), str(folder), str(tmp_path / "two.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == ([1], [2])
    assert two["reports"] == one["reports"] and one["reports"]["i2t"]["metrics"]["bleu"] > 0
