"""`mixed_precision: auto`: the resolver on faked CPUs/GPUs, what a run records, and exact resume across machines."""

import json

import pytest
import torch

import versadiff.precision as precision
from versadiff.cli import main
from versadiff.config import TrainConfig, list_presets, load_config
from versadiff.errors import DeviceError
from versadiff.precision import cpu_native_bf16, resolve_precision
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer
from versadiff.weights import read_metadata

TINY = ["data.size=16", "train.batch_size=8", "model.base_channels=16", "model.norm_groups=8",
        "model.channel_mult=[1, 2]", "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.emb_channels=32",
        "train.log_every=1", "sample.n=2", "sample.steps=2", "sample.guidance=0", "train.mixed_precision=auto",
        "model.dropout=0.1"]


@pytest.mark.parametrize("capability, flags, machine, native", [
    ("AVX2", {"avx2", "fma"}, "x86_64", False),               # AVX2-only: bf16 is emulated (8-18x slower)
    ("AVX2", {"avx2", "avx512_bf16", "amx_bf16"}, "x86_64", False),  # ATEN_CPU_CAPABILITY=avx2 on an AMX machine
    ("AVX512", {"avx512f", "avx512bw"}, "x86_64", False),     # AVX-512 without BF16 (Skylake-X)
    ("AVX512", {"avx512f", "avx512_bf16"}, "x86_64", True),   # Cooper Lake / Zen 4
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "x86_64", True),  # Sapphire Rapids
    ("AMX", set(), "x86_64", True),                           # capability strings that name it
    ("AVX512_BF16", set(), "x86_64", True),
    ("NO AVX", set(), "x86_64", False),
    ("DEFAULT", set(), "x86_64", False),
    ("DEFAULT", {"fp", "asimd", "bf16"}, "aarch64", True),    # Neoverse V1 / Graviton 3
    ("SVE256", {"fp", "asimd", "sve"}, "aarch64", False),
])
def test_cpu_bf16_detection_on_fake_cpus(capability, flags, machine, native):
    assert cpu_native_bf16(capability, flags, machine) is native


def test_this_machine_is_detected_consistently():
    native = cpu_native_bf16()
    assert isinstance(native, bool)
    flags = precision.cpu_flags()
    if torch.backends.cpu.get_cpu_capability() == "AVX2" or not flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        assert not native or "bf16" in torch.backends.cpu.get_cpu_capability().lower()


@pytest.mark.parametrize("requested, device, cpu, cuda, want", [
    ("auto", "cpu", True, None, "bf16"),
    ("auto", "cpu", False, None, "no"),
    ("auto", "cuda", None, True, "bf16"),
    ("auto", "cuda", None, False, "no"),     # pre-Ampere GPUs: fp32, never fp16 unless asked
    ("auto", "mps", None, None, "no"),
    ("no", "cuda", None, True, "no"),
    ("bf16", "cpu", False, None, "bf16"),    # asked for: honoured (and said to be emulated)
    ("fp16", "cuda", None, False, "fp16"),
])
def test_resolver(requested, device, cpu, cuda, want):
    got, why = resolve_precision(requested, device, cpu_bf16=cpu, cuda_bf16=cuda)
    assert got == want and why
    if requested == "bf16" and cpu is False:
        assert "emulated" in why


def test_fp16_off_a_gpu_is_a_one_line_error():
    with pytest.raises(DeviceError, match=r"train.mixed_precision=fp16 needs a CUDA GPU; on cpu use auto, bf16 or no"):
        resolve_precision("fp16", "cpu")


def test_auto_is_the_default_of_the_config_and_no_preset_hard_codes_bf16():
    assert TrainConfig().mixed_precision == "auto"
    chosen = {n: load_config(n).train.mixed_precision for n in list_presets()}
    assert "bf16" not in chosen.values() and "fp16" not in chosen.values()
    assert chosen["shapes_unet_tiny"] == chosen["uvit_cifar10"] == "auto"  # fp32 ("no") only where measured slower


def _fake_cpu(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_native_bf16", lambda *a, **k: native)


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "no")])
def test_a_run_with_auto_records_the_resolved_precision(native, want, tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, native)
    run = tmp_path / "run"
    t = Trainer(load_config("shapes_unet_tiny", TINY + ["train.max_steps=1"]), out=run, quiet=True)
    assert t.accelerator.mixed_precision == want
    t.run()
    record = json.loads((run / "run.json").read_text())
    assert (record["mixed_precision"], record["mixed_precision_resolved"]) == ("auto", want)
    first = json.loads((run / "stats.jsonl").read_text().splitlines()[0])
    assert first["mixed_precision_resolved"] == want
    assert (run / "config.yaml").read_text().startswith(f"# train.mixed_precision: auto -> resolved {want} (auto: ")
    cfg, info = read_metadata(run / "export" / "model.safetensors")
    assert cfg.train.mixed_precision == "auto" and info["mixed_precision"] == want


def test_resume_keeps_the_precision_it_started_with_bitwise(tmp_path, monkeypatch):
    cfg = load_config("shapes_unet_tiny", TINY + ["train.max_steps=3", "train.checkpoint_every=1"])
    _fake_cpu(monkeypatch, True)
    Trainer(cfg, out=tmp_path / "full", quiet=True).run()
    Trainer(cfg, out=tmp_path / "killed", quiet=True).run(until=2)
    _fake_cpu(monkeypatch, False)  # "another machine": auto would now mean fp32
    resumed = Trainer(cfg, out=tmp_path / "killed", resume=True, quiet=True)
    assert resumed.precision == "bf16" and "recorded in its checkpoint" in resumed.precision_reason
    resumed.run()
    for name in ("model.safetensors", "ema.safetensors"):
        a = ck.load_tensors(ck.latest_checkpoint(tmp_path / "full" / "checkpoints") / name)
        b = ck.load_tensors(ck.latest_checkpoint(tmp_path / "killed" / "checkpoints") / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_sample_precision_is_applied_and_recorded(tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, True)
    run = tmp_path / "run"
    Trainer(load_config("shapes_unet_tiny", TINY + ["train.max_steps=1", "train.mixed_precision=no"]), out=run,
            quiet=True).run()
    seen = []
    real = torch.autocast.__init__

    def spy(self, *a, **k):
        seen.append(k.get("dtype"))
        real(self, *a, **k)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    for p, want, dtype in (("auto", "bf16", torch.bfloat16), ("no", "no", None)):
        seen.clear()
        out = tmp_path / f"s-{p}"
        assert main(["sample", str(run), "--n", "1", "--steps", "1", "--precision", p, "--out", str(out),
                     "--quiet"]) == 0
        s = json.loads((out / "settings.json").read_text())
        assert (s["precision_requested"], s["precision"]) == (p, want) and s["complete"] is True
        assert (dtype in seen) if dtype else torch.bfloat16 not in seen
