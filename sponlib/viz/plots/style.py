"""The look shared by every figure of `sponlib.viz.plots`: colours per variant and level, line
styles, the empty figure in the common template, and the checks that turn inputs (arrays, tensors
or lists) into float arrays with a clear error.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, sample_colorscale

from ...errors import InvalidArgumentError

VARIANT_COLOURS = {"dense": "#3a3a3a", "masked": "#d62728", "spon": "#1f77b4"}
# For names outside the three families: no grey, red or blue, so none reads as a family.
OTHER_COLOURS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LEVEL_SCALE = "Viridis"  # sampled on [0, 0.85]: its yellow end vanishes on white
TEMPLATE = "plotly_white"
HEIGHT = 420
BOUND_NAME = "physical bound 1/(1−s)"

_LEVEL_IN_NAME = re.compile(r"^(dense|masked|spon)\s*[@=:_ -]?\s*(\d*\.?\d+)\s*$", re.I)


def as_array(x: Any, what: str = "values") -> np.ndarray:
    """A float numpy array from an array, a tensor or a (nested) list."""
    if hasattr(x, "detach"):  # a torch tensor; no need to import torch here
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() and x.element_size() < 4 else x).numpy()  # no bf16 in numpy
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"{what} is not numeric ({error}); pass numbers.") from None


def family_of(name: Any) -> str | None:
    lowered = str(name).strip().lower()
    return next((family for family in VARIANT_COLOURS if lowered.startswith(family)), None)


def as_level(name: Any) -> float | None:
    try:
        return float(name)
    except (TypeError, ValueError):
        return None


def variant_colour(name: Any, names: Sequence[Any] | None = None) -> str:
    """The colour of a variant: its family's ("dense", "masked", "spon", exact or as a prefix, any
    case), else one of OTHER_COLOURS: by the name's place among the sorted other `names` of the
    figure when given (distinct names, distinct colours), else by a stable hash of the name."""
    if (family := family_of(name)) is not None:
        return VARIANT_COLOURS[family]
    others = sorted({str(other) for other in names or () if family_of(other) is None})
    index = others.index(str(name)) if str(name) in others else zlib.crc32(str(name).encode())
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]


def level_colour(level: float, levels: Sequence[float]) -> str:
    """The colour of one sparsity level on a sequential scale spanning `levels` (lowest = dark)."""
    levels = as_array(levels, "levels").ravel()
    if levels.size == 0:
        raise InvalidArgumentError("levels is empty: pass every level the figure shows.")
    low, high = float(levels.min()), float(levels.max())
    position = 0.5 if high == low else float(np.clip((float(level) - low) / (high - low), 0, 1))
    return sample_colorscale(LEVEL_SCALE, [0.85 * position])[0]


def curve_styles(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Line colour and dash of every curve of one figure (the rules in the module docstring)."""
    if all(as_level(name) is not None for name in names):
        levels = [as_level(name) for name in names]
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
        styles[name] = dict(color=colour, dash="dash" if family_of(name) == "spon" else "solid")
    return styles


def blank_figure(title: str, x_title: str, y_title: str, height: int = HEIGHT) -> go.Figure:
    """An empty figure in the common look (template, height, margins), for traces of one's own."""
    return go.Figure(
        layout=dict(
            template=TEMPLATE,
            height=height,
            title=dict(text=title),
            xaxis_title=x_title,
            yaxis_title=y_title,
            margin=dict(l=70, r=20, t=60, b=55),
        )
    )


def layer_ticks(n_layers: int) -> dict[str, Any]:
    """Integer block indices from 0, about 16 ticks at most."""
    return dict(tickmode="linear", tick0=0, dtick=max(1, math.ceil(n_layers / 16)))


def named_arrays(mapping: Mapping[Any, Any], what: str, ndim: int) -> dict[str, np.ndarray]:
    """Names (as str) -> float arrays: 1-D all of one length (ndim 1), or (N, 2) (ndim 2)."""
    shape = "(L,)" if ndim == 1 else "(N, 2)"
    if not mapping:
        raise InvalidArgumentError(f"{what} is empty: pass a dict of name -> {shape} array.")
    arrays = {str(name): as_array(values, f"{what}[{name!r}]") for name, values in mapping.items()}
    for name, values in arrays.items():
        if values.size == 0 or values.ndim != ndim or (ndim == 2 and values.shape[1] != 2):
            raise InvalidArgumentError(f"{what}[{name!r}] has shape {values.shape}; pass a non-empty {shape} array.")
    lengths = {name: len(values) for name, values in arrays.items()}
    if ndim == 1 and len(set(lengths.values())) > 1:
        raise InvalidArgumentError(
            f"{what} have different lengths {lengths}; give every curve the same "
            "number of values (NaN where one is missing)."
        )
    return arrays


def check_threshold(threshold: Any) -> float:
    threshold = float(as_array(threshold, "threshold"))
    if not math.isfinite(threshold) or threshold < 0:
        raise InvalidArgumentError(f"threshold is {threshold}; pass a finite τ ≥ 0 (0 = dense).")
    return threshold


def input_magnitudes(values: Any) -> np.ndarray:
    magnitudes = np.abs(as_array(values)).ravel()  # (n,)
    if magnitudes.size == 0:
        raise InvalidArgumentError("values is empty: pass the entries of a projection's input.")
    if not np.all(np.isfinite(magnitudes)):
        raise InvalidArgumentError("values holds NaN or infinity; drop or fix those entries first.")
    return magnitudes


def zeroed_share(values: Any, threshold: float) -> float:
    """The share of entries with |x| ≤ threshold (exact zeros count as zeroed)."""
    return float(np.mean(input_magnitudes(values) <= check_threshold(threshold)))
