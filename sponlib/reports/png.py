"""The README's figures as PNG files: each figure of `sponlib.experiments.figures`, rendered by
kaleido through Debian's chromium into docs/figures/<name>.png (`python -m sponlib figures`).

Export never downloads a browser: kaleido drives the chromium named by $SPONLIB_CHROMIUM, else
the `chromium` on PATH (`make browser` installs Debian's), and fails with a clear message if
there is none. Width, height and scale are fixed, so reruns give the same pictures.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from ..errors import InvalidArgumentError, MissingPackageError, SponlibError
from ..experiments.figures import FIGURES
from ..io import atomic_write_bytes

WIDTH = 1000  # px at scale 1; each figure keeps the height its builder gives it
SCALE = 2  # sharp on high-density screens, still well under 300 KB a figure
DEFAULT_OUT = Path("docs") / "figures"


class BrowserNotFoundError(SponlibError, FileNotFoundError):
    """No chromium to render figures with; the message says how to get one."""


def chromium_path() -> str:
    """The chromium kaleido drives: $SPONLIB_CHROMIUM, else `chromium` on PATH. Never downloaded."""
    chosen = os.environ.get("SPONLIB_CHROMIUM")
    if chosen:
        if not (os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise BrowserNotFoundError(
                f"SPONLIB_CHROMIUM is {chosen!r}, which is not an executable file; "
                "point it at a chromium, or unset it to use the one on PATH"
            )
        return chosen
    found = shutil.which("chromium")
    if not found:
        raise BrowserNotFoundError(
            "no chromium found to render figures with: run `make browser` (it installs "
            "Debian's chromium, `apt-get install chromium`), or set SPONLIB_CHROMIUM "
            "to a chromium executable; sponlib never downloads a browser"
        )
    return found


def _run(coroutine):
    """asyncio.run, also from a cell of a running notebook (its loop is busy: use a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def render_png(figures: dict[str, go.Figure], scale: float = SCALE) -> dict[str, bytes]:
    """PNG bytes of each figure, all rendered by one chromium at WIDTH x the figure's own height."""
    try:
        import kaleido  # a dev extra: only exporting needs it
    except ImportError:
        raise MissingPackageError("exporting figures needs kaleido: `make setup`, or pip install -e '.[dev]'") from None
    browser = chromium_path()

    async def render() -> dict[str, bytes]:
        # mathjax=False: kaleido would load MathJax from a CDN, and the export runs offline.
        async with kaleido.Kaleido(path=browser, mathjax=False) as session:
            return {
                name: await session.calc_fig(
                    fig, opts=dict(format="png", width=WIDTH, height=fig.layout.height, scale=scale)
                )
                for name, fig in figures.items()
            }

    return {name: recompressed(data) for name, data in _run(render()).items()}


def recompressed(png: bytes) -> bytes:
    """The same image with its pixel data deflated at zlib's highest level in one IDAT chunk:
    chromium writes PNGs fast rather than small (about a quarter larger). Pixels are unchanged."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise InvalidArgumentError("not a PNG: its signature is missing")
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    pixels = zlib.compress(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")), 9)
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    kept = [chunk for chunk in chunks if chunk[0] != b"IDAT"]
    kept.insert(first, (b"IDAT", pixels))  # IDAT keeps its place among the other chunks
    return png[:8] + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in kept
    )


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
