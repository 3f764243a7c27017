"""sponlib: robust activation sparsity for LLMs.

Sparse-hooked Hugging Face models, spontaneous neurons (SPON), sparse kernels and representation
analysis. Start with `load_model`, `load_corpus`, `load_windows` and `perplexity`; sparsify with
`resolve_mask` (or `calibrate` and a `Sparsifier`); repair with `train_spon`, keep the vectors with
`save_spon` / `load_spon`, fold them with `SponVectors.fold_into`; look inside with `compare` and
`LayerAnalysis`. The subpackages hold the rest, one layer each (docs/architecture.md):

    models  <-  sparsity  <-  spon  <-  kernels, analysis  <-  viz, experiments  <-  cli
"""

from ._version import __version__
from .analysis import LayerAnalysis, Variant, compare
from .data import load_corpus, load_windows, token_windows, tokenize_source
from .errors import SponlibError
from .masks import Mask, resolve_mask
from .models import DEFAULT_MODEL, INPUT_GROUPS, ROLES, block_projections, iter_projections, load_model
from .perplexity import perplexity
from .sparsity import Calibration, Sparsifier, Thresholds, calibrate
from .spon import SponVectors, TrainConfig, load_spon, save_spon, train_spon

__all__ = [
    "DEFAULT_MODEL",
    "INPUT_GROUPS",
    "ROLES",
    "Calibration",
    "LayerAnalysis",
    "Mask",
    "Sparsifier",
    "SponVectors",
    "SponlibError",
    "Thresholds",
    "TrainConfig",
    "Variant",
    "__version__",
    "block_projections",
    "calibrate",
    "compare",
    "iter_projections",
    "load_corpus",
    "load_model",
    "load_spon",
    "load_windows",
    "perplexity",
    "resolve_mask",
    "save_spon",
    "token_windows",
    "tokenize_source",
    "train_spon",
]
