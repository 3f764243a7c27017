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


# result file -> renderer; later stages register their tables here.
RENDERERS: dict[str, Callable[[dict], str]] = {
    "dense_baseline.json": render_perplexity,
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
