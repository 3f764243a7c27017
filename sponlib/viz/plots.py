"""Plotly figure builders for the analysis notebooks and reports: activation histograms, per-layer
drift / KL / cosine / CKA curves, CKA heatmaps, PCA views, recovery bars and speed-ups.

Each builder returns a `plotly.graph_objects.Figure` and never shows it; the caller decides where it
goes. Numeric inputs may be numpy arrays, torch tensors or lists. One look across figures:
    colour  dense dark grey, masked red, SPON blue (`VARIANT_COLOURS`). Names starting with a family
            ("masked 0.5", "spon@0.7") keep its colour, lighter for lower levels when a figure holds
            the family at several levels; curves named by a bare level ("0.25") follow a sequential
            scale (`level_colour`); any other name gets a colour of a fixed qualitative palette.
    dash    SPON curves dashed, all others solid, so masked and SPON stay apart in grey print too.
    axes    layers are 0-based block indices on x; template plotly_white, 420 px high.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, sample_colorscale

from ..errors import InvalidArgumentError

VARIANT_COLOURS = {"dense": "#3a3a3a", "masked": "#d62728", "spon": "#1f77b4"}
# For names outside the three families: no grey, red or blue, so none reads as a family.
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LEVEL_SCALE = "Viridis"  # sampled on [0, 0.85]: its yellow end vanishes on white
TEMPLATE = "plotly_white"
HEIGHT = 420
BOUND_NAME = "physical bound 1/(1−s)"

_LEVEL_IN_NAME = re.compile(r"^(dense|masked|spon)\s*[@=:_ -]?\s*(\d*\.?\d+)\s*$", re.I)


def _array(x: Any, what: str = "values") -> np.ndarray:
    """A float numpy array from an array, a tensor or a (nested) list."""
    if hasattr(x, "detach"):  # a torch tensor; no need to import torch here
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() and x.element_size() < 4 else x).numpy()  # no bf16 in numpy
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{what} is not numeric ({error}); pass numbers.") from None


def _family(name: Any) -> str | None:
    lowered = str(name).strip().lower()
    return next((family for family in VARIANT_COLOURS if lowered.startswith(family)), None)


def _as_level(name: Any) -> float | None:
    try:
        return float(name)
    except (TypeError, ValueError):
        return None


def variant_colour(name: Any, names: Sequence[Any] | None = None) -> str:
    """The colour of a variant: its family's ("dense", "masked", "spon", exact or as a prefix, any
    case), else one of OTHER_COLOURS: by the name's place among the sorted other `names` of the
    figure when given (distinct names, distinct colours), else by a stable hash of the name."""
    if (family := _family(name)) is not None:
        return VARIANT_COLOURS[family]
    others = sorted({str(other) for other in names or () if _family(other) is None})
    index = others.index(str(name)) if str(name) in others else zlib.crc32(str(name).encode())
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]


def level_colour(level: float, levels: Sequence[float]) -> str:
    """The colour of one sparsity level on a sequential scale spanning `levels` (lowest = dark)."""
    levels = _array(levels, "levels").ravel()
    if levels.size == 0:
        raise InvalidArgumentError("levels is empty: pass every level the figure shows.")
    low, high = float(levels.min()), float(levels.max())
    position = 0.5 if high == low else float(np.clip((float(level) - low) / (high - low), 0, 1))
    return sample_colorscale(LEVEL_SCALE, [0.85 * position])[0]


def _styles(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Line colour and dash of every curve of one figure (the rules in the module docstring)."""
    if all(_as_level(name) is not None for name in names):
        levels = [_as_level(name) for name in names]
        return {name: dict(color=level_colour(level, levels), dash="solid") for name, level in zip(names, levels)}
    family_levels: dict[str, set[float]] = {}
    for match in filter(None, map(_LEVEL_IN_NAME.match, names)):
        family_levels.setdefault(match[1].lower(), set()).add(float(match[2]))
    styles = {}
    for name in names:
        colour = variant_colour(name, names)
        if (match := _LEVEL_IN_NAME.match(name)) and len(levels := sorted(family_levels[match[1].lower()])) > 1:
            whiten = 0.6 * (1 - levels.index(float(match[2])) / (len(levels) - 1))  # lowest level palest
            if whiten > 0:  # the highest level keeps the plain family colour
                colour = "rgb({}, {}, {})".format(*(round(c + (255 - c) * whiten) for c in hex_to_rgb(colour)))
        styles[name] = dict(color=colour, dash="dash" if _family(name) == "spon" else "solid")
    return styles


def blank_figure(title: str, x_title: str, y_title: str, height: int = HEIGHT) -> go.Figure:
    """An empty figure in the common look (template, height, margins), for traces of one's own."""
    return go.Figure(layout=dict(template=TEMPLATE, height=height, title=dict(text=title), xaxis_title=x_title,
                                 yaxis_title=y_title, margin=dict(l=70, r=20, t=60, b=55)))


def _layer_ticks(n_layers: int) -> dict[str, Any]:
    """Integer block indices from 0, about 16 ticks at most."""
    return dict(tickmode="linear", tick0=0, dtick=max(1, math.ceil(n_layers / 16)))


def _named(mapping: Mapping[Any, Any], what: str, ndim: int) -> dict[str, np.ndarray]:
    """Names (as str) -> float arrays: 1-D all of one length (ndim 1), or (N, 2) (ndim 2)."""
    shape = "(L,)" if ndim == 1 else "(N, 2)"
    if not mapping:
        raise InvalidArgumentError(f"{what} is empty: pass a dict of name -> {shape} array.")
    arrays = {str(name): _array(values, f"{what}[{name!r}]") for name, values in mapping.items()}
    for name, values in arrays.items():
        if values.size == 0 or values.ndim != ndim or (ndim == 2 and values.shape[1] != 2):
            raise InvalidArgumentError(f"{what}[{name!r}] has shape {values.shape}; pass a non-empty {shape} array.")
    lengths = {name: len(values) for name, values in arrays.items()}
    if ndim == 1 and len(set(lengths.values())) > 1:
        raise InvalidArgumentError(f"{what} have different lengths {lengths}; give every curve the same "
                                   "number of values (NaN where one is missing).")
    return arrays


def _threshold(threshold: Any) -> float:
    threshold = float(_array(threshold, "threshold"))
    if not math.isfinite(threshold) or threshold < 0:
        raise InvalidArgumentError(f"threshold is {threshold}; pass a finite τ ≥ 0 (0 = dense).")
    return threshold


def _magnitudes(values: Any) -> np.ndarray:
    magnitudes = np.abs(_array(values)).ravel()  # (n,)
    if magnitudes.size == 0:
        raise InvalidArgumentError("values is empty: pass the entries of a projection's input.")
    if not np.all(np.isfinite(magnitudes)):
        raise InvalidArgumentError("values holds NaN or infinity; drop or fix those entries first.")
    return magnitudes


def zeroed_share(values: Any, threshold: float) -> float:
    """The share of entries with |x| ≤ threshold (exact zeros count as zeroed)."""
    return float(np.mean(_magnitudes(values) <= _threshold(threshold)))


def activation_histogram(values: Any, threshold: float, *, title: str | None = None,
                         projection: str | None = None, bins: int = 80, log_x: bool = True) -> go.Figure:
    """Histogram of |values| (any shape, flattened) with the threshold τ and the zeroed region |x| ≤ τ.

    With log_x the bins are on log10|x|, so are the shapes' x coordinates; exact zeros are left out and
    counted in the annotation. For a widget updating it in place: `fig.data[0]` is the one Bar trace,
    `fig.layout.shapes[0]` the threshold line, `shapes[1]` the shaded region (both hidden when τ = 0),
    `fig.layout.annotations[0]` the zeroed share.
    """
    magnitudes, threshold = _magnitudes(values), _threshold(threshold)
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
    fig.add_trace(go.Bar(
        x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges), name="entries", showlegend=False,
        customdata=10 ** bounds if log_x else bounds,  # bin edges in |x| for the hover text
        marker=dict(color=VARIANT_COLOURS["dense"], line_width=0), opacity=0.75,
        hovertemplate="|x| %{customdata[0]:.3g} – %{customdata[1]:.3g}<br>%{y} entries<extra></extra>"))
    visible = threshold > 0  # τ = 0 is dense: shapes kept (hidden) so a widget can move them later
    threshold_x = (math.log10(threshold) if log_x else threshold) if visible else float(edges[0])
    masked = VARIANT_COLOURS["masked"]
    fig.add_shape(type="line", xref="x", yref="paper", x0=threshold_x, x1=threshold_x, y0=0, y1=1,
                  line=dict(color=masked, width=2, dash="dash"), visible=visible)
    fig.add_shape(type="rect", xref="x", yref="paper", x0=min(float(edges[0]), threshold_x), x1=threshold_x,
                  y0=0, y1=1, fillcolor=masked, opacity=0.15, line_width=0, layer="below", visible=visible)
    note = f"τ = {threshold:.3g} · zeroed: {100 * share:.1f} %"
    if log_x and exact_zeros:
        note += f"<br>{exact_zeros:,} exact zero{'s' if exact_zeros != 1 else ''} not shown"
    fig.add_annotation(text=note, xref="paper", yref="paper", x=0.99, y=0.98, xanchor="right", yanchor="top",
                       showarrow=False, align="right", bgcolor="rgba(255,255,255,0.8)")
    fig.update_layout(bargap=0)
    if log_x:  # ticks at whole powers of ten, written 10^k
        decades = list(range(math.floor(edges[0]), math.ceil(edges[-1]) + 1))
        fig.update_xaxes(tickmode="array", tickvals=decades, ticktext=[f"10<sup>{k}</sup>" for k in decades])
    return fig


def per_layer(curves: Mapping[Any, Any], *, metric: str, title: str | None = None, unit: str | None = None,
              log_y: bool = False) -> go.Figure:
    """One line per curve over the layers; `curves` maps name -> per-layer values (NaN = missing)."""
    arrays = _named(curves, "curves", ndim=1)
    styles = _styles(list(arrays))
    fig = blank_figure(title or f"{metric} per layer", "layer", f"{metric} ({unit})" if unit else metric)
    for name, values in arrays.items():
        fig.add_trace(go.Scatter(
            x=np.arange(values.size), y=values, name=name, mode="lines+markers", marker_size=6,
            line=dict(width=2, **styles[name]), hovertemplate=f"{name}<br>layer %{{x}}<br>%{{y:.4g}}<extra></extra>",
        ))
    fig.update_xaxes(**_layer_ticks(len(next(iter(arrays.values())))))
    fig.update_yaxes(type="log" if log_y else "linear")
    return fig


def drift_per_layer(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """Relative L2 distance of each variant's residual stream from dense, per layer."""
    return per_layer(curves, metric="relative L2 drift ‖h_s−h_d‖/‖h_d‖",
                     title=title or "Drift of the residual stream from dense, per layer")


def kl_per_layer(curves: Mapping[Any, Any], *, title: str | None = None, log_y: bool = True) -> go.Figure:
    """Logit-lens KL divergence to dense at each layer (it spans decades, hence log y)."""
    return per_layer(curves, metric="logit-lens KL to dense", unit="nats", log_y=log_y,
                     title=title or "Logit-lens KL divergence to dense, per layer")


def cosine_per_layer(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """Mean cosine similarity of each variant's hidden states to dense, per layer."""
    return per_layer(curves, metric="cosine similarity to dense",
                     title=title or "Cosine similarity to dense, per layer")


def cka_diagonal(curves: Mapping[Any, Any], *, title: str | None = None) -> go.Figure:
    """CKA of each variant's layer l with dense layer l (the diagonal of `cka_heatmap`)."""
    return per_layer(curves, metric="CKA with dense layer l",
                     title=title or "CKA with the same dense layer, per layer")


def cka_heatmap(matrix: Any, *, title: str | None = None, x_label: str = "layer (variant)",
                y_label: str = "layer (dense)", zmin: float | None = None, zmax: float | None = 1.0) -> go.Figure:
    """An (L_y, L_x) CKA matrix as a heatmap, layer 0 at the bottom left; zmin/zmax None: the data's."""
    z = _array(matrix, "matrix")  # (L_y, L_x)
    if z.ndim != 2 or z.size == 0 or np.all(np.isnan(z)):
        raise InvalidArgumentError(f"matrix has shape {z.shape}; pass a non-empty 2-D (L_y, L_x) matrix "
                                   "with at least one value that is not NaN.")
    zmax = float(np.nanmax(z)) if zmax is None else float(zmax)
    zmin = float(np.nanmin(z)) if zmin is None else float(zmin)
    zmin = min(zmin, zmax - 1e-9)  # a constant matrix still needs a colour range
    fig = blank_figure(title or "CKA between layers", x_label, y_label, height=460)
    fig.add_trace(go.Heatmap(
        z=z, x=np.arange(z.shape[1]), y=np.arange(z.shape[0]), colorscale=LEVEL_SCALE, zmin=zmin, zmax=zmax,
        colorbar=dict(title=dict(text="CKA")),
        hovertemplate=f"{y_label} %{{y}}<br>{x_label} %{{x}}<br>CKA %{{z:.3f}}<extra></extra>"))
    fig.update_xaxes(constrain="domain", showgrid=False, **_layer_ticks(z.shape[1]))
    fig.update_yaxes(scaleanchor="x", constrain="domain", showgrid=False, **_layer_ticks(z.shape[0]))  # square cells
    return fig


def pc_titles(explained: Sequence[float] | None) -> tuple[str, str]:
    """Axis titles of a PCA plane, with each component's share of dense variance when given."""
    if explained is None:
        return "PC1", "PC2"
    shares = _array(explained, "explained").ravel()
    if shares.size < 2 or not np.all((shares >= 0) & (shares <= 1)):
        raise InvalidArgumentError(f"explained is {shares.tolist()}; pass at least two shares of variance "
                                   "in [0, 1], PC1 first.")
    return tuple(f"PC{i + 1} ({100 * shares[i]:.1f} % of dense variance)" for i in range(2))


def pca_scatter(points: Mapping[Any, Any], *, explained: Sequence[float] | None = None, title: str | None = None,
                max_points: int = 2000) -> go.Figure:
    """States of each variant in the plane of dense's first two principal components; a variant with
    more than max_points points is thinned to evenly spaced rows (deterministic)."""
    if int(max_points) < 1:
        raise InvalidArgumentError(f"max_points is {max_points}; pass at least 1.")
    arrays = _named(points, "points", ndim=2)
    styles = _styles(list(arrays))
    fig = blank_figure(title or "Hidden states in dense's principal plane", *pc_titles(explained))
    for name, xy in arrays.items():
        if len(xy) > max_points:
            xy = xy[np.linspace(0, len(xy) - 1, int(max_points)).round().astype(int)]  # (max_points, 2)
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], name=name, mode="markers",
            marker=dict(color=styles[name]["color"], size=4, opacity=0.5),  # small and see-through: clouds overlap
            hovertemplate=f"{name}<br>PC1 %{{x:.3g}}<br>PC2 %{{y:.3g}}<extra></extra>"))
    return fig


def pca_trajectories(paths: Mapping[Any, Any], *, explained: Sequence[float] | None = None, title: str | None = None,
                     label_layers: bool = True) -> go.Figure:
    """Each variant's (L, 2) path through dense's principal plane, one point per layer: layer 0 a
    diamond, and about 8 layers (always the last) labelled with their index."""
    arrays = _named(paths, "paths", ndim=2)
    styles = _styles(list(arrays))
    fig = blank_figure(title or "Path through the layers in dense's principal plane", *pc_titles(explained))
    for name, xy in arrays.items():
        last, step = len(xy) - 1, max(1, math.ceil(len(xy) / 8))
        labels = [str(layer) if layer == last or (layer % step == 0 and last - layer >= step / 2) else ""
                  for layer in range(len(xy))]  # a multiple of step right before the last would overlap it
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], name=name, customdata=np.arange(len(xy)),
            mode="lines+markers+text" if label_layers else "lines+markers", text=labels if label_layers else None,
            textposition="top center", textfont=dict(size=10, color=styles[name]["color"]),
            line=dict(width=2, **styles[name]),
            marker=dict(color=styles[name]["color"], symbol=["diamond"] + ["circle"] * last, size=[11] + [6] * last),
            hovertemplate=f"{name}<br>layer %{{customdata}}<br>PC1 %{{x:.3g}}<br>PC2 %{{y:.3g}}<extra></extra>"))
    return fig


def recovery_bars(rows: Sequence[Mapping[str, Any]], *, targets: Mapping[str, float] | None = None,
                  title: str | None = None) -> go.Figure:
    """Grouped bars of recovery per run and text (1 = all lost perplexity won back, < 0 = worse than
    masked), reference lines at 0 and 1, and a dashed line per distinct target value."""
    if not rows or any("run" not in row for row in rows):
        raise InvalidArgumentError("pass a non-empty list of rows like {'run': 'teal@0.5', 'brown': 0.47}.")
    runs = [str(row["run"]) for row in rows]
    texts = list(dict.fromkeys(key for row in rows for key in row if key != "run"))  # first-seen order
    if len(set(runs)) < len(runs) or not texts:
        raise InvalidArgumentError(f"rows need distinct run names (got {runs}) and a recovery per text.")
    targets = {text: float(value) for text, value in (targets or {}).items()}
    if unknown := sorted(set(targets) - set(texts)):
        raise InvalidArgumentError(f"targets names {unknown}, which no row has; use texts among {texts}.")
    colours = {text: OTHER_COLOURS[i % len(OTHER_COLOURS)] for i, text in enumerate(texts)}
    fig = blank_figure(title or "Recovery of the perplexity lost to sparsity", "run",
                  "recovery (share of lost perplexity won back)")
    for text in texts:
        recovery = [math.nan if row.get(text) is None else row[text] for row in rows]  # missing: no bar
        recovery = _array(recovery, f"recovery of {text!r}")
        fig.add_trace(go.Bar(x=runs, y=recovery, name=text, marker_color=colours[text],
                             hovertemplate=f"{text}<br>%{{x}}<br>recovery %{{y:.3f}}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color="#555555", width=1))
    fig.add_hline(y=1, line=dict(color="#555555", width=1, dash="dot"), annotation_text="full recovery",
                  annotation_position="top left")
    several = len(set(targets.values())) > 1  # then say which text each target is for
    for value in dict.fromkeys(targets.values()):
        holders = [text for text, target in targets.items() if target == value]
        fig.add_hline(y=value, line=dict(color=colours[holders[0]] if len(holders) == 1 else "#555555", width=1.5,
                                         dash="dash"), annotation_position="top right",
                      annotation_text=f"target {value:.2f}" + (f" ({', '.join(holders)})" if several else ""))
    fig.update_layout(barmode="group")
    return fig


def perplexity_vs_sparsity(sparsity: Any, perplexities: Mapping[Any, Any], *, dense: float | None = None,
                           title: str | None = None, log_y: bool = True) -> go.Figure:
    """Perplexity of each named curve (a mask rule, "masked", "spon"...) against sparsity, on a log
    axis by default (collapse is exponential), with the dense perplexity as a grey dotted line."""
    levels = _array(sparsity, "sparsity").ravel()  # (S,)
    if levels.size == 0 or not np.all((levels >= 0) & (levels < 1)):
        raise InvalidArgumentError(f"sparsity is {levels.tolist()}; pass a non-empty sequence of levels in [0, 1).")
    arrays = _named(perplexities, "perplexities", ndim=1)
    for name, values in arrays.items():
        if values.size != levels.size:
            raise InvalidArgumentError(f"{name!r} has {values.size} values for {levels.size} sparsity levels; "
                                       "give one value per level (NaN where there is none).")
    order = np.argsort(levels, kind="stable")
    styles = _styles(list(arrays))
    fig = blank_figure(title or "Perplexity against sparsity", "sparsity (share of inputs zeroed)", "perplexity")
    for name, values in arrays.items():
        fig.add_trace(go.Scatter(x=levels[order], y=values[order], name=name, mode="lines+markers",
                                 line=dict(width=2, **styles[name]),
                                 hovertemplate=f"{name}<br>sparsity %{{x:.2f}}<br>perplexity %{{y:.4g}}<extra></extra>"))
    if dense is not None:
        fig.add_hline(y=float(dense), line=dict(color=VARIANT_COLOURS["dense"], width=1, dash="dot"),
                      annotation_text="dense", annotation_position="bottom right")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def speed_vs_sparsity(sparsity: Any, speedups: Mapping[Any, Any], *, bound: Any = None, title: str | None = None,
                      unit: str = "speed-up vs dense") -> go.Figure:
    """Speed of each implementation against sparsity, with a dashed grey bound: the given one (one value
    per level), or the ideal 1/(1−s) of skipping zeroed inputs' weight columns, on a fine grid to max(s)."""
    levels = _array(sparsity, "sparsity").ravel()  # (S,)
    if levels.size == 0 or not np.all((levels >= 0) & (levels < 1)):
        raise InvalidArgumentError(f"sparsity is {levels.tolist()}; pass a non-empty sequence of levels in [0, 1).")
    arrays = _named(speedups, "speedups", ndim=1)
    given = None if bound is None else _array(bound, "bound").ravel()
    for name, values in {**arrays, **({} if given is None else {"bound": given})}.items():
        if values.size != levels.size:
            raise InvalidArgumentError(f"{name!r} has {values.size} values for {levels.size} sparsity levels; "
                                       "give one value per level.")
    order = np.argsort(levels, kind="stable")  # lines drawn left to right
    styles = _styles(list(arrays))
    fig = blank_figure(title or "Speed against sparsity", "sparsity (share of inputs zeroed)", unit)
    for name, values in arrays.items():
        fig.add_trace(go.Scatter(x=levels[order], y=values[order], name=name, mode="lines+markers",
                                 line=dict(width=2, **styles[name]),
                                 hovertemplate=f"{name}<br>sparsity %{{x:.2f}}<br>%{{y:.3g}}<extra></extra>"))
    if given is None:
        grid = np.linspace(0.0, float(levels.max()), 200)  # (200,)
        bound_x, bound_y, bound_name = grid, 1 / (1 - grid), BOUND_NAME
    else:
        bound_x, bound_y, bound_name = levels[order], given[order], "bound"
    fig.add_trace(go.Scatter(x=bound_x, y=bound_y, name=bound_name, mode="lines",
                             line=dict(color="#999999", dash="dash", width=1.5),
                             hovertemplate="sparsity %{x:.2f}<br>bound %{y:.3g}<extra></extra>"))
    return fig
