"""README and docs result tables, rendered from the JSON files under data/results/.

The README and the pages under docs/ (results.md, library.md, analysis.md, tasks.md, multigpu.md,
kernels.md, comparisons.md, scale.md) hold each table between two markers naming its source file:

    <!-- results: dense_baseline.json -->
    ...generated markdown...
    <!-- /results -->

A word after the file name picks another view of the same record (`<!-- results:
scale_rehearsal_h200.json targets -->`; the README's headline is `spon_robust.json headline`).
`python -m sponlib readme` rewrites those blocks; a test checks they match, so a number in the
README or the docs is always the one its JSON records.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..io import atomic_write_text
from ..records import load_result
from . import comparisons, kernels, quality, robust, scale, speed

_BLOCK = re.compile(r"(<!-- results: (?P<name>[\w.-]+(?: \w+)?) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)

RENDERERS: dict[str, Callable[[dict], str]] = {
    "dense_baseline.json": quality.render_perplexity,
    "sparsity_sweep.json": quality.render_sweep,
    "calibration_cpu.json": quality.render_calibration,
    "spon_recovery.json": quality.render_recovery,
    "spon_recovery_fixed_thresholds.json": quality.render_recovery_brief,
    "spon_recovery_longer.json": quality.render_recovery_brief,
    "spon_folded_cpu.json": quality.render_fold_check,
    "spon_throughput_h200.json": speed.render_throughput,
    "spon_throughput_cpu.json": speed.render_throughput,
    "analysis_smollm2.json": quality.render_analysis,
    "widget_latency_cpu.json": speed.render_widget_latency,
    "spon_generalization.json": quality.render_generalization,
    "spon_robust.json": robust.render_robust,
    "spon_robust.json headline": robust.render_headline,
    "spon_robust_lr.json": robust.render_robust,
    "spon_robust_gemma3.json": robust.render_robust,
    "gemv_cpu.json": speed.render_gemv_cpu,
    "kernels_h200.json": kernels.render_kernels,
    "spon_recovery_gemma3.json": lambda record: quality.render_recovery(record, targets=False),
    "tasks.json": quality.render_tasks,
    "multigpu.json": speed.render_multigpu,
    "multigpu_agreement.json": speed.render_multigpu,
    "multigpu_halves.json": speed.render_multigpu,
    "scale_rehearsal_h200_before_fixes.json": scale.render_rehearsal,
    "scale_rehearsal_h200.json": scale.render_rehearsal,
    "scale_rehearsal_qwen3_h200.json": scale.render_rehearsal,
    "training_speed_h200.json": scale.render_training_speed,
    "scale_extrapolation_70b.json": scale.render_extrapolation,
    "scale_rehearsal_h200.json targets": scale.render_targets,
    "comparisons.json": comparisons.render_rules,
    "comparisons.json pruning": comparisons.render_pruning,
    "comparisons.json targets": comparisons.render_targets,
    "rsparse_share_cpu.json": comparisons.render_share,
}


def render_block(name: str) -> str:
    """The markdown for a block: `name` is a record's file name, or that and a view's word."""
    if name not in RENDERERS:
        raise KeyError(f"no README renderer for {name}; known: {', '.join(RENDERERS)}")
    return RENDERERS[name](load_result(name.split()[0]))


def result_pages(root: str | Path = ".") -> list[Path]:
    """The README and every page under docs/ that holds a results block."""
    root = Path(root)
    pages = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    return [page for page in pages if page.is_file() and "<!-- results: " in page.read_text()]


def update_readme(path: str | Path = "README.md", check: bool = False) -> bool:
    """Re-render every results block of the README at `path`. Returns True if anything changed
    (with check=True the file is left untouched)."""
    path = Path(path)
    text = path.read_text()
    new = _BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name")) + m.group(4), text)
    if new != text and not check:
        atomic_write_text(path, new)
    return new != text
