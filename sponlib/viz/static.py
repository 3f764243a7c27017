"""Static images beside the live figures of a notebook, for readers without JavaScript (GitHub,
nbviewer), where plotly's JSON output shows as a blank.

    from sponlib.viz import static_images
    static_images()   # once, in the notebook's setup cell

From then on every plotly figure the notebook displays (`fig.show()`, or a figure as a cell's last
expression) carries a PNG of itself in the same output, beside plotly's JSON: a plotly renderer,
`sponlib_png`, joins `plotly_mimetype` (and nothing that adds `text/html`, which notebook viewers
prefer to a PNG and which is blank there too). Dashboards then leave a PNG of each of their
figures under the live widget (`snapshot`). Images are 900 px wide in 256 colours
(`chromium.palette_png`), some 10-30 KB a figure. One chromium (`chromium.PngSession`) serves
the whole kernel. Without kaleido or a chromium, figures display live as before and one line on
stderr says why there are no images; nothing raises. Importing this module changes nothing.
"""

from __future__ import annotations

import atexit
import base64
import sys
from typing import Any, Iterator, Mapping

import plotly.io as pio
from plotly.io._base_renderers import MimetypeRenderer

from .chromium import PngSession

RENDERER = "sponlib_png"
LIVE = "plotly_mimetype"  # plotly's JSON: what JupyterLab draws live
WIDTH = 900  # px at scale 1: 10-30 KB a figure in 256 colours, so a notebook of figures stays small
SCALE = 1
LIVE_HEIGHT = 450  # plotly.js's own height for a figure that sets none


class _State:
    """Whether static images are on, and the kernel's one chromium."""

    on = False
    width, scale = WIDTH, SCALE
    session: PngSession | None = None
    unavailable: str | None = None  # why there are no images this session (a chromium failed to start)
    noted = False  # the one line on stderr has been written
    previous_default: str | None = None


def _note(reason: str) -> None:
    """One line on stderr, once per session: figures stay live, only the images are missing."""
    if not _State.noted:
        _State.noted = True
        print(f"sponlib: no static images of figures ({reason}); they display live only", file=sys.stderr)


def _session() -> PngSession | None:
    """The kernel's chromium, started on first use; None (after the note) where none starts."""
    if _State.session is None and _State.unavailable is None:
        try:
            _State.session = PngSession()
        except Exception as error:  # no kaleido, no chromium, or one that does not start
            _State.unavailable = str(error)
            _note(_State.unavailable)
        else:
            atexit.register(_State.session.close)
    return _State.session


def figure_png(figure: Any, width: int | None = None, scale: float | None = None) -> bytes | None:
    """PNG bytes of a figure (go.Figure, FigureWidget or figure dict) at its own width, else
    `width` (default: the one static_images set), and its own height, else plotly.js's 450; None
    where no chromium renders it (noted once on stderr). A failed render closes the chromium, so
    the next figure starts a fresh one."""
    session = _session()
    if session is None:
        return None
    layout = (figure.get("layout") or {}) if isinstance(figure, Mapping) else figure.layout.to_plotly_json()
    try:
        return session.render(
            figure,
            width=layout.get("width") or width or _State.width,
            scale=_State.scale if scale is None else scale,
            height=layout.get("height") or LIVE_HEIGHT,
            palette=True,  # a third of the size, so a notebook of figures stays small
        )
    except Exception as error:  # a hung or crashed chromium: the figure still shows live
        _note(f"rendering failed: {error}")
        _State.session = None
        try:
            session.close()
        except Exception:
            pass  # it is gone either way
        return None


class PngImageRenderer(MimetypeRenderer):
    """plotly renderer: the figure as `image/png` (base64, as plotly's own PngRenderer gives it),
    through the kernel's one chromium; an empty bundle where there is none."""

    def __init__(self, width: int = WIDTH, scale: float = SCALE):
        self.width = width
        self.scale = scale

    def to_mimebundle(self, fig_dict: dict) -> dict:
        png = figure_png(fig_dict, self.width, self.scale)
        return {} if png is None else {"image/png": base64.b64encode(png).decode("ascii")}


def static_images(on: bool = True, width: int = WIDTH, scale: float = SCALE) -> bool:
    """Turn static images of figures on (plotly's default renderer becomes
    "plotly_mimetype+sponlib_png", and dashboards add a snapshot), or off again (the renderer
    before is restored). Starts the chromium at once, so a missing one is noted here, in the
    setup cell. Returns whether figures will carry images."""
    if not on:
        if _State.on:
            pio.renderers.default = LIVE if _State.previous_default is None else _State.previous_default
            _State.on = False
        return False
    pio.renderers[RENDERER] = PngImageRenderer(width, scale)
    if not _State.on:
        _State.previous_default = pio.renderers.default
    pio.renderers.default = f"{LIVE}+{RENDERER}"
    _State.on, _State.width, _State.scale = True, width, scale
    return _session() is not None


def static_images_on() -> bool:
    """Whether `static_images()` is on (whether or not a chromium was found)."""
    return _State.on


def _figures_in(item: Any) -> Iterator[Any]:
    """The plotly figures in an item: a figure itself, or those inside an ipywidgets box
    (children, depth first, in display order)."""
    if hasattr(item, "to_plotly_json") and hasattr(item, "data") and hasattr(item, "layout"):
        yield item
    for child in getattr(item, "children", ()):
        yield from _figures_in(child)


def snapshot(*items: Any) -> None:
    """Display a PNG of each figure in `items` (figures, FigureWidgets, or ipywidgets boxes that
    hold them) as one output each with `image/png` alone, when static images are on: what a
    reader without JavaScript sees of a live widget, as it is drawn now.

        display(box); snapshot(box)   # a notebook's own widget of figures
    """
    if not _State.on:
        return
    from IPython.display import display

    for figure in (figure for item in items for figure in _figures_in(item)):
        png = figure_png(figure)
        if png is not None:
            display({"image/png": base64.b64encode(png).decode("ascii")}, raw=True)
