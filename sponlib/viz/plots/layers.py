"""Figures over the layers of one model: a projection input's histogram with its threshold,
per-layer curves (drift, logit-lens KL, cosine, CKA), the layer x layer CKA heatmap, and states
and paths in the plane of the dense model's first two principal components.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ...errors import InvalidArgumentError
from .style import (
    LEVEL_SCALE,
    VARIANT_COLOURS,
    as_array,
    blank_figure,
    check_threshold,
    curve_styles,
    input_magnitudes,
    layer_ticks,
    named_arrays,
)


def _mark_threshold(fig: go.Figure, threshold_x: float, left: float, visible: bool) -> None:
    """The threshold as a dashed line at `threshold_x` and the zeroed region left of it shaded
    (layout.shapes[0] and [1], hidden but present when not `visible`, so a widget can move them)."""
    masked = VARIANT_COLOURS["masked"]
    fig.add_shape(
        type="line",
        xref="x",
        yref="paper",
        x0=threshold_x,
        x1=threshold_x,
        y0=0,
        y1=1,
        line=dict(color=masked, width=2, dash="dash"),
        visible=visible,
    )
    fig.add_shape(
        type="rect",
        xref="x",
        yref="paper",
        x0=min(left, threshold_x),
        x1=threshold_x,
        y0=0,
        y1=1,
        fillcolor=masked,
        opacity=0.15,
        line_width=0,
        layer="below",
        visible=visible,
    )


def activation_histogram(
    values: Any,
    threshold: float,
    *,
    title: str | None = None,
    projection: str | None = None,
    bins: int = 80,
    log_x: bool = True,
) -> go.Figure:
    """Histogram of |values| (any shape, flattened) with the threshold τ and the zeroed region |x| ≤ τ.

    With log_x the bins are on log10|x|, so are the shapes' x coordinates; exact zeros are left out and
    counted in the annotation. For a widget updating it in place: `fig.data[0]` is the one Bar trace,
    `fig.layout.shapes[0]` the threshold line, `shapes[1]` the shaded region (both hidden when τ = 0),
    `fig.layout.annotations[0]` the zeroed share.
    """
    magnitudes, threshold = input_magnitudes(values), check_threshold(threshold)
    if int(bins) < 1:
        raise InvalidArgumentError(f"bins is {bins}; pass at least 1.")
    share = float(np.mean(magnitudes <= threshold))
    exact_zeros = int(np.count_nonzero(magnitudes == 0))
    if log_x and exact_zeros == magnitudes.size:
        raise InvalidArgumentError("every entry is exactly 0, so a log axis shows nothing; pass log_x=False.")
    shown = np.log10(magnitudes[magnitudes > 0]) if log_x else magnitudes  # (n_shown,)
    counts, edges = np.histogram(shown, bins=int(bins))  # (bins,), (bins + 1,)
    bounds = np.stack([edges[:-1], edges[1:]], axis=1)  # (bins, 2)
    default_title = f"Input magnitudes of {projection}" if projection else "Magnitudes of projection inputs"
    fig = blank_figure(title or default_title, "|x| (log scale)" if log_x else "|x|", "entries")
    fig.add_trace(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            name="entries",
            showlegend=False,
            customdata=10**bounds if log_x else bounds,  # bin edges in |x| for the hover text
            marker=dict(color=VARIANT_COLOURS["dense"], line_width=0),
            opacity=0.75,
            hovertemplate="|x| %{customdata[0]:.3g} – %{customdata[1]:.3g}<br>%{y} entries<extra></extra>",
        )
    )
    visible = threshold > 0  # τ = 0 is dense: shapes kept (hidden) so a widget can move them later
    threshold_x = (math.log10(threshold) if log_x else threshold) if visible else float(edges[0])
    _mark_threshold(fig, threshold_x, float(edges[0]), visible)
    note = f"τ = {threshold:.3g} · zeroed: {100 * share:.1f} %"
    if log_x and exact_zeros:
        note += f"<br>{exact_zeros:,} exact zero{'s' if exact_zeros != 1 else ''} not shown"
    fig.add_annotation(
        text=note,
        xref="paper",
        yref="paper",
        x=0.99,
        y=0.98,
        xanchor="right",
        yanchor="top",
        showarrow=False,
        align="right",
        bgcolor="rgba(255,255,255,0.8)",
    )
    fig.update_layout(bargap=0)
    if log_x:  # ticks at whole powers of ten, written 10^k
        decades = list(range(math.floor(edges[0]), math.ceil(edges[-1]) + 1))
        fig.update_xaxes(tickmode="array", tickvals=decades, ticktext=[f"10<sup>{k}</sup>" for k in decades])
    return fig


def per_layer(
    curves: Mapping[Any, Any], *, metric: str, title: str | None = None, unit: str | None = None, log_y: bool = False
) -> go.Figure:
    """One line per curve over the layers; `curves` maps name -> per-layer values (NaN = missing)."""
    arrays = named_arrays(curves, "curves", ndim=1)
    styles = curve_styles(list(arrays))
    fig = blank_figure(title or f"{metric} per layer", "layer", f"{metric} ({unit})" if unit else metric)
    for name, values in arrays.items():
        fig.add_trace(
            go.Scatter(
                x=np.arange(values.size),
                y=values,
                name=name,
                mode="lines+markers",
                marker_size=6,
                line=dict(width=2, **styles[name]),
                hovertemplate=f"{name}<br>layer %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(**layer_ticks(len(next(iter(arrays.values())))))
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def drift_per_layer(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """Relative L2 distance of each variant's residual stream from dense, per layer."""
    return per_layer(
        curves,
        metric="relative L2 drift ‖h_s−h_d‖/‖h_d‖",
        title=title or "Drift of the residual stream from dense, per layer",
    )


def kl_per_layer(curves: Mapping[Any, Any], *, title: str | None = None, log_y: bool = True) -> go.Figure:
    """Logit-lens KL divergence to dense at each layer (it spans decades, hence log y)."""
    return per_layer(
        curves,
        metric="logit-lens KL to dense",
        unit="nats",
        log_y=log_y,
        title=title or "Logit-lens KL divergence to dense, per layer",
    )


def cosine_per_layer(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """Mean cosine similarity of each variant's hidden states to dense, per layer."""
    return per_layer(
        curves, metric="cosine similarity to dense", title=title or "Cosine similarity to dense, per layer"
    )


def cka_diagonal(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """CKA of each variant's layer l with dense layer l (the diagonal of `cka_heatmap`)."""
    return per_layer(curves, metric="CKA with dense layer l", title=title or "CKA with the same dense layer, per layer")


def cka_heatmap(
    matrix: Any,
    *,
    title: str | None = None,
    x_label: str = "layer (variant)",
    y_label: str = "layer (dense)",
    zmin: float | None = None,
    zmax: float | None = 1.0,
) -> go.Figure:
    """An (L_y, L_x) CKA matrix as a heatmap, layer 0 at the bottom left; zmin/zmax None: the data's."""
    z = as_array(matrix, "matrix")  # (L_y, L_x)
    if z.ndim != 2 or z.size == 0 or np.all(np.isnan(z)):
        raise InvalidArgumentError(
            f"matrix has shape {z.shape}; pass a non-empty 2-D (L_y, L_x) matrix "
            "with at least one value that is not NaN."
        )
    zmax = float(np.nanmax(z)) if zmax is None else float(zmax)
    zmin = float(np.nanmin(z)) if zmin is None else float(zmin)
    zmin = min(zmin, zmax - 1e-9)  # a constant matrix still needs a colour range
    fig = blank_figure(title or "CKA between layers", x_label, y_label, height=460)
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=np.arange(z.shape[1]),
            y=np.arange(z.shape[0]),
            colorscale=LEVEL_SCALE,
            zmin=zmin,
            zmax=zmax,
            colorbar=dict(title=dict(text="CKA")),
            hovertemplate=f"{y_label} %{{y}}<br>{x_label} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_xaxes(constrain="domain", showgrid=False, **layer_ticks(z.shape[1]))
    fig.update_yaxes(scaleanchor="x", constrain="domain", showgrid=False, **layer_ticks(z.shape[0]))  # square cells
    return fig


def pc_titles(explained: Sequence[float] | None) -> tuple[str, str]:
    """Axis titles of a PCA plane, with each component's share of dense variance when given."""
    if explained is None:
        return "PC1", "PC2"
    shares = as_array(explained, "explained").ravel()
    if shares.size < 2 or not np.all((shares >= 0) & (shares <= 1)):
        raise InvalidArgumentError(
            f"explained is {shares.tolist()}; pass at least two shares of variance in [0, 1], PC1 first."
        )
    return tuple(f"PC{i + 1} ({100 * shares[i]:.1f} % of dense variance)" for i in range(2))


def pca_scatter(
    points: Mapping[Any, Any],
    *,
    explained: Sequence[float] | None = None,
    title: str | None = None,
    max_points: int = 2000,
) -> go.Figure:
    """States of each variant in the plane of dense's first two principal components; a variant with
    more than max_points points is thinned to evenly spaced rows (deterministic)."""
    if int(max_points) < 1:
        raise InvalidArgumentError(f"max_points is {max_points}; pass at least 1.")
    arrays = named_arrays(points, "points", ndim=2)
    styles = curve_styles(list(arrays))
    fig = blank_figure(title or "Hidden states in dense's principal plane", *pc_titles(explained))
    for name, xy in arrays.items():
        if len(xy) > max_points:
            xy = xy[np.linspace(0, len(xy) - 1, int(max_points)).round().astype(int)]  # (max_points, 2)
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                name=name,
                mode="markers",
                marker=dict(color=styles[name]["color"], size=4, opacity=0.5),  # small and see-through: clouds overlap
                hovertemplate=f"{name}<br>PC1 %{{x:.3g}}<br>PC2 %{{y:.3g}}<extra></extra>",
            )
        )
    return fig


def pca_trajectories(
    paths: Mapping[Any, Any],
    *,
    explained: Sequence[float] | None = None,
    title: str | None = None,
    label_layers: bool = True,
) -> go.Figure:
    """Each variant's (L, 2) path through dense's principal plane, one point per layer: layer 0 a
    diamond, and about 8 layers (always the last) labelled with their index."""
    arrays = named_arrays(paths, "paths", ndim=2)
    styles = curve_styles(list(arrays))
    fig = blank_figure(title or "Path through the layers in dense's principal plane", *pc_titles(explained))
    for name, xy in arrays.items():
        last, step = len(xy) - 1, max(1, math.ceil(len(xy) / 8))
        labels = [
            str(layer) if layer == last or (layer % step == 0 and last - layer >= step / 2) else ""
            for layer in range(len(xy))
        ]  # a multiple of step right before the last would overlap it
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                name=name,
                customdata=np.arange(len(xy)),
                mode="lines+markers+text" if label_layers else "lines+markers",
                text=labels if label_layers else None,
                textposition="top center",
                textfont=dict(size=10, color=styles[name]["color"]),
                line=dict(width=2, **styles[name]),
                marker=dict(
                    color=styles[name]["color"], symbol=["diamond"] + ["circle"] * last, size=[11] + [6] * last
                ),
                hovertemplate=f"{name}<br>layer %{{customdata}}<br>PC1 %{{x:.3g}}<br>PC2 %{{y:.3g}}<extra></extra>",
            )
        )
    return fig
