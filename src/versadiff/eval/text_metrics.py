"""Caption metrics through sacrebleu (BLEU, chrF): each generated caption against every reference caption of its
image, corpus-level, with sacrebleu's defaults (BLEU: 13a tokenisation, exponential smoothing; chrF: character
6-grams, beta 2). Images may have different numbers of references (COCO has 5 to 7): the shorter reference lists
are padded with None, which sacrebleu skips. The metric signature sacrebleu prints is kept in the report.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["TEXT_METRICS", "caption_metric", "sacrebleu_version", "reference_streams"]

#: caption metric name -> sacrebleu metric class name
TEXT_METRICS = {"bleu": "BLEU", "chrf": "CHRF"}


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:  # one line naming the fix
        raise ValueError("caption metrics need sacrebleu: pip install sacrebleu (or versadiff[eval])") from e
    return sacrebleu


def sacrebleu_version() -> str:
    """The installed sacrebleu's version, or "not installed"."""
    try:
        return str(_sacrebleu().__version__)
    except ValueError:
        return "not installed"


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-hypothesis reference lists -> sacrebleu's layout: one stream per reference slot, padded with None."""
    refs = [list(r) for r in references]
    if any(not r for r in refs):
        raise ValueError("every caption needs at least one reference caption")
    width = max((len(r) for r in refs), default=0)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


def caption_metric(name: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Corpus `name` ("bleu" or "chrf") of `hypotheses` (one caption per sample) against `references` (every
    reference caption of each sample's image): {"score": 0..100, "signature": sacrebleu's, ...details}."""
    if name not in TEXT_METRICS:
        raise ValueError(f"unknown caption metric {name!r}; choose from {', '.join(TEXT_METRICS)}")
    if len(hypotheses) != len(references):
        raise ValueError(f"got {len(hypotheses)} captions for {len(references)} reference lists")
    sb = _sacrebleu()
    metric = getattr(sb.metrics, TEXT_METRICS[name])()
    result = metric.corpus_score([str(h) for h in hypotheses], reference_streams(references))
    out: dict[str, Any] = {"score": float(result.score), "signature": str(metric.get_signature())}
    if name == "bleu":
        out.update(precisions=[float(p) for p in result.precisions], brevity_penalty=float(result.bp),
                   hyp_len=int(result.sys_len), ref_len=int(result.ref_len))
    return out
