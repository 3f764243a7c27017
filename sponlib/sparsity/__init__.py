"""Activation sparsity: which inputs of each projection are zeroed, and the hooks that zero them.

rules         the scores (teal |x|, wina |x|·‖W[:, i]‖) and mask rules, the masked input S(x)
thresholds    `Thresholds`: one τ per projection for a rule at a level, as a file
sparsifier    `Sparsifier`: forward pre-hooks that apply thresholds (and SPON vectors)
calibration   statistics of every projection's input, from which thresholds are read
allocation    the greedy block-wise allocation of sparsity over a block's projections
"""

from .allocation import allocation_levels, greedy_allocation
from .calibration import REFINE_LEVELS, Calibration, calibrate, dense_statistics, refine_thresholds
from .rules import (
    METHODS,
    SCORES,
    check_sparsity,
    comparison_dtype,
    input_scores,
    score_weights,
    sparse_input,
    split_method,
)
from .sparsifier import MaskHook, Sparsifier
from .thresholds import Thresholds, quantile_thresholds

__all__ = [
    "METHODS",
    "REFINE_LEVELS",
    "SCORES",
    "Calibration",
    "MaskHook",
    "Sparsifier",
    "Thresholds",
    "allocation_levels",
    "calibrate",
    "check_sparsity",
    "comparison_dtype",
    "dense_statistics",
    "greedy_allocation",
    "input_scores",
    "quantile_thresholds",
    "refine_thresholds",
    "score_weights",
    "sparse_input",
    "split_method",
]
