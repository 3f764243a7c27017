"""sponlib: robust activation sparsity for LLMs.

Sparse-hooked Hugging Face models, spontaneous neurons (SPON), sparse kernels and representation
analysis. Start with `load_model`, `load_corpus`, `token_windows` and `perplexity`; sparsify
with `calibrate` (or `Calibration.load`) and a `Sparsifier`; repair with `train_spon`, keep the
vectors with `save_spon` / `load_spon`, fold them with `SponVectors.fold_into`; look inside with
`sponlib.capture.capture`, `compare` and `LayerAnalysis` (plots in `sponlib.plots`, dashboards in `sponlib.widgets`).
"""

__version__ = "0.1.0"

from .adapters import INPUT_GROUPS, ROLES, block_projections, iter_projections
from .analysis import LayerAnalysis, Variant, compare
from .calibration import Calibration, calibrate
from .data import load_corpus, token_windows, tokenize_source
from .errors import SponlibError
from .models import DEFAULT_MODEL, load_model
from .perplexity import perplexity
from .sparsity import Sparsifier, Thresholds
from .spon import SponVectors, load_spon, save_spon
from .training import TrainConfig, train_spon

__all__ = [
    "DEFAULT_MODEL", "INPUT_GROUPS", "ROLES", "Calibration", "LayerAnalysis", "Sparsifier", "SponVectors",
    "SponlibError", "Thresholds", "TrainConfig", "Variant", "block_projections", "calibrate", "compare",
    "iter_projections", "load_corpus", "load_model", "load_spon", "perplexity", "save_spon", "token_windows",
    "tokenize_source", "train_spon",
]
