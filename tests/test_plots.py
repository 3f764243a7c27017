"""Figure builders of sponlib.plots: data in the figure equals the input, one look across figures,
bad input refused, and no builder shows anything or prints."""

import math

import numpy as np
import plotly
import plotly.basedatatypes
import plotly.io as pio
import pytest
import torch

from sponlib.errors import InvalidArgumentError
from sponlib.viz import plots

CURVES = {"dense": [0.0, 0.0, 0.0, 0.0], "masked": [0.1, 0.2, math.nan, 0.4], "spon": [0.05, 0.1, 0.12, 0.2]}
RNG = np.random.default_rng(0)
BUILDERS = {
    "histogram": lambda: plots.activation_histogram(RNG.normal(size=500), 0.3, projection="layers.0.mlp.up_proj"),
    "per_layer": lambda: plots.per_layer(CURVES, metric="drift"),
    "drift": lambda: plots.drift_per_layer(CURVES),
    "kl": lambda: plots.kl_per_layer({"masked": [0.1, 1.0, 2.0], "spon": [0.01, 0.1, 0.5]}),
    "cosine": lambda: plots.cosine_per_layer(CURVES),
    "cka_diagonal": lambda: plots.cka_diagonal(CURVES),
    "cka_heatmap": lambda: plots.cka_heatmap(np.eye(4)),
    "pca_scatter": lambda: plots.pca_scatter(
        {"dense": RNG.normal(size=(50, 2)), "masked": RNG.normal(size=(50, 2))}, explained=[0.4, 0.2]
    ),
    "pca_trajectories": lambda: plots.pca_trajectories(
        {"dense": RNG.normal(size=(30, 2)), "spon": RNG.normal(size=(30, 2))}
    ),
    "recovery": lambda: plots.recovery_bars(
        [{"run": "teal@0.5", "persuasion": 0.68, "brown": 0.47}], targets={"persuasion": 0.7, "brown": 0.7}
    ),
    "speed": lambda: plots.speed_vs_sparsity([0, 0.25, 0.5], {"Triton sparse GEMV": [1.0, 1.2, 1.6]}),
    "perplexity": lambda: plots.perplexity_vs_sparsity([0.25, 0.5], {"teal": [35.0, 55.0]}, dense=34.6),
}


def line_colours(fig):
    return {trace.name: trace.line.color for trace in fig.data}


@pytest.mark.parametrize("name", BUILDERS)
def test_builders_show_nothing_print_nothing_and_serialise(name, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a builder tried to show a figure")

    monkeypatch.setattr(plotly.basedatatypes.BaseFigure, "show", refuse)
    monkeypatch.setattr(pio, "show", refuse)
    monkeypatch.setattr("webbrowser.open", refuse)
    fig = BUILDERS[name]()
    assert capsys.readouterr() == ("", "")
    pio.to_json(fig)  # serialisable, NaN included
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.template == pio.templates["plotly_white"]
    assert 380 <= fig.layout.height <= 460


def test_variant_colours_are_distinct_and_match_by_prefix():
    dense, masked, spon = (plots.variant_colour(name) for name in ("dense", "masked", "spon"))
    assert len({dense, masked, spon}) == 3
    assert plots.variant_colour("masked 0.5") == masked
    assert plots.variant_colour("SPON@0.7") == spon
    assert plots.variant_colour("dense (bf16)") == dense
    other = plots.variant_colour("Triton sparse GEMV")
    assert other == plots.variant_colour("Triton sparse GEMV") and other not in {dense, masked, spon}
    names = ["b", "a", "masked"]  # by sorted name among a figure's other names
    assert plots.variant_colour("a", names) == plots.OTHER_COLOURS[0]
    assert plots.variant_colour("b", names) == plots.OTHER_COLOURS[1]


def test_colours_are_the_same_in_two_builders():
    from_lines = line_colours(plots.per_layer(CURVES, metric="drift"))
    scatter = plots.pca_scatter({name: np.zeros((3, 2)) for name in CURVES})
    from_markers = {trace.name: trace.marker.color for trace in scatter.data}
    assert from_lines == from_markers == {name: plots.VARIANT_COLOURS[name] for name in CURVES}


def test_level_colour_is_sequential():
    levels = [0.25, 0.5, 0.75]
    colours = [plots.level_colour(level, levels) for level in levels]
    assert len(set(colours)) == 3
    assert colours[0] == plots.level_colour(0.25, levels)
    with pytest.raises(InvalidArgumentError):
        plots.level_colour(0.5, [])


def test_zeroed_share_on_a_hand_made_example():
    assert plots.zeroed_share([0, 0.1, 0.2, 1, 2], 0.2) == pytest.approx(0.6)
    assert plots.zeroed_share(torch.tensor([0.0, -3.0]), 0) == pytest.approx(0.5)  # exact zero counts
    assert plots.zeroed_share(torch.tensor([1.0, -0.1], dtype=torch.bfloat16), 0.5) == pytest.approx(0.5)


def test_histogram_marks_the_threshold_in_log10_coordinates():
    fig = plots.activation_histogram([0, 0.1, -0.2, 1, 2], 0.2, bins=10)
    assert len(fig.data) == 1 and fig.data[0].type == "bar"
    assert fig.data[0].y.sum() == 4  # the exact zero is left out of a log axis
    line, region = fig.layout.shapes
    assert line.type == "line" and line.x0 == line.x1 == pytest.approx(math.log10(0.2))
    assert region.type == "rect" and region.x1 == pytest.approx(math.log10(0.2)) and line.visible and region.visible
    note = fig.layout.annotations[0].text
    assert "zeroed: 60.0 %" in note and "1 exact zero not shown" in note
    assert fig.layout.xaxis.title.text == "|x| (log scale)" and fig.layout.yaxis.title.text == "entries"
    assert "10<sup>0</sup>" in fig.layout.xaxis.ticktext


def test_histogram_linear_axis_and_dense_threshold():
    values = np.array([0.0, 0.5, 1.0, 1.5])
    fig = plots.activation_histogram(values, 0.5, log_x=False, bins=3)
    assert fig.layout.shapes[0].x0 == pytest.approx(0.5) and fig.data[0].y.sum() == 4
    dense = plots.activation_histogram(values, 0.0)
    assert len(dense.layout.shapes) == 2 and not any(shape.visible for shape in dense.layout.shapes)
    assert "zeroed: 25.0 %" in dense.layout.annotations[0].text


@pytest.mark.parametrize("threshold", [-0.1, math.nan, math.inf])
def test_histogram_refuses_a_bad_threshold(threshold):
    with pytest.raises(InvalidArgumentError, match="threshold"):
        plots.activation_histogram([1.0, 2.0], threshold)


@pytest.mark.parametrize("values", [[], [0.0, 0.0], [1.0, math.nan]])
def test_histogram_refuses_bad_values(values):
    with pytest.raises(InvalidArgumentError):
        plots.activation_histogram(values, 0.1)


def test_per_layer_holds_the_input():
    fig = plots.per_layer(CURVES, metric="relative drift", unit="share", title="t")
    assert [trace.name for trace in fig.data] == list(CURVES) and all(t.type == "scatter" for t in fig.data)
    for trace in fig.data:
        np.testing.assert_array_equal(trace.y, np.asarray(CURVES[trace.name], dtype=float))
        np.testing.assert_array_equal(trace.x, np.arange(4))
    assert fig.layout.yaxis.title.text == "relative drift (share)" and fig.layout.xaxis.title.text == "layer"
    assert fig.data[2].line.dash == "dash" and fig.data[1].line.dash == "solid"  # SPON dashed


def test_per_layer_colours_numeric_names_by_level_and_family_levels_by_shade():
    by_level = plots.per_layer({0.25: [1, 2], "0.5": [1, 3], 0.75: [2, 2]}, metric="m")
    levels = [0.25, 0.5, 0.75]
    assert list(line_colours(by_level).values()) == [plots.level_colour(level, levels) for level in levels]
    several = line_colours(plots.per_layer({"masked 0.5": [1], "masked 0.7": [2], "spon 0.5": [1]}, metric="m"))
    assert several["masked 0.7"] == plots.VARIANT_COLOURS["masked"] != several["masked 0.5"]
    assert several["spon 0.5"] == plots.VARIANT_COLOURS["spon"]  # one level: the plain family colour


def test_wrappers_name_their_axes():
    kl = plots.kl_per_layer({"masked": [0.1, 1.0]})
    assert kl.layout.yaxis.title.text == "logit-lens KL to dense (nats)" and kl.layout.yaxis.type == "log"
    assert "‖h_s−h_d‖/‖h_d‖" in plots.drift_per_layer(CURVES).layout.yaxis.title.text
    assert "cosine" in plots.cosine_per_layer(CURVES).layout.yaxis.title.text
    assert "CKA" in plots.cka_diagonal(CURVES).layout.yaxis.title.text


@pytest.mark.parametrize("curves", [{}, {"a": [1, 2], "b": [1, 2, 3]}, {"a": [[1, 2]]}, {"a": []}, {"a": ["x"]}])
def test_per_layer_refuses_bad_curves(curves):
    with pytest.raises(InvalidArgumentError):
        plots.per_layer(curves, metric="m")


def test_cka_heatmap_holds_the_matrix():
    matrix = RNG.uniform(size=(3, 5))
    fig = plots.cka_heatmap(torch.tensor(matrix), title="CKA masked vs dense")
    assert len(fig.data) == 1 and fig.data[0].type == "heatmap"
    np.testing.assert_allclose(fig.data[0].z, matrix)
    assert fig.data[0].colorbar.title.text == "CKA" and "%{z:.3f}" in fig.data[0].hovertemplate
    assert fig.layout.yaxis.autorange != "reversed"  # layer 0 at the bottom
    assert fig.data[0].zmax == 1.0 and fig.data[0].zmin == pytest.approx(matrix.min())
    assert plots.cka_heatmap(np.ones((2, 2))).data[0].zmin < 1.0  # constant matrix still has a range


@pytest.mark.parametrize("matrix", [np.ones(3), np.ones((2, 2, 2)), np.zeros((0, 3)), np.full((2, 2), np.nan)])
def test_cka_heatmap_refuses_what_is_not_a_matrix(matrix):
    with pytest.raises(InvalidArgumentError, match="matrix"):
        plots.cka_heatmap(matrix)


def test_pca_scatter_subsamples_deterministically():
    points = {"dense": np.arange(20000.0).reshape(10000, 2), "spon": np.ones((5, 2))}
    first, second = (plots.pca_scatter(points, max_points=100) for _ in range(2))
    assert len(first.data[0].x) == 100 and len(first.data[1].x) == 5
    np.testing.assert_array_equal(first.data[0].x, second.data[0].x)
    np.testing.assert_array_equal(first.data[0].x[[0, -1]], [0.0, 19998.0])  # evenly spaced, both ends
    assert len(set(first.data[0].x)) == 100
    titled = plots.pca_scatter(points, explained=[0.42, 0.1])
    assert titled.layout.xaxis.title.text == "PC1 (42.0 % of dense variance)"
    assert titled.layout.yaxis.title.text == "PC2 (10.0 % of dense variance)"
    assert plots.pca_scatter(points).layout.xaxis.title.text == "PC1"
    with pytest.raises(InvalidArgumentError):
        plots.pca_scatter(points, explained=[0.5])
    with pytest.raises(InvalidArgumentError):
        plots.pca_scatter({"dense": np.ones((4, 3))})


def test_pca_trajectories_mark_the_start_and_label_layers():
    paths = {"dense": RNG.normal(size=(24, 2)), "masked 0.5": RNG.normal(size=(24, 2))}
    fig = plots.pca_trajectories(paths)
    assert len(fig.data) == 2 and all(trace.mode == "lines+markers+text" for trace in fig.data)
    np.testing.assert_array_equal(fig.data[1].x, paths["masked 0.5"][:, 0])
    symbols = fig.data[0].marker.symbol
    assert symbols[0] != symbols[1] and len(set(symbols[1:])) == 1
    labels = fig.data[0].text
    assert labels[0] == "0" and labels[-1] == "23" and 0 < sum(map(bool, labels)) <= 10
    assert fig.data[1].line.color == plots.VARIANT_COLOURS["masked"]
    assert plots.pca_trajectories(paths, label_layers=False).data[0].mode == "lines+markers"


def test_recovery_bars_group_texts_and_draw_references():
    rows = [{"run": "teal@0.5", "persuasion": 0.68, "brown": 0.47}, {"run": "teal@0.7", "brown": -0.1}]
    fig = plots.recovery_bars(rows, targets={"persuasion": 0.7, "brown": 0.5})
    assert [trace.name for trace in fig.data] == ["persuasion", "brown"] and fig.layout.barmode == "group"
    assert list(fig.data[0].x) == ["teal@0.5", "teal@0.7"]
    np.testing.assert_array_equal(fig.data[1].y, [0.47, -0.1])
    assert math.isnan(fig.data[0].y[1])
    lines = {shape.y0: shape.line.dash for shape in fig.layout.shapes}
    assert lines[1] == "dot" and 0 in lines and lines[0.7] == lines[0.5] == "dash"
    assert {"target 0.70 (persuasion)", "target 0.50 (brown)"} <= {a.text for a in fig.layout.annotations}
    one_target = plots.recovery_bars(rows, targets={"persuasion": 0.7, "brown": 0.7})
    assert "target 0.70" in {a.text for a in one_target.layout.annotations}


@pytest.mark.parametrize(
    "rows, targets",
    [
        ([], None),
        ([{"persuasion": 0.5}], None),
        ([{"run": "a"}], None),
        ([{"run": "a", "x": 1}, {"run": "a", "x": 2}], None),
        ([{"run": "a", "x": 1}], {"y": 0.7}),
    ],
)
def test_recovery_bars_refuse_bad_rows(rows, targets):
    with pytest.raises(InvalidArgumentError):
        plots.recovery_bars(rows, targets=targets)


def test_speed_vs_sparsity_draws_the_physical_bound():
    fig = plots.speed_vs_sparsity(
        np.array([0.5, 0.0, 0.25]), {"Triton sparse GEMV": [1.6, 1.0, 1.2], "per layer": [1.4, 1.0, 1.1]}
    )
    gemv, _, bound = fig.data
    np.testing.assert_array_equal(gemv.x, [0.0, 0.25, 0.5])  # sorted by level, values follow
    np.testing.assert_array_equal(gemv.y, [1.0, 1.2, 1.6])
    assert bound.name == "physical bound 1/(1−s)" and bound.line.dash == "dash"
    assert bound.x[0] == 0 and bound.x[-1] == pytest.approx(0.5) and len(bound.x) > 50
    np.testing.assert_allclose(bound.y, 1 / (1 - np.asarray(bound.x)))
    assert fig.layout.xaxis.title.text == "sparsity (share of inputs zeroed)"
    assert fig.layout.yaxis.title.text == "speed-up vs dense"
    given = plots.speed_vs_sparsity([0.5, 0.0], {"a": [2, 1]}, bound=[1.8, 1.0], unit="tokens/s")
    np.testing.assert_array_equal(given.data[-1].y, [1.0, 1.8])
    assert given.layout.yaxis.title.text == "tokens/s"


@pytest.mark.parametrize(
    "sparsity, speedups, bound",
    [
        ([], {"a": []}, None),
        ([0.5, 1.0], {"a": [1, 2]}, None),
        ([0.5], {"a": [1, 2]}, None),
        ([0.5], {}, None),
        ([0.0, 0.5], {"a": [1, 2]}, [1.0]),
    ],
)
def test_speed_vs_sparsity_refuses_mismatches(sparsity, speedups, bound):
    with pytest.raises(InvalidArgumentError):
        plots.speed_vs_sparsity(sparsity, speedups, bound=bound)


def test_perplexity_vs_sparsity_sorts_levels_and_marks_dense():
    fig = plots.perplexity_vs_sparsity(
        [0.7, 0.25, 0.5], {"masked": [640.0, 35.2, 54.7], "spon": [79.8, 35.0, 41.1]}, dense=34.65
    )
    masked, spon = fig.data
    np.testing.assert_array_equal(masked.x, [0.25, 0.5, 0.7])
    np.testing.assert_array_equal(masked.y, [35.2, 54.7, 640.0])
    np.testing.assert_array_equal(spon.y, [35.0, 41.1, 79.8])
    assert spon.line.dash == "dash" and masked.line.color == plots.VARIANT_COLOURS["masked"]
    assert fig.layout.yaxis.type == "log"
    assert [shape.y0 for shape in fig.layout.shapes] == [34.65]
    assert plots.perplexity_vs_sparsity([0.5], {"a": [2.0]}, log_y=False).layout.yaxis.type != "log"


@pytest.mark.parametrize(
    "sparsity, curves", [([], {"a": []}), ([0.5, 1.0], {"a": [1, 2]}), ([0.5], {"a": [1, 2]}), ([0.5], {})]
)
def test_perplexity_vs_sparsity_refuses_mismatches(sparsity, curves):
    with pytest.raises(InvalidArgumentError):
        plots.perplexity_vs_sparsity(sparsity, curves)
