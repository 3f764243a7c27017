"""Mask rules: what is thresholded, and how a projection's input is masked.

A projection y = W x reads S(x) instead of x, where S zeroes the entries whose score is at most
the projection's threshold τ:
    teal   score_i = |x_i|                       (magnitude, TEAL)
    wina   score_i = |x_i| · ‖W[:, i]‖₂          (weight-aware, WINA)
A mask rule is a score plus an allocation of sparsity over the projections: "uniform" (the same
level everywhere: teal, wina) or the block-wise "greedy" one (greedy, greedy-wina; see
sponlib.sparsity.allocation).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..models.placement import onloaded

SCORES = ("teal", "wina")  # what is thresholded
METHODS = ("teal", "wina", "greedy", "greedy-wina")  # mask rule = score + allocation


def check_sparsity(target: float) -> float:
    """A target sparsity must be a finite number in [0, 1)."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"target sparsity must be a number in [0, 1); got {target!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise InvalidArgumentError(
            f"target sparsity must be in [0, 1): the share of inputs zeroed; got {target!r} "
            "(1 would zero every input, use e.g. 0.5 for half)"
        )
    return value


def split_method(method: str) -> tuple[str, str]:
    """'greedy-wina' -> ('wina', 'greedy'); 'teal' -> ('teal', 'uniform')."""
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown mask rule {method!r}; choose from {', '.join(METHODS)}")
    if method.startswith("greedy"):
        return ("wina" if method.endswith("wina") else "teal"), "greedy"
    return method, "uniform"


def comparison_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores are compared with τ in: float32, or float64 for a float64 model. Half-
    precision activations are upcast (exactly) first, so τ is never rounded to bf16/fp16 and the
    hooks, the torch reference and the GPU kernels keep the same inputs."""
    return torch.promote_types(dtype, torch.float32)


def score_weights(module: nn.Linear, score: str) -> torch.Tensor | None:
    """What the input magnitudes are multiplied by before thresholding: ‖W[:, i]‖₂ for wina
    ((in,) tensor in the comparison dtype), nothing for teal."""
    if score != "wina":
        return None
    with onloaded(module):  # an offloaded weight is a meta tensor outside its forward
        weight = module.weight.detach()
        return weight.to(comparison_dtype(weight.dtype)).norm(dim=0)


def sparse_input(x: torch.Tensor, keep: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """What the projection reads: S(x), plus its SPON vector if it has one. (..., in) -> (..., in)"""
    sparse = x * keep
    # alpha broadcast over tokens; .to is a no-op unless a device map split this projection off
    return sparse if alpha is None else sparse + alpha.to(sparse.device, sparse.dtype)


def input_scores(x: torch.Tensor, col_norm: torch.Tensor | None) -> torch.Tensor:
    """Score of every input entry, in the comparison dtype: |x_i| (teal) or |x_i| · ‖W[:, i]‖₂
    (wina). (..., in) -> (..., in)"""
    magnitude = x.abs().to(comparison_dtype(x.dtype))
    return magnitude if col_norm is None else magnitude * col_norm.to(magnitude.device, magnitude.dtype)
