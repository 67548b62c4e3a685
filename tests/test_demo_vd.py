"""`versadiff demo`: the four-flow Versatile Diffusion demo on the shipped miniature writes its page, figure and
report, and each flow scores on held-out shapes items."""

from __future__ import annotations

import json

from versadiff.cli import main


def test_vd_demo_writes_page_figure_and_scores(tmp_path, capsys, one_thread):
    assert main(["demo", "--out", str(tmp_path), "--n-score", "12"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "index.html").read_text().count("<h2>") == 4 and (tmp_path / "flows.png").is_file()
    assert set(report["scores"]) == {"text-to-image", "image-variation", "image-to-text", "text-variation"}
    for flow, s in report["scores"].items():
        assert s["n"] == 12 and s["score"] >= 0.8, (flow, s)  # 0.98-1.00 at n = 100 (benchmarks/README.md)
        assert f"{flow:16s} score {s['score']:.3f}" in out
