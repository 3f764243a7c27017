"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

Each weight is scored by its magnitude times the norm of the input it multiplies,
    S_ij = |W_ij| · ‖X_j‖₂      (‖X_j‖₂: L2 norm of input channel j over all calibration tokens),
and within each output row the lowest-scoring weights are zeroed (a share of the row, or N in
every group of M columns). No weight is updated: the kept ones stay as they were.
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from .patterns import Pattern, keep_mask


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Keep mask of one linear layer: True for the weights Wanda keeps. weight (out, in),
    input_norms (in,) -> (out, in) bool"""
    if weight.dim() != 2 or input_norms.shape != (weight.shape[1],):
        raise InvalidArgumentError(
            f"wanda_mask needs a (out, in) weight and (in,) input norms; got {tuple(weight.shape)} "
            f"and {tuple(input_norms.shape)}"
        )
    work = torch.promote_types(weight.dtype, torch.float32)  # scores of half-precision weights in float32
    scores = weight.detach().to(work).abs() * input_norms.to(weight.device, work)  # (out, in)
    return keep_mask(scores, pattern)


@torch.no_grad()
def wanda_prune_(weight: torch.Tensor, input_norms: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Zero, in place, the weights of one layer that Wanda drops; returns the keep mask (out, in)."""
    keep = wanda_mask(weight, input_norms, pattern)
    weight.masked_fill_(~keep, 0)
    return keep
