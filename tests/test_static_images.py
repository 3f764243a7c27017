"""Static images of figures for notebook readers without JavaScript: with `static_images()` on, a
figure's output holds plotly's JSON and a PNG and no HTML; without a chromium it holds the JSON
alone and one line says why; a dashboard's display is its widget, then a PNG of each figure. The
PNG rewrite to 256 colours keeps every pixel of an image that has no more.

The tests marked `chromium` start one (about 4 s on 2 busy cores, then about 0.4 s a figure)."""

import ast
import base64
import struct
import zlib
from pathlib import Path

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from sponlib.analysis import LayerAnalysis
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import calibrate
from sponlib.viz import DriftExplorer, ThresholdExplorer, plots, snapshot, static, static_images
from sponlib.viz.chromium import BrowserNotFoundError, _opaque_rgb, chromium_path, palette_png

PLOTLY = "application/vnd.plotly.v1+json"
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _has_chromium() -> bool:
    try:
        import kaleido  # noqa: F401

        chromium_path()
    except (ImportError, BrowserNotFoundError):
        return False
    return True


chromium = pytest.mark.skipif(not _has_chromium(), reason="no kaleido or chromium (`make browser`)")


def _fresh_state(monkeypatch) -> None:
    """A new kernel's state: nothing started, nothing noted, the renderer as plotly chose it."""
    for name, value in dict(on=False, session=None, unavailable=None, noted=False, previous_default=None).items():
        monkeypatch.setattr(static._State, name, value)
    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")


@pytest.fixture(scope="module")
def png_session():
    """The kernel's one chromium, shared by this module's tests and closed after them."""
    session = static.PngSession()
    yield session
    session.close()


@pytest.fixture
def images_on(monkeypatch, png_session):
    _fresh_state(monkeypatch)
    monkeypatch.setattr(static._State, "session", png_session)
    assert static_images() is True
    yield
    static_images(False)


@pytest.fixture
def displayed(monkeypatch):
    """What IPython's display is called with, in order: (object, raw)."""
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: calls.append((obj, raw)))
    return calls


def png_header(data: bytes) -> tuple[int, int, int]:
    assert data[:8] == SIGNATURE
    width, height, _, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, colour


def figure():
    return plots.drift_per_layer({"masked": [0.1, 0.2, 0.3], "spon": [0.05, 0.1, 0.2]})


def test_importing_changes_no_renderer():
    """The module's top level only defines: no call there could touch plotly's renderers."""
    tree = ast.parse(Path(static.__file__).read_text())
    definitions = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.Expr)):
            assert isinstance(node.value, ast.Constant), ast.unparse(node)  # constants and the docstring
        else:
            assert isinstance(node, definitions), ast.unparse(node)


@chromium
def test_a_figure_carries_its_png_beside_plotly_json_and_no_html(images_on):
    assert pio.renderers.default == "plotly_mimetype+sponlib_png"
    bundle = figure()._repr_mimebundle_()
    assert set(bundle) == {PLOTLY, "image/png"}  # no text/html: viewers would prefer its blank to the PNG
    assert png_header(base64.b64decode(bundle["image/png"])) == (static.WIDTH, 420, 3)  # 8-bit palette
    assert 2_000 < len(bundle["image/png"]) < 60_000
    static_images(False)
    assert pio.renderers.default == "plotly_mimetype" and set(figure()._repr_mimebundle_()) == {PLOTLY}


def test_without_chromium_figures_stay_live_and_one_line_says_why(monkeypatch, tmp_path, capsys):
    _fresh_state(monkeypatch)
    monkeypatch.setenv("SPONLIB_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert static_images() is False
    assert [set(figure()._repr_mimebundle_()) for _ in range(2)] == [{PLOTLY}] * 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no static images" in err and "SPONLIB_CHROMIUM" in err
    monkeypatch.setattr(static._State, "unavailable", None)  # a second attempt, say after a failed render
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("SPONLIB_CHROMIUM")
    assert static.figure_png(figure()) is None and capsys.readouterr().err == ""  # noted once a session
    static_images(False)


def test_snapshot_shows_nothing_while_images_are_off(monkeypatch, displayed):
    _fresh_state(monkeypatch)
    snapshot(go.Figure(), w.VBox([go.FigureWidget()]))
    assert displayed == []


@pytest.fixture(scope="module")
def analysis():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    calibration = calibrate(model, ids, refine_levels=(0.5,), progress=False)
    return LayerAnalysis(model, ids[:2], calibration, lens_tokens=8)


@chromium
@pytest.mark.parametrize("dashboard, figures", [(DriftExplorer, 3), (ThresholdExplorer, 1)])
def test_a_dashboard_displays_its_widget_then_a_png_of_each_figure(images_on, displayed, analysis, dashboard, figures):
    explorer = dashboard(analysis)
    explorer._ipython_display_()
    assert displayed[0] == (explorer.widget, False)
    assert len(displayed) == 1 + figures
    for bundle, raw in displayed[1:]:
        assert raw and set(bundle) == {"image/png"}  # alone: no text/html or text/plain beside it
        assert png_header(base64.b64decode(bundle["image/png"]))[0] == static.WIDTH


@chromium
def test_snapshot_finds_the_figures_inside_a_notebooks_own_widget(images_on, displayed):
    snapshot(w.VBox([w.IntSlider(), w.HBox([go.FigureWidget(figure()), go.FigureWidget(figure())])]))
    assert [set(bundle) for bundle, _ in displayed] == [{"image/png"}] * 2


def _png(rows: np.ndarray, filters: list[int], colour: int = 2) -> bytes:
    """A PNG of (H, W, C) uint8 pixels, each row written with its own filter (0 None, 1 Sub, 2 Up)."""
    height, width, channels = rows.shape
    out, prior = [], np.zeros_like(rows[0])
    for row, kind in zip(rows, filters):
        left = np.concatenate([np.zeros_like(row[:1]), row[:-1]])
        encoded = {0: row, 1: row - left, 2: row - prior}[kind]  # uint8: modulo 256, as PNG filters are
        out.append(bytes([kind]) + encoded.tobytes())
        prior = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b"")


def _palette_pixels(data: bytes) -> np.ndarray:
    width, height, colour = png_header(data)
    assert colour == 3
    palette_at, idat_at = data.index(b"PLTE"), data.index(b"IDAT")
    (n,) = struct.unpack(">I", data[palette_at - 4 : palette_at])
    palette = np.frombuffer(data[palette_at + 4 : palette_at + 4 + n], np.uint8).reshape(-1, 3)
    (m,) = struct.unpack(">I", data[idat_at - 4 : idat_at])
    rows = np.frombuffer(zlib.decompress(data[idat_at + 4 : idat_at + 4 + m]), np.uint8).reshape(height, width + 1)
    assert (rows[:, 0] == 0).all()
    return palette[rows[:, 1:]]


def test_palette_png_keeps_every_pixel_of_an_image_with_few_colours():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    pixels = colours[rng.integers(0, 40, size=(12, 17))]  # (12, 17, 3)
    rgba = np.concatenate([pixels, np.full((12, 17, 1), 255, np.uint8)], axis=2)
    for filters in ([2] * 12, [0, 1, 2] * 4):  # chromium's Up everywhere, and a mix
        assert np.array_equal(_opaque_rgb(_png(rgba, filters, colour=6)), pixels)
        assert np.array_equal(_palette_pixels(palette_png(_png(rgba, filters, colour=6))), pixels)
    assert np.array_equal(_palette_pixels(palette_png(_png(pixels, [1] * 12))), pixels)  # RGB in


def test_palette_png_draws_rare_colours_as_the_nearest_kept_one_and_leaves_transparency_alone():
    i = np.arange(400).reshape(20, 20)
    pixels = np.stack([i % 20 * 12, i // 20 * 12, np.zeros_like(i)], axis=2).astype(np.uint8)  # 400 colours
    pixels[:2] = 7  # the commonest colour
    reduced = _palette_pixels(palette_png(_png(pixels, [2] * 20))).reshape(-1, 3).astype(int)
    kept = np.unique(reduced, axis=0)
    assert len(kept) == 256 and [7, 7, 7] in kept.tolist()
    to_kept = ((pixels.reshape(-1, 1, 3).astype(int) - kept[None]) ** 2).sum(axis=2)  # (pixels, kept)
    assert np.array_equal(((reduced - pixels.reshape(-1, 3)) ** 2).sum(axis=1), to_kept.min(axis=1))
    see_through = np.concatenate([pixels, np.full((20, 20, 1), 128, np.uint8)], axis=2)
    assert png_header(palette_png(_png(see_through, [2] * 20, colour=6)))[2] == 6  # kept RGBA, recompressed
