"""Representation analysis: what sparsity does to the model's hidden states, and what SPON undoes.

capture      the residual stream and projection inputs of chosen tokens, under any hooks
metrics      drift, cosine, CKA (plain, debiased, minibatch), PCA, KL: pure tensor maths
compare      dense vs masked vs SPON per layer (`Variant`, `compare`), CKA between layers, PCA paths
alignment    does SPON learn the mean residual the mask removes (W α against W E[x − S(x)])
separation   which metrics tell masked from SPON apart beyond window-to-window noise
layers       `LayerAnalysis`: per-setting results cached for the dashboards
"""

from .alignment import mean_residuals, spon_alignment
from .capture import Capture, capture, input_name, resid_name, select_tokens
from .compare import (
    METRICS,
    Variant,
    capture_variants,
    compare,
    dense_lens,
    distance,
    layer_cka_matrix,
    lens_kl,
    lens_kl_rows,
    pca_paths,
)
from .layers import LayerAnalysis
from .metrics import cka_matrix, cosine, debiased_cka, kl_divergence, linear_cka, minibatch_cka, relative_drift
from .separation import separation

__all__ = [
    "METRICS",
    "Capture",
    "LayerAnalysis",
    "Variant",
    "capture",
    "capture_variants",
    "cka_matrix",
    "compare",
    "cosine",
    "debiased_cka",
    "dense_lens",
    "distance",
    "input_name",
    "kl_divergence",
    "layer_cka_matrix",
    "lens_kl",
    "lens_kl_rows",
    "linear_cka",
    "mean_residuals",
    "minibatch_cka",
    "pca_paths",
    "relative_drift",
    "resid_name",
    "select_tokens",
    "separation",
    "spon_alignment",
]
