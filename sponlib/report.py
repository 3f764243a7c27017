"""README result tables, rendered from the JSON files under data/results/.

The README holds each table between two markers naming its source file:

    <!-- results: dense_baseline.json -->
    ...generated markdown...
    <!-- /results -->

`python -m sponlib readme` rewrites those blocks; a test checks they match, so a number in the
README is always the one its JSON records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .data import data_dir
from .io import atomic_write_text

_BLOCK = re.compile(r"(<!-- results: (?P<file>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def results_dir() -> Path:
    return data_dir() / "results"


def _provenance_line(record: dict) -> str:
    model, device, versions = record["model"], record["device"], record["versions"]
    return (f"Model `{model['name']}` ({model['architecture']}, {model['parameters']:,} parameters), "
            f"{record['dtype']}, {device['device']} ({device['name']}), torch {versions['torch']}, "
            f"transformers {versions['transformers']}; {record['windows']} windows of "
            f"{record['window_len']} tokens per text, seed {record['seed']}. "
            f"Command: `{record['command']}`")


def render_perplexity(record: dict) -> str:
    lines = ["| text | windows | predicted tokens | perplexity |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        lines.append(f"| {row['corpus']} | {row['windows']} | {row['tokens']:,} | {row['ppl']:.2f} |")
    return "\n".join(lines) + "\n\n" + _provenance_line(record) + "\n"


def render_sweep(record: dict) -> str:
    """Perplexity (measured sparsity) per level and mask rule, then how each rule fares against
    teal, counted from the same rows."""
    rows = record["results"]
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    methods = record["methods"]
    cell = {(r["method"], r["target"], r["corpus"]): r for r in rows}
    header = "| target | " + " | ".join(f"{m} ({c})" for m in methods for c in corpora) + " |"
    lines = [header, "| ---: |" + " ---: |" * (len(methods) * len(corpora))]
    dense = " | ".join(f"{cell[('dense', 0.0, c)]['ppl']:.2f}" for _ in methods for c in corpora)
    lines.append(f"| dense | {dense} |")
    for level in record["levels"]:
        values = [cell[(m, level, c)] for m in methods for c in corpora]
        lines.append(f"| {level:g} | " + " | ".join(f"{v['ppl']:.2f} ({v['measured']:.3f})" for v in values) + " |")
    notes = []
    for m in methods:
        if m == "teal":
            continue
        pairs = [(level, c) for level in record["levels"] for c in corpora]
        wins = [(level, c) for level, c in pairs if cell[(m, level, c)]["ppl"] < cell[("teal", level, c)]["ppl"]]
        notes.append(f"{m} has lower perplexity than teal in {len(wins)} of {len(pairs)} (level, text) pairs"
                     + (f" (levels {', '.join(sorted({f'{l:g}' for l, _ in wins}))})" if wins else ""))
    cal = record["calibration"]
    return ("\n".join(lines) + "\n\nCells: perplexity (measured sparsity, weighted by weights skipped). "
            + "; ".join(notes) + ". Calibration: " + f"{cal['windows']} windows of {cal['window_len']} tokens "
            f"of {cal['corpus']}, sparse-aware refinement on {cal['refine_windows']}, greedy allocation on "
            f"{cal['greedy_windows']}, {cal['elapsed_s']:.0f} s on {cal['device']['name']}.\n\n"
            + _provenance_line(record) + "\n")


def render_calibration(record: dict) -> str:
    """Measured sparsity on held-out text, thresholds from dense statistics alone vs sparse-aware."""
    lines = ["| rule | target | dense statistics only | sparse-aware |", "| --- | ---: | ---: | ---: |"]
    for row in record["results"]:
        cells = [f"{row[k]['measured']:.3f} ({row[k]['projections_off']} of {row[k]['projections']} off)"
                 for k in ("dense_only", "sparse_aware")]
        lines.append(f"| {row['method']} | {row['target']:g} | {cells[0]} | {cells[1]} |")
    cal, check = record["calibration"], record["check"]
    rules = len(record["results"]) // max(len(cal["refine_levels"]), 1)
    passes = {"dense_statistics_s": f"dense statistics ({cal['windows']} windows of {cal['window_len']} tokens)",
              "greedy_s": f"greedy allocations ({cal['greedy_windows']} windows)",
              "refine_s": f"sparse-aware refinement ({rules} rules x {len(cal['refine_levels'])} levels, "
                          f"{cal['refine_windows']} windows)"}
    spent = "; ".join(f"{passes[k]}: {v:.0f} s" for k, v in cal.get("timings", {}).items())
    return ("\n".join(lines) + f"\n\nCells: measured sparsity on {check['windows']} windows of "
            f"{check['window_len']} tokens of {check['source']} (weighted by weights skipped), and how many "
            f"projections miss their target by more than {record['tolerance']}. Calibrating on "
            f"{cal['corpus']} took {cal['elapsed_s']:.0f} s on {cal['device']['device']} ({cal['device']['name']}, "
            f"{cal['device'].get('torch_threads', '?')} threads): {spent}.\n\n" + _provenance_line(
                {**record, "windows": check["windows"], "window_len": check["window_len"], "seed": check["seed"]}) + "\n")


# result file -> renderer; later stages register their tables here.
RENDERERS: dict[str, Callable[[dict], str]] = {
    "dense_baseline.json": render_perplexity,
    "sparsity_sweep.json": render_sweep,
    "calibration_cpu.json": render_calibration,
}


def render_block(filename: str) -> str:
    if filename not in RENDERERS:
        raise KeyError(f"no README renderer for {filename}; known: {', '.join(RENDERERS)}")
    record = json.loads((results_dir() / filename).read_text())
    return RENDERERS[filename](record)


def update_readme(path: str | Path = "README.md", check: bool = False) -> bool:
    """Re-render every results block of the README at `path`. Returns True if anything changed
    (with check=True the file is left untouched)."""
    path = Path(path)
    text = path.read_text()
    new = _BLOCK.sub(lambda m: m.group(1) + render_block(m.group("file")) + m.group(4), text)
    if new != text and not check:
        atomic_write_text(path, new)
    return new != text
