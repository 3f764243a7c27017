"""The README's figures as PNG files: each figure of `sponlib.experiments.figures`, rendered by
kaleido through Debian's chromium into docs/figures/<name>.png (`python -m sponlib figures`).

Export never downloads a browser: kaleido drives the chromium named by $SPONLIB_CHROMIUM, else
the `chromium` on PATH (`make browser` installs Debian's), and fails with a clear message if
there is none (the chromium and kaleido code is `sponlib.viz.chromium`, shared with the
notebooks' static images). Width, height and scale are fixed, so reruns give the same pictures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from ..errors import InvalidArgumentError
from ..experiments.figures import FIGURES
from ..io import atomic_write_bytes
from ..viz import chromium
from ..viz.chromium import BrowserNotFoundError, chromium_path, recompressed

__all__ = ["BrowserNotFoundError", "chromium_path", "export_figures", "recompressed", "render_png"]

WIDTH = 1000  # px at scale 1; each figure keeps the height its builder gives it
SCALE = 2  # sharp on high-density screens, still well under 300 KB a figure
DEFAULT_OUT = Path("docs") / "figures"


def render_png(figures: dict[str, go.Figure], scale: float = SCALE) -> dict[str, bytes]:
    """PNG bytes of each figure, all rendered by one chromium at WIDTH x the figure's own height."""
    return chromium.render_png(figures, WIDTH, scale=scale)


def export_figures(
    out_dir: str | os.PathLike = DEFAULT_OUT, names: Sequence[str] | None = None, scale: float = SCALE
) -> list[Path]:
    """Write `<name>.png` into out_dir for each named figure (default: all of FIGURES), each
    through a temporary file and a rename. Returns the paths written."""
    names = list(FIGURES) if names is None else list(names)
    if unknown := [name for name in names if name not in FIGURES]:
        raise InvalidArgumentError(f"no figure named {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    images = render_png({name: FIGURES[name]() for name in names}, scale=scale)  # records read before chromium starts
    return [atomic_write_bytes(Path(out_dir) / f"{name}.png", images[name]) for name in names]
