"""R-Sparse's low-rank completion: the inputs a threshold drops still reach the output, through a
rank-r part of the weight.

For y = W x, the teal mask at channel level c keeps S(x); R-Sparse adds the rest through the top
r singular directions of W:

    y = W S(x) + U_r Σ_r V_rᵀ (x − S(x)) = W (S(x) + V_r V_rᵀ (x − S(x)))

The hook feeds W the bracket (same product, exact in real arithmetic); a deployment runs the
sparse kernel on S(x) and two small products, A = V_rᵀ (r, in) then B = U_r Σ_r (out, r).

Bytes read, per projection of shape (out, in), against the plain mask at level s:
    plain mask      (1 − s) · in · out
    R-Sparse        (1 − c) · in · out + r · (in + out)
A share ρ of the plain mask's budget goes to the low-rank factors, the rest to kept channels:
    r = ⌊ρ (1 − s) in · out / (in + out)⌋,   c = 1 − (1 − ρ)(1 − s)
so R-Sparse never reads more than the plain mask at the same level (less by under one rank's
bytes). Thresholds of rule "rsparse" carry the target s, the channel level c of every projection
as its level, and ρ in rule_settings["low_rank_share"].
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..models.placement import onloaded

DEFAULT_LOW_RANK_SHARE = 0.1  # ρ: chosen on validation text (docs/comparisons.md), never on a test text


def check_share(share: float) -> float:
    share = float(share)
    if not 0.0 <= share < 1.0:
        raise InvalidArgumentError(f"the low-rank share of the bytes must be in [0, 1); got {share!r}")
    return share


def channel_level(target: float, share: float) -> float:
    """c: the share of input channels the threshold drops for a byte budget of level `target`."""
    return 1.0 - (1.0 - check_share(share)) * (1.0 - target)


def low_rank(in_features: int, out_features: int, target: float, share: float) -> int:
    """r: the rank the low-rank factors of one projection get at level `target`."""
    return int(check_share(share) * (1.0 - target) * in_features * out_features // (in_features + out_features))


def bytes_read(in_features: int, out_features: int, channel_sparsity: float, rank: int) -> float:
    """Weights read per token: kept columns plus both low-rank factors (in weight counts)."""
    return (1.0 - channel_sparsity) * in_features * out_features + rank * (in_features + out_features)


_right_vectors: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def right_singular_vectors(module: nn.Linear) -> torch.Tensor:
    """All right singular vectors of the module's weight as columns, by decreasing singular value:
    (in, min(in, out)) float32. Cached per module until its weight changes."""
    with onloaded(module):
        weight = module.weight.detach()
        key = (weight.data_ptr(), weight._version, weight.device)
        cached = _right_vectors.get(module)
        if cached is not None and cached[0] == key:
            return cached[1]
        _, _, vh = torch.linalg.svd(weight.double(), full_matrices=False)  # vh (min, in)
        vectors = vh.T.float().contiguous()
    _right_vectors[module] = (key, vectors)
    return vectors


def completion_basis(module: nn.Linear, target: float, share: float) -> torch.Tensor | None:
    """V_r (in, r) of one projection at level `target`, or None where the rank is 0."""
    rank = low_rank(module.in_features, module.out_features, target, share)
    return right_singular_vectors(module)[:, :rank] if rank > 0 else None


def completed(x: torch.Tensor, sparse: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """S(x) + V_r V_rᵀ (x − S(x)). x, sparse (..., in), basis (in, r) -> (..., in)"""
    v = basis.to(x.device, x.dtype)
    return sparse + ((x - sparse) @ v) @ v.T
