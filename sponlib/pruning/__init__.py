"""Weight-pruning baselines: Wanda and SparseGPT, unstructured or N:M, applied block by block.

Where activation sparsity skips the weights an input does not need token by token, these methods
zero a fixed share of the weights for good; they are the baselines it is compared with.

    patterns     "50%", "2:4": parsing, and the per-row choice of which weights go
    wanda        score |W_ij| · ‖X_j‖₂, lowest zeroed per row (no weight update)
    sparsegpt    OBS-style pruning with the remaining weights updated, one layer at a time
    sequential   block-by-block input statistics, each pass stopped after the block it serves

    summary = prune_model(model, ids, "sparsegpt", "2:4")   # ids: (N, L) calibration windows
"""

from __future__ import annotations

import time

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..models.adapters import INPUT_GROUPS, Projection, iter_projections
from ..models.placement import is_offloaded
from .patterns import Pattern, check_fits, format_pattern, keep_mask, parse_pattern
from .sequential import collect_statistics, prune_sequentially
from .sparsegpt import HessianAccumulator, sparsegpt_prune
from .wanda import wanda_mask, wanda_prune_

METHODS = ("wanda", "sparsegpt")

__all__ = [
    "METHODS",
    "HessianAccumulator",
    "collect_statistics",
    "format_pattern",
    "keep_mask",
    "parse_pattern",
    "prune_model",
    "prune_sequentially",
    "sparsegpt_prune",
    "wanda_mask",
    "wanda_prune_",
]


def _check_arguments(model, ids, method, pattern, batch_size, blocksize, percdamp) -> Pattern:
    """Everything checked before the first weight changes: a refused call leaves the model intact."""
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    pattern = parse_pattern(pattern)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.shape[0] > 0 and not ids.is_floating_point()):
        shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise InvalidArgumentError(f"ids must be a (N, L) tensor of token ids with N >= 1; got {shape}")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise InvalidArgumentError(f"batch_size must be a positive integer; got {batch_size!r}")
    if method == "sparsegpt":
        if not (isinstance(blocksize, int) and blocksize > 0):
            raise InvalidArgumentError(f"blocksize must be a positive integer; got {blocksize!r}")
        if isinstance(pattern, tuple) and blocksize % pattern[1]:
            raise InvalidArgumentError(
                f"blocksize {blocksize} must be a multiple of M={pattern[1]} for {format_pattern(pattern)} pruning"
            )
        if not (isinstance(percdamp, (int, float)) and 0 <= percdamp < float("inf")):
            raise InvalidArgumentError(f"percdamp must be a number >= 0 (e.g. 0.01); got {percdamp!r}")
    for p in iter_projections(model):
        check_fits(pattern, p.in_features, p.name)
        if is_offloaded(p.module):
            raise InvalidArgumentError(
                f"'{p.name}' is offloaded by its device map; pruning writes weights in place: load the model "
                "on devices that hold it whole"
            )
    return pattern


def _zero_shares(projections: list[Projection]) -> tuple[dict[str, float], float]:
    """Measured share of zero weights of each projection, and over all of them weighted by size."""
    shares, zeros, total = {}, 0, 0
    for p in projections:
        weight = p.module.weight
        count = int((weight == 0).sum())
        shares[p.name] = count / weight.numel()
        zeros, total = zeros + count, total + weight.numel()
    return shares, zeros / total


@torch.no_grad()
def prune_model(
    model: nn.Module,
    ids: torch.Tensor,
    method: str,
    pattern: str | float | tuple[int, int],
    *,
    batch_size: int = 4,
    blocksize: int = 128,
    percdamp: float = 0.01,
    progress: bool = True,
) -> dict:
    """Prune every projection of `model` in place with `method` ("wanda" or "sparsegpt") to `pattern`
    (a share such as 0.5 or "50%", or "N:M" such as "2:4"), calibrated on the windows `ids` (N, L),
    block by block. `blocksize` and `percdamp` are SparseGPT's. Returns a summary of what was done."""
    pattern = _check_arguments(model, ids, method, pattern, batch_size, blocksize, percdamp)
    began = time.perf_counter()

    def prune_block(block: dict[str, Projection], stats: dict[str, HessianAccumulator]) -> None:
        for group in INPUT_GROUPS:
            stat = stats[group[0]]  # one input, shared by the group's projections
            for role in group:
                weight = block[role].module.weight
                if method == "wanda":
                    wanda_prune_(weight, stat.norms(), pattern)
                else:
                    weight.copy_(sparsegpt_prune(weight, stat.hessian, pattern, blocksize, percdamp))

    was_training = model.training
    model.eval()  # no dropout in the calibration passes
    try:
        prune_sequentially(
            model,
            ids,
            prune_block,
            diagonal_only=method == "wanda",
            batch_size=batch_size,
            progress=progress,
            desc=f"{method} {format_pattern(pattern)}",
        )
    finally:
        model.train(was_training)
    shares, overall = _zero_shares(list(iter_projections(model)))
    summary = {
        "method": method,
        "pattern": format_pattern(pattern),
        "zero_share": shares,  # projection name -> measured share of its weights that are 0
        "overall_zero_share": overall,  # over all projection weights, weighted by size
        "windows": int(ids.shape[0]),
        "tokens": int(ids.numel()),
        "seconds": time.perf_counter() - began,
    }
    if method == "sparsegpt":
        summary.update(blocksize=blocksize, percdamp=percdamp)
    return summary
