"""The README's figures: each shows exactly the numbers of its result record, exports as a PNG of
the promised size through chromium (never downloaded), and is committed under docs/figures/."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import plotly
import plotly.basedatatypes
import plotly.io as pio
import pytest

from sponlib.cli import main
from sponlib.errors import InvalidArgumentError
from sponlib.experiments import figures
from sponlib.experiments.protocol import LEVELS, RECOVERY_TARGETS, ROBUST_TARGETS
from sponlib.records import results_dir
from sponlib.reports import png

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "figures"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 300_000  # the README stays light to load


def record(name):
    return json.loads((results_dir() / name).read_text())


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first, right after the signature."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG: wrong signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, "not a PNG: IHDR is not the first chunk"
    return struct.unpack(">II", data[16:24])


def test_drift_figure_shows_the_records_drift_per_layer():
    analysis = record(figures.ANALYSIS_RECORD)
    levels = sorted(analysis["levels"])
    fig = figures.drift_figure()
    assert {levels[0], analysis["main_level"], levels[-1]} == set(figures.drift_levels(analysis))
    assert [trace.name for trace in fig.data] == [
        f"{kind}@{level}" for level in figures.drift_levels(analysis) for kind in ("masked", "spon")
    ]
    for trace in fig.data:
        assert list(trace.y) == analysis["per_layer"][trace.name]["drift"], trace.name
        assert list(trace.x) == list(range(len(trace.y)))


def test_recovery_figure_shows_the_records_recovery_and_the_targets():
    recovery = record(figures.RECOVERY_RECORD)
    texts = [test["source"] for test in recovery["settings"]["test"]]
    levels = [row for row in recovery["experiments"] if row["group"] == "levels"]
    fig = figures.recovery_figure()
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert [bar.name for bar in bars] == texts
    for bar in bars:
        assert list(bar.x) == [row["name"] for row in levels]
        assert list(bar.y) == [row["texts"][bar.name]["recovery"] for row in levels], bar.name
    marks = [(trace.x[0], trace.offsetgroup, trace.y[0]) for trace in fig.data if trace.type == "scatter"]
    by_level = {row["level"]: row["name"] for row in levels}
    assert marks == [(by_level[level], texts[index], least) for level, index, least in RECOVERY_TARGETS]
    assert all(bar.offsetgroup == bar.name for bar in bars)  # each mark sits over its own text's bar


def test_robust_figure_shows_the_shipped_recipe_and_its_targets():
    robust = record(figures.ROBUST_RECORD)
    fig = figures.robust_figure()
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert [bar.name for bar in bars] == list(figures.ROBUST_BARS)
    keys = ("recovery_in", "recovery_heldout_min", "recovery_heldout_median")
    for bar, key in zip(bars, keys):
        assert list(bar.x) == [f"teal {level:g}" for level in LEVELS]
        assert list(bar.y) == [robust["summary"][f"{level:g}"][key] for level in LEVELS], bar.name
    marks = [(trace.x[0], trace.offsetgroup, trace.y[0]) for trace in fig.data if trace.type == "scatter"]
    expected = [
        (f"teal {level:g}", name, goal)
        for level, goals in ROBUST_TARGETS.items()
        for name, goal in zip(figures.ROBUST_BARS, goals)
        if goal is not None
    ]
    assert marks == expected and len(marks) == 5


def test_cka_figure_shows_the_records_heatmaps_on_one_scale():
    analysis = record(figures.ANALYSIS_RECORD)
    fig = figures.cka_figure()
    left, right = fig.data
    assert np.array_equal(np.asarray(left.z), np.asarray(analysis["cka_heatmap"]["masked"]))
    assert np.array_equal(np.asarray(right.z), np.asarray(analysis["cka_heatmap"]["spon"]))
    assert (left.zmin, left.zmax) == (right.zmin, right.zmax)
    assert left.zmin == min(np.min(analysis["cka_heatmap"][kind]) for kind in ("masked", "spon"))
    assert [left.showscale, right.showscale] == [False, True]
    assert [a.text for a in fig.layout.annotations] == [
        f"dense vs {kind}@{analysis['main_level']}" for kind in ("masked", "spon")
    ]


@pytest.mark.parametrize("name", figures.FIGURES)
def test_every_figure_is_titled_and_shows_nothing(name, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a figure builder tried to show a figure")

    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", refuse)
    monkeypatch.setattr(pio, "show", refuse)
    fig = figures.FIGURES[name]()
    assert capsys.readouterr() == ("", "")
    assert fig.layout.title.text and fig.layout.height
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_chromium_comes_from_sponlib_chromium_and_its_absence_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("SPONLIB_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(png.BrowserNotFoundError, match="SPONLIB_CHROMIUM"):
        png.chromium_path()
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SPONLIB_CHROMIUM", str(fake))
    assert png.chromium_path() == str(fake)
    monkeypatch.delenv("SPONLIB_CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(png.BrowserNotFoundError, match="make browser"):
        png.chromium_path()


def test_unknown_figure_names_are_refused_before_anything_renders(tmp_path, capsys):
    assert main(["figures", "--out", str(tmp_path), "--only", "drift_per_layer", "no_such_figure"]) == 2
    assert "no_such_figure" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_export_writes_pngs_of_the_promised_size(tmp_path):
    """Starts chromium: fails, never skips, where there is none (CI installs it with `make browser`)."""
    try:
        png.chromium_path()
    except png.BrowserNotFoundError as error:
        pytest.fail(f"cannot test the figure export: {error}")
    written = png.export_figures(tmp_path, scale=1)
    assert written == [tmp_path / f"{name}.png" for name in figures.FIGURES]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(path.name for path in written)  # no temp files
    for name, path in zip(figures.FIGURES, written):
        assert png_size(path.read_bytes()) == (png.WIDTH, figures.FIGURES[name]().layout.height), name


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_recompression_keeps_every_pixel_and_chunk_and_shrinks_the_file():
    rows = b"".join(b"\x00" + bytes((x * y) % 7 for x in range(64)) for y in range(48))  # 64 x 48 grey
    fast = zlib.compress(rows, 1)
    pieces = [fast[i : i + 100] for i in range(0, len(fast), 100)]  # several IDATs, as chromium writes
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 0, 0, 0, 0))
    text = _chunk(b"tEXt", b"Software\x00test")
    original = PNG_SIGNATURE + header + text + b"".join(_chunk(b"IDAT", p) for p in pieces) + _chunk(b"IEND", b"")
    smaller = png.recompressed(original)
    assert len(smaller) < len(original) and png_size(smaller) == (64, 48)
    kinds, pixels, pos = [], b"", 8
    while pos < len(smaller):
        (length,) = struct.unpack(">I", smaller[pos : pos + 4])
        kind, body = smaller[pos + 4 : pos + 8], smaller[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", smaller[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(kind + body)
        kinds.append(kind)
        pixels += body if kind == b"IDAT" else b""
        pos += 12 + length
    assert kinds == [b"IHDR", b"tEXt", b"IDAT", b"IEND"] and zlib.decompress(pixels) == rows
    with pytest.raises(InvalidArgumentError, match="not a PNG"):
        png.recompressed(b"GIF89a")


@pytest.mark.parametrize("name", figures.FIGURES)
def test_every_figure_is_committed_as_a_modest_png(name):
    path = COMMITTED / f"{name}.png"
    assert path.is_file(), f"{path} is missing: run `python -m sponlib figures`"
    data = path.read_bytes()
    height = figures.FIGURES[name]().layout.height
    assert png_size(data) == (png.WIDTH * png.SCALE, height * png.SCALE), "re-export it"
    assert len(data) < MAX_PNG_BYTES


def test_docs_figures_holds_no_figure_that_is_not_registered():
    assert {path.stem for path in COMMITTED.glob("*.png")} <= set(figures.FIGURES)


def test_task_figure_shows_the_records_values_and_intervals():
    tasks = record(figures.TASKS_RECORD)
    fig = figures.tasks_figure()
    families = list(tasks["families"])
    traces = iter(fig.data)
    for task, source, metric, _ in figures.TASK_PANELS:
        for family in families:
            rows = figures.task_rows(tasks["families"][family], task, source, metric)
            for variant in ("masked", "spon"):
                trace = next(traces)
                assert trace.name == variant and list(trace.x) == [r["level"] for r in rows]
                assert list(trace.y) == [r[variant]["value"] for r in rows], (family, task, metric)
                top = [y + e for y, e in zip(trace.y, trace.error_y.array)]
                assert top == pytest.approx([r[variant]["ci"][1] for r in rows])
    dense_lines = [shape.y0 for shape in fig.layout.shapes]
    knowledge = figures.task_rows(tasks["families"][families[0]], "knowledge", "all", "top1")
    assert knowledge[0]["dense"]["value"] in dense_lines


def test_perplexity_figure_shows_the_robust_records_perplexities():
    robust = record(figures.ROBUST_RECORD)
    chosen = robust["choice"]["recipe"]
    entries = sorted((e for e in robust["final"] if e["recipe"] == chosen), key=lambda e: e["level"])
    fig = figures.perplexity_figure()
    assert [trace.name for trace in fig.data] == ["dense", "masked", "spon"] * 2
    novel, genres = fig.data[:3], fig.data[3:]
    for trace in (*novel, *genres):
        assert list(trace.x) == [e["level"] for e in entries]
    for trace in novel:  # the test novel: the record's own numbers
        assert list(trace.y) == [e["rows"][1][f"ppl_{trace.name}"] for e in entries]
    for trace in genres:  # the held-out genres: their geometric mean
        expected = [np.exp(np.mean([np.log(r[f"ppl_{trace.name}"]) for r in e["rows"][2:]])) for e in entries]
        assert list(trace.y) == pytest.approx(expected, rel=1e-12)
    assert fig.layout.yaxis.type == "log"
