"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot"), for one linear layer, and the input statistics it needs.

With H = Σ x xᵀ over calibration tokens (in, in), pruning weight i of a row and updating the
columns not yet processed by δ = −(w_i / [H_F⁻¹]_ii) · H_F⁻¹[:, i] is the optimal (OBS)
compensation of the layer's output on those tokens. Processing columns left to right, every H_F⁻¹
needed is read off one factorisation: row i of U, the upper Cholesky factor of H⁻¹, is
H_F⁻¹[i, :] / sqrt([H_F⁻¹]_ii) for F the columns from i on. Columns are processed in blocks; an
update inside a block is applied at once, the block's errors reach later columns in one matmul.

The mask is chosen as the sweep goes, by the saliency w² / [U]_ii²: unstructured, at the start of
each block, per row (floor(s · end) − floor(s · start) of the block's columns, so that each row
loses exactly floor(s · in) over all blocks); N:M, at every M-th column, among the next M.

H is kept unscaled (the paper's 2/num_tokens factor changes nothing: the dampening is relative
to mean(diag H) and the update and saliency only depend on ratios of H⁻¹'s entries).
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError, NumericalError
from .patterns import Pattern, check_fits, drop_lowest, pruned_count


class HessianAccumulator:
    """Running Σ x xᵀ (in, in) of one layer input over calibration tokens, in float64 on the input's
    device; with `diagonal_only`, just its diagonal Σ x_j² (in,), which is all Wanda needs."""

    def __init__(self, diagonal_only: bool = False):
        self.diagonal_only = diagonal_only
        self.sum: torch.Tensor | None = None  # (in, in), or (in,) with diagonal_only
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the tokens of one batch of inputs. x (..., in)"""
        x = x.detach().reshape(-1, x.shape[-1])  # (tokens, in)
        x = x.to(torch.promote_types(x.dtype, torch.float32))  # one batch in float32, the sum in float64
        part = (x.square().sum(0) if self.diagonal_only else x.T @ x).double()
        if not torch.isfinite(part).all():
            raise NumericalError("NaN or infinite layer inputs while pruning: the model's weights or dtype are broken")
        self.sum = part if self.sum is None else self.sum.add_(part)
        self.tokens += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        """H = Σ x xᵀ. (in, in) float64"""
        if self.diagonal_only or self.sum is None:
            raise InvalidArgumentError("this accumulator holds no full X Xᵀ (diagonal only, or no tokens added)")
        return self.sum

    def norms(self) -> torch.Tensor:
        """‖X_j‖₂ of every input channel j: sqrt(H_jj). (in,) float64"""
        if self.sum is None:
            raise InvalidArgumentError("no tokens were added to this accumulator")
        diagonal = self.sum if self.diagonal_only else self.sum.diagonal()
        return diagonal.clamp_min(0).sqrt()


def inverse_hessian_factor(hessian: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor U of H⁻¹ (UᵀU = H⁻¹), in float64. (in, in) -> (in, in)"""
    h = hessian.double()
    lower, info = torch.linalg.cholesky_ex(h)
    if not info.item():
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if not info.item():
            return upper
    raise NumericalError(
        "the layer's input Hessian is not positive definite even after dampening; raise percdamp (e.g. 0.1) "
        "or calibrate on more tokens"
    )


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, blocksize: int = 128, percdamp: float = 0.01
) -> torch.Tensor:
    """The pruned weight of one linear layer (a new tensor in the weight's dtype and device).
    weight (out, in), hessian Σ x xᵀ (in, in)"""
    out_features, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise InvalidArgumentError(f"hessian must be ({columns}, {columns}) for a weight {tuple(weight.shape)}")
    if not (isinstance(blocksize, int) and blocksize > 0):
        raise InvalidArgumentError(f"blocksize must be a positive integer; got {blocksize!r}")
    if not percdamp >= 0:
        raise InvalidArgumentError(f"percdamp must be >= 0 (share of mean(diag H) added to it); got {percdamp!r}")
    check_fits(pattern, columns)
    if isinstance(pattern, tuple) and blocksize % pattern[1]:
        raise InvalidArgumentError(f"blocksize {blocksize} must be a multiple of M={pattern[1]} for N:M pruning")

    work = torch.promote_types(weight.dtype, torch.float32)
    w = weight.detach().to(work, copy=True)  # (out, in)
    h = hessian.to(weight.device, torch.float64, copy=True)  # (in, in)
    dead = h.diagonal() == 0  # inputs never nonzero: their weights do nothing, H would be singular
    h.diagonal()[dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(percdamp * h.diagonal().mean())
    u = inverse_hessian_factor(h).to(work)  # (in, in) upper triangular
    u_diagonal = u.diagonal()  # (in,)
    keep = torch.ones_like(w, dtype=torch.bool)  # (out, in)

    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block = w[:, start:end]  # (out, B) view: updated in place
        errors = torch.zeros_like(block)  # (out, B)
        if not isinstance(pattern, tuple):
            count = pruned_count(pattern, end) - pruned_count(pattern, start)
            keep[:, start:end] = drop_lowest(block.square() / u_diagonal[start:end].square(), count)
        for i in range(end - start):
            column = start + i
            if isinstance(pattern, tuple) and column % pattern[1] == 0:
                group = slice(column, column + pattern[1])
                saliency = w[:, group].square() / u_diagonal[group].square()  # (out, M)
                keep[:, group] = drop_lowest(saliency, pattern[0])
            q = block[:, i] * keep[:, column]  # (out,)
            error = (block[:, i] - q) / u[column, column]  # (out,)
            block[:, i] = q
            block[:, i + 1 :] -= error[:, None] * u[column, column + 1 : end][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ u[start:end, end:]  # the block's lazy update of every later column

    return (w * keep).to(weight.dtype)
