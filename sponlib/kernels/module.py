"""`SparseLinear`: an nn.Linear under activation sparsity that runs the sparse GEMV op, and
swapping it into a Hugging Face model's projections and back.

    swap_in(model, thresholds, alphas)   every q/k/v/o/gate/up/down -> SparseLinear
    swap_in(..., fuse=True)              q/k/v and gate/up -> one FusedSparseLinear launch each
    set_thresholds(model, thresholds)    new τ (and SPON biases) in place: no recompilation
    swap_out(model)                      every SparseLinear -> the nn.Linear it came from

A SparseLinear keeps the weight input-major (Wᵀ, (in, out)) so that a dropped input skips one
contiguous row, its threshold as a tensor, the band of its calibrated sparsity (which picks the GPU
kernel's tiles: `tiles.TILE_BANDS`; a compiled model recompiles once when it changes band), and
SPON's vector folded into its bias
(b' = b + W α, in float64): the model computes W S(x) + b', which equals W (S(x) + α) + b up to
rounding, the function `sponlib.sparsity.Sparsifier` computes with hooks. The original bias is
kept, so swapping out restores the dense model exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..models.adapters import block_projections
from ..models.fingerprint import check_fingerprint
from ..sparsity.rules import THRESHOLD_METHODS, comparison_dtype, score_weights
from ..sparsity.thresholds import Thresholds
from . import listed_ops  # noqa: F401  (registers sponlib::listed_gemv)
from .ops import check_level, new_workspace, sparse_gemv
from .reference import input_major, sparse_gemv_reference
from .tiles import tile_band


def _check_tau(tau: float, what: str) -> float:
    value = float(tau)
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(f"threshold of {what} must be a finite number >= 0; got {tau!r}")
    return value


class SparseLinear(nn.Module):
    """y = W S(x) + b' for inputs x (..., in): S zeroes inputs whose score is <= τ."""

    def __init__(
        self,
        weight_t: torch.Tensor,
        tau: float,
        bias: torch.Tensor | None = None,
        col_norm: torch.Tensor | None = None,
        dense_bias: torch.Tensor | None = None,
        sparsity: float = 0.0,
    ):
        super().__init__()
        self.in_features, self.out_features = weight_t.shape
        self.tile_band = tile_band(check_level(sparsity, "a SparseLinear"))
        compare = comparison_dtype(weight_t.dtype)
        self.register_buffer("weight_t", weight_t.contiguous())  # (in, out)
        self.register_buffer(
            "tau", torch.tensor([_check_tau(tau, "a SparseLinear")], dtype=compare, device=weight_t.device)
        )  # (1,)
        self.register_buffer("bias", bias)  # (out,) with SPON folded in, or None
        self.register_buffer("col_norm", None if col_norm is None else col_norm.to(compare).reshape(1, -1))  # (1, in)
        self.register_buffer("dense_bias", dense_bias, persistent=False)  # (out,): the bias before folding
        # the GPU kernel's split-K scratch, zero between calls (one stream at a time per module)
        self.register_buffer("workspace", new_workspace(self.out_features, weight_t.device), persistent=False)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        tau: float,
        score: str = "teal",
        alpha: torch.Tensor | None = None,
        sparsity: float = 0.0,
    ) -> "SparseLinear":
        """From an nn.Linear, its threshold, the score rule ("teal" or "wina"), optionally its
        SPON vector α (in,), folded into the bias, and the sparsity the threshold was calibrated for."""
        weight = linear.weight.detach()  # (out, in)
        dense_bias = None if linear.bias is None else linear.bias.detach().clone()
        bias = None if dense_bias is None else dense_bias.clone()  # folding writes into it, never into dense_bias
        module = cls(input_major(weight), tau, bias, score_weights(linear, score), dense_bias, sparsity)
        if alpha is not None:
            module.set_alpha(alpha)
        return module

    def set_alpha(self, alpha: torch.Tensor | None) -> None:
        """Fold SPON vector α (in,) into the bias, in place: b' = b + W α (float64). None removes it."""
        if alpha is None:
            self.bias = None if self.dense_bias is None else self.dense_bias.clone()
            return
        _check_alpha(alpha, self.in_features)
        folded = _fold(self.weight_t, self.dense_bias, alpha)
        if self.bias is None:
            self.bias = folded
        else:
            self.bias.copy_(folded)  # in place: compiled graphs keep reading this buffer

    def set_tau(self, tau: float, sparsity: float | None = None) -> None:
        """A new threshold, in place, and the sparsity it was calibrated for, when given."""
        self.tau.fill_(_check_tau(tau, "a SparseLinear"))
        if sparsity is not None:
            self.tile_band = tile_band(check_level(sparsity, "a SparseLinear"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_gemv(
            x, self.weight_t, self.tau, self.bias, self.col_norm, workspace=self.workspace, sparsity=self.tile_band
        )

    def to_linear(self) -> nn.Linear:
        """The dense nn.Linear this module came from (exact: Wᵀ transposed back, original bias)."""
        return _dense_linear(self.weight_t, self.dense_bias)

    def extra_repr(self) -> str:
        rule = "teal" if self.col_norm is None else "wina"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rule={rule}, "
            f"bias={self.bias is not None}, tile_band={self.tile_band}"
        )


class FusedSparseLinear(nn.Module):
    """Projections that read one input (q/k/v, or gate/up) as one sparse GEMV launch on their
    concatenated input-major weights: each output segment keeps its own threshold, column norms
    and bias. The model still calls its projections one by one: `SegmentOf` modules stand in for
    them (the first runs the launch, the others take their part of its output)."""

    def __init__(
        self, linears: list[nn.Linear], taus: list[float], score: str = "teal", levels: list[float] | None = None
    ):
        super().__init__()
        if len({linear.in_features for linear in linears}) != 1 or not 2 <= len(linears) <= 3:
            raise InvalidArgumentError("a fused group is 2 or 3 projections of the same input width")
        weight = linears[0].weight
        compare = comparison_dtype(weight.dtype)
        self.in_features = linears[0].in_features
        self.segments = [linear.out_features for linear in linears]
        self.register_buffer(
            "weight_t", torch.cat([input_major(linear.weight) for linear in linears], dim=1)
        )  # (in, Σout)
        self.register_buffer(
            "tau",
            torch.tensor([_check_tau(t, "a fused projection") for t in taus], dtype=compare, device=weight.device),
        )  # (G,)
        norms = [score_weights(linear, score) for linear in linears]
        self.register_buffer("col_norm", None if norms[0] is None else torch.stack(norms).to(compare))  # (G, in)
        self.has_dense_bias = [linear.bias is not None for linear in linears]
        dense_bias = torch.cat(
            [
                linear.bias.detach()
                if linear.bias is not None
                else torch.zeros(linear.out_features, device=weight.device, dtype=weight.dtype)
                for linear in linears
            ]
        )  # (Σout,)
        self.register_buffer("dense_bias", dense_bias, persistent=False)
        self.register_buffer("bias", dense_bias.clone() if any(self.has_dense_bias) else None)  # (Σout,)
        self.register_buffer("workspace", new_workspace(sum(self.segments), weight.device), persistent=False)
        self.pending = None  # (input, outputs) of the last launch, until every segment took its part
        self.ready = None  # (input, its lists) from a listing norm (sponlib.kernels.listing), for the next launch
        self.levels = [0.0] * len(linears)  # calibrated sparsity per segment
        self.tile_band = tile_band(0.0)
        for index, level in enumerate(levels or ()):
            self.set_level(index, level)

    def columns(self, index: int) -> slice:
        start = sum(self.segments[:index])
        return slice(start, start + self.segments[index])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., in) -> one output per segment, (..., out_g) each."""
        ready, self.ready = self.ready, None
        if ready is not None and ready[0] is x:  # the norm that made x listed its kept entries
            rows, vals, counts, chunk = ready[1]
            y = torch.ops.sponlib.listed_gemv(
                x.reshape(-1), self.weight_t, rows, vals, counts, chunk, self.bias, self.segments, self.workspace
            )
            return torch.split(y.view(*x.shape[:-1], -1), self.segments, dim=-1)
        y = sparse_gemv(
            x, self.weight_t, self.tau, self.bias, self.col_norm, self.segments, self.workspace, self.tile_band
        )
        return torch.split(y, self.segments, dim=-1)

    def segment_alone(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """One segment's output when it is called without the group (the torch reference)."""
        cols = self.columns(index)
        return sparse_gemv_reference(
            x,
            self.weight_t[:, cols],
            None if self.bias is None else self.bias[cols],
            self.tau[index],
            None if self.col_norm is None else self.col_norm[index],
        )

    def set_tau(self, index: int, tau: float) -> None:
        self.tau[index] = _check_tau(tau, "a fused projection")

    def set_level(self, index: int, sparsity: float) -> None:
        """Segment `index`'s calibrated sparsity; the launch's tile band is that of the segments'
        mean level, weighted by their outputs (the weight bytes each reads)."""
        self.levels[index] = check_level(sparsity, "a fused projection")
        mean = sum(level * size for level, size in zip(self.levels, self.segments)) / sum(self.segments)
        self.tile_band = tile_band(mean)

    def set_alpha(self, index: int, alpha: torch.Tensor | None) -> None:
        """Fold SPON vector α (in,) into segment `index`'s bias (float64); None restores it."""
        if self.bias is None:
            self.bias = self.dense_bias.clone()
        cols = self.columns(index)
        if alpha is None:
            self.bias[cols] = self.dense_bias[cols]
            return
        _check_alpha(alpha, self.in_features)
        self.bias[cols] = _fold(self.weight_t[:, cols], self.dense_bias[cols], alpha)

    def to_linear(self, index: int) -> nn.Linear:
        cols = self.columns(index)
        return _dense_linear(self.weight_t[:, cols], self.dense_bias[cols] if self.has_dense_bias[index] else None)


class SegmentOf(nn.Module):
    """Stands in for projection `index` of a fused group. The first of the group runs the fused
    launch and keeps the other outputs; the others return theirs when called with the very same
    input tensor (as attention and MLP blocks call q, k, v and gate, up), else compute alone."""

    def __init__(self, fused: FusedSparseLinear, index: int):
        super().__init__()
        self.fused, self.index = fused, index
        self.in_features, self.out_features = fused.in_features, fused.segments[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if self.index == 0:
            outputs = fused(x)
            fused.pending = (x, outputs)
            return outputs[0]
        pending = fused.pending
        if pending is not None and pending[0] is x:
            if self.index == len(fused.segments) - 1:
                fused.pending = None  # every part taken: hold no tensors between calls
            return pending[1][self.index]
        return fused.segment_alone(x, self.index)

    def extra_repr(self) -> str:
        return f"segment {self.index} of {self.fused.segments}"


def _check_alpha(alpha: torch.Tensor, in_features: int, name: str = "this projection") -> None:
    if alpha.shape != (in_features,):
        raise InvalidArgumentError(f"SPON vector has shape {tuple(alpha.shape)}; {name} takes {in_features} inputs")
    if not torch.isfinite(alpha).all():
        raise InvalidArgumentError(f"SPON vector of {name} has NaN or infinite entries; train or load it again")


def _fold(weight_t: torch.Tensor, dense_bias: torch.Tensor | None, alpha: torch.Tensor) -> torch.Tensor:
    """b + W α in float64, in the weight's dtype. weight_t (in, out), dense_bias (out,), α (in,) -> (out,)"""
    shift = alpha.to(weight_t.device, torch.float64) @ weight_t.double()  # (out,)
    base = 0.0 if dense_bias is None else dense_bias.double()
    return (base + shift).to(weight_t.dtype)


def _dense_linear(weight_t: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """nn.Linear from an input-major weight (in, out) and bias: exact."""
    n_in, n_out = weight_t.shape
    linear = nn.Linear(n_in, n_out, bias=bias is not None, device=weight_t.device, dtype=weight_t.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight_t.t())
        if bias is not None:
            linear.bias.copy_(bias)
    return linear.requires_grad_(False)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _check_alphas(projections: dict, thresholds: Thresholds, alphas: dict | None) -> None:
    """Everything checked before the first module is replaced: a refused call leaves the model as it was."""
    missing = set(projections) - set(thresholds.taus)
    if missing:
        raise InvalidArgumentError(f"thresholds lack {len(missing)} projections, e.g. {sorted(missing)[0]}")
    for name in projections:
        _check_tau(thresholds.taus[name], name)
    unknown = set(alphas or {}) - set(projections)
    if unknown:
        raise InvalidArgumentError(f"SPON vectors for projections this model lacks, e.g. {sorted(unknown)[0]}")
    for name, alpha in (alphas or {}).items():
        _check_alpha(alpha, projections[name].in_features, name)


FUSED_GROUPS = (("q", "k", "v"), ("gate", "up"))  # projections of one input, in the order blocks call them


@torch.no_grad()
def swap_in(
    model: nn.Module,
    thresholds: Thresholds,
    alphas: dict[str, torch.Tensor] | None = None,
    check: bool = True,
    fuse: bool = False,
) -> nn.Module:
    """In place: replace every projection of `model` by a SparseLinear with its threshold (and its
    SPON vector folded into the bias, when `alphas` has one). With `fuse`, q/k/v and gate/up of
    each block become one FusedSparseLinear launch each (SegmentOf modules in their places).
    Returns `model`."""
    _check_rule(thresholds)
    if check:
        check_fingerprint(thresholds.fingerprint, model, "these thresholds")
    blocks = block_projections(model)
    projections = {p.name: p for block in blocks for p in block.values()}
    _check_alphas(projections, thresholds, alphas)
    alphas = alphas or {}
    for block in blocks:
        grouped = set()
        for roles in FUSED_GROUPS if fuse else ():
            members = [block[role] for role in roles]
            fused = FusedSparseLinear(
                [p.module for p in members],
                [thresholds.taus[p.name] for p in members],
                thresholds.score,
                [thresholds.levels.get(p.name, 0.0) for p in members],
            )
            for index, p in enumerate(members):
                if p.name in alphas:
                    fused.set_alpha(index, alphas[p.name])
                _replace(model, p.name, SegmentOf(fused, index))
                grouped.add(p.role)
        for role, p in block.items():
            if role not in grouped:
                _replace(
                    model,
                    p.name,
                    SparseLinear.from_linear(
                        p.module,
                        thresholds.taus[p.name],
                        thresholds.score,
                        alphas.get(p.name),
                        thresholds.levels.get(p.name, 0.0),
                    ),
                )
    return model


def sparse_linears(model: nn.Module) -> dict[str, SparseLinear | SegmentOf]:
    """Projection name -> the module that runs it sparsely (SparseLinear or SegmentOf)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (SparseLinear, SegmentOf))}


@torch.no_grad()
def set_thresholds(model: nn.Module, thresholds: Thresholds, alphas: dict[str, torch.Tensor] | None = None) -> None:
    """In place, on a swapped-in model: new thresholds, and SPON biases refolded from `alphas`
    (projections without a vector get their original bias). The tensors keep their storage, so
    a compiled or CUDA-graphed model uses the new values on its next call; a projection swapped
    in without bias gains one here, which a compiled model sees only after recompiling (swap in
    with zero vectors to reserve it)."""
    modules = sparse_linears(model)
    if not modules:
        raise InvalidArgumentError("the model has no SparseLinear modules: call swap_in(model, thresholds) first")
    _check_rule(thresholds)
    _check_alphas(modules, thresholds, alphas)
    first = next(iter(modules.values()))
    rule = "teal" if (first.fused if isinstance(first, SegmentOf) else first).col_norm is None else "wina"
    if thresholds.score != rule:
        raise InvalidArgumentError(
            f"the model was swapped in with the {rule} rule; these thresholds are for "
            f"{thresholds.score}: swap_out and swap_in again"
        )
    for name, module in modules.items():
        alpha = (alphas or {}).get(name)
        if isinstance(module, SegmentOf):
            module.fused.set_tau(module.index, thresholds.taus[name])
            module.fused.set_level(module.index, thresholds.levels.get(name, 0.0))
            if alpha is not None or module.fused.bias is not None:
                module.fused.set_alpha(module.index, alpha)  # writes into the bias buffer in place
            continue
        module.set_tau(thresholds.taus[name], thresholds.levels.get(name, 0.0))
        if alpha is None and module.bias is None:
            continue
        # refold even without a vector (α = 0), so that the bias buffer keeps its storage
        module.set_alpha(alpha if alpha is not None else torch.zeros(module.in_features))


def swap_out(model: nn.Module) -> nn.Module:
    """In place: every SparseLinear back to its dense nn.Linear. Returns `model`."""
    for name, module in sparse_linears(model).items():
        _replace(
            model, name, module.fused.to_linear(module.index) if isinstance(module, SegmentOf) else module.to_linear()
        )
    return model


def _check_rule(thresholds: Thresholds) -> None:
    """The kernels skip columns by a threshold: larosa's Top-K and rsparse's low-rank part are not theirs."""
    if thresholds.method not in THRESHOLD_METHODS:
        raise InvalidArgumentError(
            f"the sparse kernels run the threshold rules ({', '.join(THRESHOLD_METHODS)}), not {thresholds.method}: "
            "run it through sponlib's hooks (sponlib.sparsity.Sparsifier, or mask.applied(model))"
        )
