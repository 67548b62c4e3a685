"""The converter registry and the `convert` command: detection, safe reading, option and key errors (one line,
full lists in a file), dtype casting, versadiff files recognised as such."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from versadiff.convert.formats import (
    KeyReport,
    build_parser,
    cast_state,
    detect_format,
    foreign_format,
    list_formats,
    load_foreign,
    main,
    read_checkpoint,
    write_foreign,
)


def uvit_state(extra=()):
    d, gen = 16, torch.Generator().manual_seed(0)
    s = {
        "patch_embed.proj.weight": (d, 3, 2, 2),
        "patch_embed.proj.bias": (d,),
        "pos_embed": (1, 17, d),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "decoder_pred.weight": (12, d),
        "decoder_pred.bias": (12,),
    }
    for p, skip in (("in_blocks.0", False), ("mid_block", False), ("out_blocks.0", True)):
        s.update(
            {
                f"{p}.norm1.weight": (d,),
                f"{p}.norm1.bias": (d,),
                f"{p}.attn.qkv.weight": (3 * d, d),
                f"{p}.attn.proj.weight": (d, d),
                f"{p}.attn.proj.bias": (d,),
                f"{p}.norm2.weight": (d,),
                f"{p}.norm2.bias": (d,),
                f"{p}.mlp.fc1.weight": (4 * d, d),
                f"{p}.mlp.fc1.bias": (4 * d,),
                f"{p}.mlp.fc2.weight": (d, 4 * d),
                f"{p}.mlp.fc2.bias": (d,),
            }
        )
        if skip:
            s.update({f"{p}.skip_linear.weight": (d, 2 * d), f"{p}.skip_linear.bias": (d,)})
    s.update(dict(extra))
    return {k: torch.randn(v, generator=gen) * 0.1 for k, v in s.items()}


class NeedsCode:
    pass


def test_pickles_that_need_code_are_refused(tmp_path):
    torch.save({"model": NeedsCode(), "w": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        read_checkpoint(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "\n" not in msg and "needs code" in msg and "NeedsCode" in msg
    torch.save({"args": argparse.Namespace(lr=1.0)}, tmp_path / "ns.pth")
    with pytest.raises(ValueError, match="needs code"):
        load_foreign(tmp_path / "ns.pth", format="uvit")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        detect_format(tmp_path / "junk.pth")


def test_detection_options_and_key_reports(tmp_path, capsys):
    torch.save(uvit_state(), tmp_path / "nnet_ema.pth")
    assert detect_format(tmp_path / "nnet_ema.pth") == "uvit"
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="in no format versadiff knows"):
        detect_format(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="takes no option 'heads'; its options: .*num_heads"):
        load_foreign(tmp_path / "nnet_ema.pth", heads=2)
    # an unexpected key: one line, and the full lists in a file next to the output
    torch.save(uvit_state(extra={"label_proj.weight": (4, 4)}), tmp_path / "extra.pth")
    with pytest.raises(ValueError) as err:
        write_foreign(load_foreign(tmp_path / "extra.pth", num_heads=2), tmp_path / "out_bad")
    assert "1 unexpected (e.g. label_proj.weight)" in str(err.value) and "\n" not in str(err.value)
    assert json.loads((tmp_path / "out_bad" / "missing_keys.json").read_text())["unexpected"] == ["label_proj.weight"]
    # the command: writes the model and the report, prints one summary line; the result is a versadiff file
    assert (
        main(
            [
                str(tmp_path / "nnet_ema.pth"),
                "--out",
                str(tmp_path / "out"),
                "--option",
                "num_heads=2",
                "--dtype",
                "bf16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "wrote" in printed and "keys: all keys matched" in printed
    assert detect_format(tmp_path / "out" / "model.safetensors") == "versadiff"
    assert detect_format(tmp_path / "out") == "versadiff"
    from versadiff.weights import load_tensors

    assert load_tensors(tmp_path / "out" / "model.safetensors")["pos_embed"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="already a versadiff model"):
        load_foreign(tmp_path / "out")
    with pytest.raises(ValueError, match="no diffusers layout"):
        main(
            [
                str(tmp_path / "nnet_ema.pth"),
                "--to",
                "diffusers",
                "--out",
                str(tmp_path / "d"),
                "--option",
                "num_heads=2",
            ]
        )
    report = json.loads((tmp_path / "out" / "conversion_report.json").read_text())
    assert report["missing"] == [] and any("time input" in n for n in report["notes"])
    # what load_model asks: a foreign format, or None so that its own messages stay
    assert foreign_format(tmp_path / "nnet_ema.pth") == "uvit"
    assert foreign_format(tmp_path / "out") is None and foreign_format(tmp_path / "out" / "model.safetensors") is None
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    (tmp_path / "config.yaml").write_text("a: 1")
    assert foreign_format(tmp_path / "junk.safetensors") is None and foreign_format(tmp_path / "config.yaml") is None
    assert foreign_format(tmp_path) is None  # a folder holding no model
    with pytest.raises(ValueError, match="in no format versadiff knows"):
        foreign_format(tmp_path / "other.pth")


def test_registry_and_casting():
    FORMATS = list_formats()
    assert {
        "vd_v0",
        "vd_v1",
        "vd_diffusers",
        "vd_dc",
        "optimus",
        "sd_ldm",
        "sd_diffusers",
        "ldm_kl_vae",
        "uvit",
        "vq_diffusion",
        "vq_diffusion_diffusers",
        "taming_vqgan",
        "vdpm",
    } <= set(FORMATS)
    assert all(f.command.startswith("versadiff convert ") for f in FORMATS.values())
    help_text = build_parser().format_help()
    assert all(name in help_text for name in FORMATS)
    s = cast_state({"a": torch.zeros(2, dtype=torch.float16), "i": torch.zeros(2, dtype=torch.long)}, "float32")
    assert s["a"].dtype == torch.float32 and s["i"].dtype == torch.long
    with pytest.raises(ValueError, match="unknown dtype"):
        cast_state({}, "float8")
    r = KeyReport(unused=["autokl.a", "autokl.b", "betas"])
    assert r.ok and r.summary() == "3 source keys not used (autokl: 2, betas: 1)"
