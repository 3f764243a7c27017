"""Plotly figures to PNG through kaleido and the system's chromium: where that chromium is (never
downloaded), a `PngSession` that keeps one chromium open across figures, and the PNG rewrites
that make chromium's images small: `recompressed` (lossless) and `palette_png` (256 colours).

    with PngSession() as session:
        data = session.render(fig, width=900)  # PNG bytes, recompressed

The session runs kaleido on an event loop of its own in a background thread, so it works from a
notebook cell (whose own loop is busy) as well as from a script, and a figure costs a render, not
a browser start.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
import zlib
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidArgumentError, MissingPackageError, SponlibError

RENDER_TIMEOUT_S = 120  # a start or a render that takes longer than this is a hung browser


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PALETTE_SIZE = 256  # an 8-bit palette: the colours a PNG can index
_CHUNK_COLOURS = 4096  # colours matched to the palette at once: (4096, 256, 3) int32 is 12 MB


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, body) of each chunk of a PNG."""
    if png[:8] != PNG_SIGNATURE:
        raise InvalidArgumentError("not a PNG: its signature is missing")
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks
    )


def recompressed(png: bytes) -> bytes:
    """The same image with its pixel data deflated at zlib's highest level in one IDAT chunk:
    chromium writes PNGs fast rather than small (about a quarter larger). Pixels are unchanged."""
    chunks = _chunks(png)
    pixels = zlib.compress(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")), 9)
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    kept = [chunk for chunk in chunks if chunk[0] != b"IDAT"]
    kept.insert(first, (b"IDAT", pixels))  # IDAT keeps its place among the other chunks
    return _png(kept)


def _opaque_rgb(png: bytes) -> np.ndarray | None:
    """(H, W, 3) uint8 pixels of an opaque 8-bit RGB or RGBA PNG whose rows use the None, Sub or
    Up filter (chromium's use Up), else None: those are the PNGs `palette_png` reduces."""
    chunks = _chunks(png)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        return None
    data = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = np.frombuffer(data, np.uint8).reshape(height, width * channels + 1)
    filters, rows = rows[:, 0], rows[:, 1:].reshape(height, width, channels)
    if (filters == 2).all():  # Up everywhere: each row adds the one above (mod 256)
        pixels = np.cumsum(rows, axis=0, dtype=np.uint8)
    elif np.isin(filters, (0, 1, 2)).all():
        pixels = np.empty_like(rows)
        for y, kind in enumerate(filters):
            row = np.cumsum(rows[y], axis=0, dtype=np.uint8) if kind == 1 else rows[y]  # Sub: add the left pixel
            pixels[y] = row + pixels[y - 1] if kind == 2 and y else row
    else:
        return None  # Average and Paeth filters: left as they are
    if channels == 4 and not (pixels[..., 3] == 255).all():
        return None  # transparency: a palette PNG here would need tRNS; not worth it for figures
    return pixels[..., :3]


def palette_png(png: bytes) -> bytes:
    """The image with its 256 most frequent colours (every other colour drawn as the nearest of
    them) as an 8-bit palette PNG: a figure is flat colours and their antialiased edges, so it looks
    the same at about a third of the size; lossless where the image has 256 colours or fewer. A PNG
    it cannot read that way (transparent, or Average/Paeth filters) comes back recompressed."""
    pixels = _opaque_rgb(png)
    if pixels is None:
        return recompressed(png)
    height, width, _ = pixels.shape
    keys = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], np.uint32)  # (H, W): one int per colour
    colours, index, counts = np.unique(keys.ravel(), return_inverse=True, return_counts=True)
    rgb = np.stack([(colours >> 16) & 255, (colours >> 8) & 255, colours & 255], axis=1).astype(np.int32)  # (C, 3)
    palette = rgb[np.argsort(-counts, kind="stable")[:PALETTE_SIZE]]  # (P, 3)
    nearest = np.concatenate(
        [
            ((rgb[i : i + _CHUNK_COLOURS, None, :] - palette[None]) ** 2).sum(axis=2).argmin(axis=1)
            for i in range(0, len(rgb), _CHUNK_COLOURS)
        ]
    ).astype(np.uint8)  # (C,): each colour's palette entry
    rows = np.concatenate([np.zeros((height, 1), np.uint8), nearest[index].reshape(height, width)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit, palette, no interlace
    return _png(
        [
            (b"IHDR", header),
            (b"PLTE", palette.astype(np.uint8).tobytes()),
            (b"IDAT", zlib.compress(rows.tobytes(), 9)),  # filter None: palette indices do not predict
            (b"IEND", b""),
        ]
    )


def _layout(figure: Any) -> Mapping:
    """A figure's layout as a mapping, from a go.Figure, a FigureWidget or a figure dict."""
    if isinstance(figure, Mapping):
        return figure.get("layout") or {}
    return figure.layout.to_plotly_json()


class PngSession:
    """One kaleido, so one chromium, open until `close()` (or the end of a `with` block, or of
    the interpreter). Starting it raises MissingPackageError without kaleido (a dev extra) and
    BrowserNotFoundError without a chromium."""

    def __init__(self, timeout_s: float = RENDER_TIMEOUT_S):
        try:
            import kaleido  # a dev extra: only rendering needs it
        except ImportError:
            raise MissingPackageError(
                "rendering figures to PNG needs kaleido: `make setup`, or pip install -e '.[dev]'"
            ) from None
        browser = chromium_path()
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # one render at a time: kaleido's one tab
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sponlib-kaleido", daemon=True)
        self._thread.start()

        async def open_kaleido():
            # mathjax=False: kaleido would load MathJax from a CDN, and rendering runs offline.
            session = kaleido.Kaleido(path=browser, mathjax=False)
            await session.__aenter__()
            return session

        try:
            self._kaleido = self._call(open_kaleido())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout_s)

    @property
    def is_open(self) -> bool:
        return self._thread is not None

    def render(
        self, figure: Any, width: int, scale: float = 1.0, height: int | None = None, palette: bool = False
    ) -> bytes:
        """PNG bytes of a go.Figure, FigureWidget or figure dict at `width` px and `height`
        (default: the figure's own, else kaleido's), times `scale`: recompressed, or with
        `palette` reduced to 256 colours (`palette_png`)."""
        if not self.is_open:
            raise InvalidArgumentError("this PngSession is closed: open a new one")
        if not isinstance(figure, Mapping):
            figure = figure.to_dict()  # a FigureWidget's state, read here rather than on the loop's thread
        opts = dict(format="png", width=width, height=height or _layout(figure).get("height"), scale=scale)
        with self._lock:
            data = self._call(self._kaleido.calc_fig(figure, opts=opts))
        return palette_png(data) if palette else recompressed(data)

    def close(self) -> None:
        """Close chromium and stop the thread; closing twice does nothing."""
        if not self.is_open:
            return
        try:
            self._call(self._kaleido.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self.timeout_s)
        self._thread = None
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> PngSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_png(figures: Mapping[str, Any], width: int, scale: float = 1.0) -> dict[str, bytes]:
    """PNG bytes of each named figure, all rendered by one chromium at `width` x the figure's own
    height, times `scale`."""
    with PngSession() as session:
        return {name: session.render(fig, width, scale=scale) for name, fig in figures.items()}
