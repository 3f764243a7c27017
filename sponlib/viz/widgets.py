"""ipywidgets dashboards on the plots: a sparsity slider, a mask-rule selector and a layer
selector that update plotly figures in place (`go.FigureWidget`, through anywidget).

    analysis = LayerAnalysis(model, probe_ids, calibration, spon=..., spon_levels=...)
    DriftExplorer(analysis)          # drift and logit-lens KL per layer, PCA at one layer
    ThresholdExplorer(analysis)      # one projection's input histogram with its threshold

Every setting is computed once by `LayerAnalysis` and cached, so moving back to a level redraws
at once. Each dashboard displays as its `.widget`, then (with `static_images()` on) a PNG of each
of its figures as first drawn, for readers without JavaScript; `.refresh()` is what a control
change calls. Rows of figures and controls wrap, so a narrow window stacks them.
At a level between the trained ones (`spon_levels`), SPON is interpolated and the status says so.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go

from ..analysis.layers import LayerAnalysis
from ..analysis.metrics import pca_fit, pca_project
from ..errors import InvalidArgumentError
from ..models.adapters import ROLES
from ..sparsity.rules import input_scores, score_weights, split_method
from . import plots
from .static import snapshot

SLIDER_LEVELS = tuple(round(0.05 * i, 2) for i in range(0, 19))  # 0 .. 0.9: the slider stops
TITLES = {"drift": "Drift of the residual stream from dense", "lens_kl": "Logit-lens KL to dense"}
# A figure's share of a row: plotly's own width for a figure its box gives none, so two sit side by
# side in an output about 1450 px wide (a window of some 1550 px) and stack below that.
FIGURE_BASIS = "700px"


def wrapping_row(*children) -> w.Box:
    """Controls side by side, wrapping onto a new line where the output is too narrow."""
    return w.Box(list(children), layout=w.Layout(display="flex", flex_flow="row wrap", align_items="center"))


def figure_row(*figures) -> w.Box:
    """Figures side by side where each gets FIGURE_BASIS, else one under another at the full
    width; never cut off. (A FigureWidget's `layout` is plotly's, so each sits in a box of its own
    that carries the flex settings; the figure fills the box and plotly sizes itself to it.)"""
    boxes = [w.VBox([figure], layout=w.Layout(flex=f"1 1 {FIGURE_BASIS}", min_width="0")) for figure in figures]
    return w.Box(boxes, layout=w.Layout(display="flex", flex_flow="row wrap", width="100%"))


@contextmanager
def _collection_after():
    """Python's cyclic garbage collection waits until the redraw is done. With a model loaded a
    full collection walks some 700,000 objects (0.4 s on 2 cores), and the allocations of a
    redraw would otherwise start one in the middle of it; reference counting still frees
    everything else at once, and the collection runs at the next allocation after the redraw."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Dashboard:
    """Level slider and rule dropdown shared by the dashboards; subclasses draw."""

    def __init__(self, analysis: LayerAnalysis, rules=("teal",), level: float = 0.5, levels=SLIDER_LEVELS):
        for rule in rules:
            split_method(rule)  # unknown rules fail here, not on the first slider move
        self.analysis = analysis
        self.rule = w.Dropdown(options=list(rules), value=rules[0], description="mask rule")
        self.level = w.SelectionSlider(
            options=list(levels), value=level, description="sparsity", continuous_update=False
        )
        self.status = w.HTML()
        self.last_update_s = 0.0

    def _observe(self, *controls) -> None:
        for control in controls:
            control.observe(lambda change: self.refresh(), names="value")

    def refresh(self) -> None:
        started = time.perf_counter()
        with _collection_after():
            self._draw()
        self.last_update_s = time.perf_counter() - started

    def _draw(self) -> None:
        raise NotImplementedError

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
        snapshot(self.widget)  # nothing unless static images are on


def _set_curve(trace, values, visible: bool = True) -> None:
    trace.y = list(values) if visible else [None] * len(trace.x)
    trace.visible = True if visible else "legendonly"


class DriftExplorer(_Dashboard):
    """Relative drift and logit-lens KL to dense per layer, masked and (where vectors exist at the
    level, trained or interpolated) SPON; a PCA of the selected layer's states, fitted on dense."""

    def __init__(self, analysis: LayerAnalysis, rules=("teal",), level: float = 0.5, levels=SLIDER_LEVELS, layer=None):
        super().__init__(analysis, rules, level, levels)
        n = analysis.n_blocks
        self.layer = w.IntSlider(
            value=n // 2 if layer is None else layer, min=0, max=n - 1, description="layer", continuous_update=False
        )
        empty = {"masked": [np.nan] * n, "spon": [np.nan] * n}
        self.drift = go.FigureWidget(plots.drift_per_layer(empty))
        self.kl = go.FigureWidget(plots.kl_per_layer(empty))
        self.pca = go.FigureWidget(plots.pca_scatter({k: np.zeros((1, 2)) for k in ("dense", "masked", "spon")}))
        self._pcas: dict[int, tuple] = {}  # layer -> (PCA fitted on dense, dense's (N, 2) points in it)
        self._observe(self.rule, self.level, self.layer)
        self.widget = w.VBox(
            [wrapping_row(self.rule, self.level, self.layer), self.status, figure_row(self.drift, self.kl), self.pca]
        )
        self.refresh()

    def _draw(self) -> None:
        """Masked curves first, then SPON's (a second forward pass) when vectors exist at the level,
        so the first curves show before the second pass starts."""
        rule, level = self.rule.value, self.level.value
        a = self.analysis
        shown = tuple(TITLES)  # the metrics drawn: the others are left to whoever asks for them
        masked = a.result(rule, level, metrics=shown) if level > 0 else None
        with_spon = level > 0 and a.has_spon(rule, level)
        self._show(masked, None, pending=with_spon)
        if with_spon:
            self._show(masked, a.result(rule, level, with_spon=True, metrics=shown))

    def _pca(self, layer: int) -> tuple:
        """(PCA fitted on dense's states at `layer`, dense's (N, 2) points in it), once per layer:
        neither depends on the level."""
        if layer not in self._pcas:
            dense = self.analysis.dense.resid()[layer][self.analysis.later]  # (N, d)
            pca = pca_fit(dense)
            self._pcas[layer] = (pca, pca_project(pca, dense))
        return self._pcas[layer]

    def _show(self, masked: dict | None, spon: dict | None, pending: bool = False) -> None:
        rule, level, layer = self.rule.value, self.level.value, self.layer.value
        a = self.analysis
        pca, dense_points = self._pca(layer)
        with self.drift.batch_update(), self.kl.batch_update(), self.pca.batch_update():
            for figure, metric in ((self.drift, "drift"), (self.kl, "lens_kl")):
                figure.layout.title.text = f"{TITLES[metric]}, {rule} at {level:g}"
                _set_curve(figure.data[0], masked["metrics"][metric] if masked else [0.0] * a.n_blocks)
                _set_curve(figure.data[1], spon["metrics"][metric] if spon else [], visible=spon is not None)
            for trace, result in zip(self.pca.data, (None, masked, spon)):
                if result is None:
                    points = dense_points
                else:
                    points = pca_project(pca, result["capture"].resid()[layer][a.later])  # (N, 2)
                trace.x, trace.y = points[:, 0].tolist(), points[:, 1].tolist()
                trace.visible = True if (result is not None or trace.name == "dense") else "legendonly"
            self.pca.layout.title.text = f"layer {layer}: states in the plane of dense's first two components"
            self.pca.layout.xaxis.title.text, self.pca.layout.yaxis.title.text = plots.pc_titles(
                pca.explained_variance_ratio_
            )
        parts = [f"probe perplexity: dense {a.dense_perplexity:.2f}"]
        if masked:
            parts.append(f"masked {masked['perplexity']:.2f} (measured sparsity {masked['measured']:.3f})")
        between = a.spon_between(rule, level) if level > 0 else None
        name = "SPON" if between is None else f"SPON (interpolated {between[0]:g}–{between[1]:g})"
        if spon:
            parts.append(f"{name} {spon['perplexity']:.2f} (measured sparsity {spon['measured']:.3f})")
        else:
            parts.append(f"{name}: computing..." if pending else "no SPON vectors at this level")
        self.status.value = " · ".join(parts)


class ThresholdExplorer(_Dashboard):
    """The input of one projection (upstream masks on) as a histogram of its score, with the
    projection's threshold at the chosen level; the share it zeroes and the probe's perplexity."""

    def __init__(
        self,
        analysis: LayerAnalysis,
        rules=("teal",),
        level: float = 0.5,
        levels=SLIDER_LEVELS,
        block: int = 0,
        role: str = "q",
    ):
        if "larosa" in rules:
            raise InvalidArgumentError(
                "the threshold explorer draws each input against its threshold; larosa keeps a Top-K of "
                "rotated inputs and has none: explore it with the DriftExplorer"
            )
        super().__init__(analysis, rules, level, levels)
        self.block = w.IntSlider(
            value=block, min=0, max=analysis.n_blocks - 1, description="block", continuous_update=False
        )
        self.role = w.Dropdown(options=list(ROLES), value=role, description="projection")
        self.figure = go.FigureWidget(plots.activation_histogram(np.ones(4), 0.0))
        self._observe(self.rule, self.level, self.block, self.role)
        self.widget = w.VBox(
            [wrapping_row(self.rule, self.level), wrapping_row(self.block, self.role), self.status, self.figure]
        )
        self.refresh()

    def _draw(self) -> None:
        a = self.analysis
        rule, level, block, role = self.rule.value, self.level.value, self.block.value, self.role.value
        projection = a.projection(block, role)
        score = split_method(rule)[0]
        seen = a.projection_input(rule if level > 0 else None, level, block, role)
        values = input_scores(seen["values"], score_weights(projection.module, score))  # (N, in)
        tau = a.variant(rule, level).thresholds.taus[projection.name] if level > 0 else 0.0
        what = "|x|" if score == "teal" else "|x|·‖W[:, i]‖"
        fresh = plots.activation_histogram(
            values,
            tau,
            title=f"{projection.name}: {what} on the probe, {rule} at {level:g}",
            projection=projection.name,
        )
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = fresh.data[0].x, fresh.data[0].y
            self.figure.data[0].width = fresh.data[0].width
            self.figure.layout.shapes = fresh.layout.shapes
            self.figure.layout.annotations = fresh.layout.annotations
            self.figure.layout.title = fresh.layout.title
            self.figure.layout.xaxis = fresh.layout.xaxis
        self.status.value = (
            f"zeroed in this projection: {plots.zeroed_share(values, tau):.1%} · "
            f"all projections: {seen['measured']:.3f} · probe perplexity "
            f"{seen['perplexity']:.2f} (dense {a.dense_perplexity:.2f})"
        )
