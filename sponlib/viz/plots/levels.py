"""Figures across runs and sparsity levels: recovery bars per run and text, perplexity against
sparsity with the dense line, and speed against sparsity under the 1/(1−s) bound.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ...errors import InvalidArgumentError
from .style import (
    BOUND_NAME,
    OTHER_COLOURS,
    VARIANT_COLOURS,
    as_array,
    blank_figure,
    curve_styles,
    named_arrays,
)


def recovery_bars(
    rows: Sequence[Mapping[str, Any]], *, targets: Mapping[str, float] | None = None, title: str | None = None
) -> go.Figure:
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
    fig = blank_figure(
        title or "Recovery of the perplexity lost to sparsity", "run", "recovery (share of lost perplexity won back)"
    )
    for text in texts:
        recovery = [math.nan if row.get(text) is None else row[text] for row in rows]  # missing: no bar
        recovery = as_array(recovery, f"recovery of {text!r}")
        fig.add_trace(
            go.Bar(
                x=runs,
                y=recovery,
                name=text,
                marker_color=colours[text],
                hovertemplate=f"{text}<br>%{{x}}<br>recovery %{{y:.3f}}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line=dict(color="#555555", width=1))
    fig.add_hline(
        y=1,
        line=dict(color="#555555", width=1, dash="dot"),
        annotation_text="full recovery",
        annotation_position="top left",
    )
    several = len(set(targets.values())) > 1  # then say which text each target is for
    for value in dict.fromkeys(targets.values()):
        holders = [text for text, target in targets.items() if target == value]
        fig.add_hline(
            y=value,
            line=dict(color=colours[holders[0]] if len(holders) == 1 else "#555555", width=1.5, dash="dash"),
            annotation_position="top right",
            annotation_text=f"target {value:.2f}" + (f" ({', '.join(holders)})" if several else ""),
        )
    fig.update_layout(barmode="group")
    return fig


def _sparsity_levels(sparsity: Any) -> np.ndarray:
    """The x values of a figure against sparsity: (S,) levels in [0, 1)."""
    levels = as_array(sparsity, "sparsity").ravel()  # (S,)
    if levels.size == 0 or not np.all((levels >= 0) & (levels < 1)):
        raise InvalidArgumentError(f"sparsity is {levels.tolist()}; pass a non-empty sequence of levels in [0, 1).")
    return levels


def _check_one_per_level(levels: np.ndarray, arrays: dict[str, np.ndarray], hint: str = "") -> None:
    for name, values in arrays.items():
        if values.size != levels.size:
            raise InvalidArgumentError(
                f"{name!r} has {values.size} values for {levels.size} sparsity levels; give one value per level{hint}."
            )


def _against_sparsity(levels: np.ndarray, arrays: dict[str, np.ndarray], title: str, y_title: str, shown: str):
    """One line per named curve over the levels, drawn left to right; `shown` formats y in the hover."""
    order = np.argsort(levels, kind="stable")
    styles = curve_styles(list(arrays))
    fig = blank_figure(title, "sparsity (share of inputs zeroed)", y_title)
    for name, values in arrays.items():
        fig.add_trace(
            go.Scatter(
                x=levels[order],
                y=values[order],
                name=name,
                mode="lines+markers",
                line=dict(width=2, **styles[name]),
                hovertemplate=f"{name}<br>sparsity %{{x:.2f}}<br>{shown}<extra></extra>",
            )
        )
    return fig


def perplexity_vs_sparsity(
    sparsity: Any,
    perplexities: Mapping[Any, Any],
    *,
    dense: float | None = None,
    title: str | None = None,
    log_y: bool = True,
) -> go.Figure:
    """Perplexity of each named curve (a mask rule, "masked", "spon"...) against sparsity, on a log
    axis by default (collapse is exponential), with the dense perplexity as a grey dotted line."""
    levels = _sparsity_levels(sparsity)
    arrays = named_arrays(perplexities, "perplexities", ndim=1)
    _check_one_per_level(levels, arrays, " (NaN where there is none)")
    title = title or "Perplexity against sparsity"
    fig = _against_sparsity(levels, arrays, title, "perplexity", "perplexity %{y:.4g}")
    if dense is not None:
        fig.add_hline(
            y=float(dense),
            line=dict(color=VARIANT_COLOURS["dense"], width=1, dash="dot"),
            annotation_text="dense",
            annotation_position="bottom right",
        )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def speed_vs_sparsity(
    sparsity: Any,
    speedups: Mapping[Any, Any],
    *,
    bound: Any = None,
    title: str | None = None,
    unit: str = "speed-up vs dense",
) -> go.Figure:
    """Speed of each implementation against sparsity, with a dashed grey bound: the given one (one value
    per level), or the ideal 1/(1−s) of skipping zeroed inputs' weight columns, on a fine grid to max(s)."""
    levels = _sparsity_levels(sparsity)
    arrays = named_arrays(speedups, "speedups", ndim=1)
    given = None if bound is None else as_array(bound, "bound").ravel()
    _check_one_per_level(levels, {**arrays, **({} if given is None else {"bound": given})})
    fig = _against_sparsity(levels, arrays, title or "Speed against sparsity", unit, "%{y:.3g}")
    order = np.argsort(levels, kind="stable")
    if given is None:
        grid = np.linspace(0.0, float(levels.max()), 200)  # (200,)
        bound_x, bound_y, bound_name = grid, 1 / (1 - grid), BOUND_NAME
    else:
        bound_x, bound_y, bound_name = levels[order], given[order], "bound"
    fig.add_trace(
        go.Scatter(
            x=bound_x,
            y=bound_y,
            name=bound_name,
            mode="lines",
            line=dict(color="#999999", dash="dash", width=1.5),
            hovertemplate="sparsity %{x:.2f}<br>bound %{y:.3g}<extra></extra>",
        )
    )
    return fig
