"""The torch reference of the sparse GEMV: the function every sparse kernel must compute.

    y = S(x) Wᵀ + b,   S(x)_i = x_i if score(x_i) > τ else 0,

with score |x_i| (teal) or |x_i| · ‖W[:, i]‖ (wina), the rule `sponlib.sparsity` applies in its
hooks. Two implementations, equal up to float rounding:

- `sparse_gemv_reference`: a dense product on the masked input. Simple and exact; it reads every
  weight byte, so it is no faster than dense. This is the ground truth in tests.
- `sparse_gemv_rows`: reads only the weight rows of kept inputs from the input-major weight
  (Wᵀ, (in, out)), as a weighted sum of rows (`embedding_bag`, no copy). In a batch each token
  reads its own rows; together the tokens touch the union of their masks, with independent
  masks at sparsity s a share 1 − s^B of the rows, so prefill reads nearly everything.

Both take `weight_t` input-major; `input_major(linear.weight)` makes it once per projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from ..sparsity.rules import input_scores


def input_major(weight: torch.Tensor) -> torch.Tensor:
    """(out, in) weight of an nn.Linear -> contiguous (in, out), so that input i is row i."""
    if weight.dim() != 2:
        raise InvalidArgumentError(f"a linear weight is (out, in); got shape {tuple(weight.shape)}")
    return weight.detach().t().contiguous()


def keep_mask(x: torch.Tensor, tau: float | torch.Tensor, col_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Which inputs a projection reads: score > τ, in the comparison dtype. A NaN input is kept
    (it is not <= τ), so it reaches the output as it would in the dense model. (..., in) -> bool"""
    return ~(input_scores(x, col_norm) <= tau)


def _check(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, tau: float) -> None:
    if x.shape[-1] != weight_t.shape[0]:
        raise InvalidArgumentError(
            f"input has {x.shape[-1]} features but the input-major weight has "
            f"{weight_t.shape[0]} rows; pass weight_t = input_major(linear.weight)"
        )
    if bias is not None and bias.shape != (weight_t.shape[1],):
        raise InvalidArgumentError(
            f"bias has shape {tuple(bias.shape)}; the projection has {weight_t.shape[1]} outputs"
        )
    if not tau >= 0:  # also refuses NaN
        raise InvalidArgumentError(f"threshold τ must be a number >= 0; got {tau}")


def sparse_gemv_reference(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, tau: float, col_norm: torch.Tensor | None = None
) -> torch.Tensor:
    """y = S(x) Wᵀ + b as a dense product on the masked input. x (..., in), weight_t (in, out),
    bias (out,) or None, col_norm (in,) for wina -> (..., out)."""
    _check(x, weight_t, bias, tau)
    keep = keep_mask(x, tau, col_norm)  # (..., in)
    y = (x * keep) @ weight_t  # (..., out)
    return y if bias is None else y + bias


def sparse_gemv_rows(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None, tau: float, col_norm: torch.Tensor | None = None
) -> torch.Tensor:
    """The same function, reading for each token only the rows of Wᵀ it keeps: a weighted sum of
    rows, Σ_i x_i Wᵀ[i] over kept i, done by `embedding_bag` without copying the rows.
    x (..., in) -> (..., out)."""
    _check(x, weight_t, bias, tau)
    tokens = x.reshape(-1, x.shape[-1])  # (T, in)
    keep = keep_mask(tokens, tau, col_norm)  # (T, in)
    token, row = keep.nonzero(as_tuple=True)  # (n,), (n,): kept entries, token by token
    counts = keep.sum(dim=1)  # (T,) rows each token reads
    offsets = torch.cumsum(counts, 0) - counts  # (T,) where each token's rows start
    y = F.embedding_bag(row, weight_t, offsets, mode="sum", per_sample_weights=tokens[token, row])  # (T, out)
    y = y.reshape(*x.shape[:-1], weight_t.shape[1])
    return y if bias is None else y + bias
