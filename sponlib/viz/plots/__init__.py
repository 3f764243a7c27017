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

    style    the colours, line styles and empty figure every builder shares
    layers   figures over one model's layers: histogram, per-layer curves, CKA heatmap, PCA
    levels   figures across runs and levels: recovery bars, perplexity and speed against sparsity
"""

from .layers import (
    activation_histogram,
    cka_diagonal,
    cka_heatmap,
    cosine_per_layer,
    drift_per_layer,
    kl_per_layer,
    pc_titles,
    pca_scatter,
    pca_trajectories,
    per_layer,
)
from .levels import perplexity_vs_sparsity, recovery_bars, speed_vs_sparsity
from .style import (
    BOUND_NAME,
    HEIGHT,
    LEVEL_SCALE,
    OTHER_COLOURS,
    TEMPLATE,
    VARIANT_COLOURS,
    blank_figure,
    level_colour,
    variant_colour,
    zeroed_share,
)

__all__ = [
    "BOUND_NAME",
    "HEIGHT",
    "LEVEL_SCALE",
    "OTHER_COLOURS",
    "TEMPLATE",
    "VARIANT_COLOURS",
    "activation_histogram",
    "blank_figure",
    "cka_diagonal",
    "cka_heatmap",
    "cosine_per_layer",
    "drift_per_layer",
    "kl_per_layer",
    "level_colour",
    "pc_titles",
    "pca_scatter",
    "pca_trajectories",
    "per_layer",
    "perplexity_vs_sparsity",
    "recovery_bars",
    "speed_vs_sparsity",
    "variant_colour",
    "zeroed_share",
]
