"""Mask rules: what is thresholded, and how a projection's input is masked.

A projection y = W x reads S(x) instead of x, where S zeroes the entries whose score is at most
the projection's threshold τ:
    teal   score_i = |x_i|                       (magnitude, TEAL)
    wina   score_i = |x_i| · ‖W[:, i]‖₂          (weight-aware, WINA)
A mask rule is a score plus an allocation of sparsity over the projections: "uniform" (the same
level everywhere: teal, wina) or the block-wise "greedy" one (greedy, greedy-wina; see
sponlib.sparsity.allocation).

Two rules change what W reads beyond zeroing entries:
    larosa   Top-K per token on the input rotated into its PCA basis, then rotated back
             (score "topk", no threshold; sponlib.sparsity.rotation)
    rsparse  the teal mask, plus the dropped part x − S(x) through a low-rank part of W
             (sponlib.sparsity.lowrank)
"""

from __future__ import annotations

import struct

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..models.placement import onloaded

SCORES = ("teal", "wina")  # what is thresholded (and calibrated)
METHODS = ("teal", "wina", "greedy", "greedy-wina", "larosa", "rsparse")  # mask rule = score + allocation
THRESHOLD_METHODS = METHODS[:4]  # the rules a threshold alone makes: what the kernels and exports run


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
    """'greedy-wina' -> ('wina', 'greedy'); 'teal' -> ('teal', 'uniform'); 'larosa' -> ('topk',
    'uniform'); 'rsparse' -> ('teal', 'uniform') (its thresholds are teal's)."""
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown mask rule {method!r}; choose from {', '.join(METHODS)}")
    if method in ("larosa", "rsparse"):
        return ("topk" if method == "larosa" else "teal"), "uniform"
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
    return with_vector(x * keep, alpha)


def with_vector(sparse: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    """S(x) + alpha, the projection's SPON vector, if it has one. (..., in) -> (..., in)"""
    # alpha broadcast over tokens; .to is a no-op unless a device map split this projection off
    return sparse if alpha is None else sparse + alpha.to(sparse.device, sparse.dtype)


def masked_input(x: torch.Tensor, tau: float, col_norm: torch.Tensor | None) -> torch.Tensor:
    """S(x): the entries whose score is <= tau set to 0 (what `sparse_input` gives for the keep
    mask `input_scores(x, col_norm) > tau`). (..., in) -> (..., in)"""
    if col_norm is None:
        # teal in one fused pass, no mask tensor: compared in x's own dtype, exactly as in float32
        same = tau if x.dtype == comparison_dtype(x.dtype) else half_threshold(tau, x.dtype)
        if same is not None:
            return F.hardshrink(x, same)
    return x * (input_scores(x, col_norm) > tau)


FLOAT32_MAX = 3.4028234663852886e38
FLOAT16_MAX = 65504.0


def half_threshold(tau: float, dtype: torch.dtype) -> float | None:
    """For bf16 or fp16 inputs, a threshold in their own dtype that keeps exactly the entries the
    float32 comparison keeps: the largest value of `dtype` at most float32(τ). An input b of that
    dtype has b > float32(τ) exactly when b > that value, since no value of the dtype lies between
    the two. None for other dtypes and for a τ that is negative, NaN or beyond float32.

    Why: the hooks would otherwise upcast, compare and multiply, four passes over every projection
    input where one will do; at 8B that is a large part of a training step's time."""
    if dtype not in (torch.bfloat16, torch.float16) or not 0.0 <= tau <= FLOAT32_MAX:
        return None
    as_float32 = struct.unpack("<f", struct.pack("<f", tau))[0]  # what the float32 comparison reads
    if dtype == torch.bfloat16:  # bf16 is float32's top 16 bits: cutting the rest rounds down
        bits = struct.unpack("<I", struct.pack("<f", as_float32))[0] & 0xFFFF0000
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if as_float32 >= FLOAT16_MAX:
        return FLOAT16_MAX
    nearest = struct.unpack("<e", struct.pack("<e", as_float32))[0]
    if nearest > as_float32:  # rounded up: take the value below it (nearest > 0, so its bits are >= 1)
        bits = struct.unpack("<H", struct.pack("<e", nearest))[0] - 1
        nearest = struct.unpack("<e", struct.pack("<H", bits))[0]
    return nearest


def kept_count(in_features: int, level: float) -> int:
    """Inputs a Top-K mask keeps per token at sparsity `level`: the rest, rounded, are zeroed."""
    return in_features - round(level * in_features)


def topk_input(x: torch.Tensor, keep: int) -> torch.Tensor:
    """x with all but its `keep` largest-magnitude entries of each token zeroed. (..., in) -> (..., in)"""
    if keep >= x.shape[-1]:
        return x
    index = x.abs().topk(max(keep, 0), dim=-1, sorted=False).indices  # (..., keep)
    return torch.zeros_like(x).scatter(-1, index, x.gather(-1, index))  # gradients reach the kept entries


def zeroed_entries(sparse: torch.Tensor, tau: float) -> torch.Tensor:
    """How many entries a mask with threshold tau zeroed, from S(x) alone (finite inputs): with
    tau >= 0 a zero input is never kept, so the zeroed entries are the zeros of S(x); with tau < 0
    none is zeroed. -> 0-d long tensor"""
    if tau < 0:
        return sparse.new_zeros((), dtype=torch.long)
    return sparse.numel() - sparse.bool().sum()  # an order of magnitude faster than count_nonzero on CPU


def input_scores(x: torch.Tensor, col_norm: torch.Tensor | None) -> torch.Tensor:
    """Score of every input entry, in the comparison dtype: |x_i| (teal) or |x_i| · ‖W[:, i]‖₂
    (wina). (..., in) -> (..., in)"""
    magnitude = x.abs().to(comparison_dtype(x.dtype))
    return magnitude if col_norm is None else magnitude * col_norm.to(magnitude.device, magnitude.dtype)
