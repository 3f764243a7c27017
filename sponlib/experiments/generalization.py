"""Does SPON's repair carry over to other kinds of text? Trained vectors, evaluated on many texts.

The recovery experiment (sponlib.experiments.recovery) trains SPON on five Austen novels and tests on one
in-domain and one out-of-domain text. Here the vectors it kept are evaluated, unchanged, on a
list of texts (by default the held-out novel and each of the fifteen Brown Corpus genres):
perplexity dense / masked / masked + SPON per text and level, and the recovery
    (ppl_masked − ppl_spon) / (ppl_masked − ppl_dense).
The masked rows use the calibration's thresholds at the level, the SPON rows the thresholds
saved with the vectors, exactly as the recovery experiment measured them.
"""

from __future__ import annotations

import statistics

from ..perplexity import evaluate
from .recovery import compare_rows


def generalization(
    model, calibration, texts: list, spon: dict, rule: str = "teal", batch_size: int = 8, progress: bool = True
) -> dict:
    """Rows per (text, level) and a summary per level. `texts` is a list of Windows, `spon` maps
    level -> (SponVectors, Thresholds) as `load_spon` returns them."""
    dense = {row["corpus"]: row for row in evaluate(model, texts, None, batch_size, progress)}
    rows = []
    for level, (vectors, spon_thresholds) in sorted(spon.items()):
        masked = evaluate(model, texts, calibration.thresholds(level, rule), batch_size, progress)
        repaired = evaluate(model, texts, spon_thresholds, batch_size, progress, spon=vectors)
        for m, s in zip(masked, repaired):
            rows.append({"text": m["corpus"], "level": level, **compare_rows(dense[m["corpus"]], m, s)})
    return {
        "rule": rule,
        "texts": [w.describe() for w in texts],
        "rows": rows,
        "summary": generalization_summary(rows, texts[0].source),
    }


def generalization_summary(rows: list[dict], in_domain: str) -> dict:
    """Per level: the in-domain recovery, and the median, least and most over the other texts."""
    summary = {}
    for level in sorted({row["level"] for row in rows}):
        at = [row for row in rows if row["level"] == level]
        own = next((row["recovery"] for row in at if row["text"] == in_domain), None)
        others = sorted(
            (row["recovery"], row["text"]) for row in at if row["text"] != in_domain and row["recovery"] is not None
        )
        summary[f"{level:g}"] = {
            "in_domain": own,
            "median_other": statistics.median(r for r, _ in others) if others else None,
            "least_other": {"text": others[0][1], "recovery": others[0][0]} if others else None,
            "most_other": {"text": others[-1][1], "recovery": others[-1][0]} if others else None,
            "others_below_in_domain": sum(r < own for r, _ in others) if own is not None else None,
            "others": len(others),
        }
    return summary
