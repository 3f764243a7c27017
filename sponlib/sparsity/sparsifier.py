"""The `Sparsifier`: input sparsity on every projection of a Hugging Face model, through forward
pre-hooks on its real nn.Linear modules (no forward is copied or patched).

It is a context manager and removes every handle on exit, also when the body raises. Given SPON
vectors (`alphas`), the same hooks feed W (S(x) + α): the mask first, then the vector.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..models.adapters import iter_projections
from ..models.fingerprint import check_fingerprint
from ..models.placement import execution_device
from .lowrank import completed, completion_basis
from .rotation import check_rotations, rotated_topk
from .rules import comparison_dtype, kept_count, masked_input, score_weights, with_vector, zeroed_entries
from .thresholds import Thresholds


class MaskHook:
    """Forward pre-hook of one projection: zero the inputs whose score is <= tau (and count them),
    then add the projection's spontaneous-neuron vector alpha if it has one: S(x) + alpha.

    Two rules change S: with `keep`, Top-K per token instead of a threshold, in the basis of
    `rotation` when given (larosa); with `completion` (in, r), the dropped part x − S(x) still
    reaches W through its rank-r part (rsparse). The counts are of the channels a kernel skips."""

    def __init__(
        self,
        tau: float,
        col_norm: torch.Tensor | None,
        alpha: torch.Tensor | None = None,
        count: bool = True,
        keep: int | None = None,
        rotation: torch.Tensor | None = None,
        completion: torch.Tensor | None = None,
    ):
        self.tau = tau
        self.col_norm = col_norm  # (in,) for wina, None for teal
        self.alpha = alpha  # (in,) or None; may require grad (SPON training)
        self.count = count  # training skips the bookkeeping
        self.keep, self.rotation, self.completion = keep, rotation, completion
        self.zeroed = 0  # tensor after the first call: no device sync per forward
        self.seen = 0

    def __call__(self, module: nn.Module, args: tuple):
        x = args[0]  # (..., in)
        if self.keep is not None:
            sparse = rotated_topk(x, self.keep, self.rotation)  # (..., in)
            zeroed = x.numel() - self.keep * (x.numel() // x.shape[-1])
        else:
            sparse = masked_input(x, self.tau, self.col_norm)  # (..., in)
            zeroed = zeroed_entries(sparse, self.tau) if self.count else 0
            if self.completion is not None:
                sparse = completed(x, sparse, self.completion)
        if self.count:
            self.zeroed = self.zeroed + zeroed
            self.seen += x.numel()
        return (with_vector(sparse, self.alpha),) + tuple(args[1:])


def rule_hook(thresholds: Thresholds, proj, alpha: torch.Tensor | None, count: bool) -> MaskHook:
    """The hook of one projection under `thresholds`, whatever their rule."""
    name, module = proj.name, proj.module
    if thresholds.method == "larosa":
        rotation = thresholds.rotations.matrices.get(name) if thresholds.rotations is not None else None
        if rotation is not None:  # once, where the projection computes: not a copy per forward
            rotation = rotation.to(execution_device(module), comparison_dtype(module.weight.dtype))
        keep = kept_count(proj.in_features, thresholds.levels[name])
        return MaskHook(thresholds.taus[name], None, alpha, count, keep=keep, rotation=rotation)
    completion = None
    if thresholds.method == "rsparse":
        completion = completion_basis(module, thresholds.target, thresholds.rule_settings["low_rank_share"])
    return MaskHook(thresholds.taus[name], score_weights(module, thresholds.score), alpha, count, completion=completion)


class Sparsifier:
    """Sparsify the inputs of every projection of `model` with `thresholds`, while active.

        with Sparsifier(model, thresholds) as sp:
            logits = model(ids).logits
        sp.measured()  # projection name -> share of its inputs zeroed

    `alphas` (projection name -> (in,) vector, e.g. `SponVectors.alphas`) adds spontaneous neurons
    after the mask: the projection computes W (S(x) + alpha). Each vector is moved to where its
    projection computes (a no-op when it is there already, so trained vectors stay the leaves).
    `count=False` skips the measured-sparsity bookkeeping (one reduction per projection per
    forward), as training does.
    """

    def __init__(
        self,
        model: nn.Module,
        thresholds: Thresholds,
        check: bool = True,
        alphas: dict[str, torch.Tensor] | None = None,
        count: bool = True,
    ):
        if check:
            check_fingerprint(thresholds.fingerprint, model, "these thresholds")
        self.model, self.thresholds = model, thresholds
        self.projections = {p.name: p for p in iter_projections(model)}
        missing = set(self.projections) - set(thresholds.taus)
        if missing:
            raise InvalidArgumentError(f"thresholds lack {len(missing)} projections, e.g. {sorted(missing)[0]}")
        if thresholds.method == "larosa" and thresholds.rule_settings.get("rotation") != "folded":
            check_rotations(thresholds.rotations, self.projections)
        alphas = alphas or {}
        unknown = set(alphas) - set(self.projections)
        if unknown:
            raise InvalidArgumentError(
                f"spontaneous-neuron vectors for projections this model lacks, e.g. {sorted(unknown)[0]}"
            )
        self.hooks: dict[str, MaskHook] = {}
        for name, proj in self.projections.items():
            alpha = alphas.get(name)
            if alpha is not None and alpha.shape != (proj.in_features,):
                raise InvalidArgumentError(
                    f"vector for {name} has shape {tuple(alpha.shape)}, the projection takes {proj.in_features} inputs"
                )
            if alpha is not None:
                alpha = alpha.to(execution_device(proj.module))
            self.hooks[name] = rule_hook(thresholds, proj, alpha, count)
        self._handles: list = []

    @property
    def completions(self) -> dict[str, torch.Tensor]:
        """rsparse's low-rank bases by projection (what a refit of its thresholds needs)."""
        return {n: h.completion for n, h in self.hooks.items() if h.completion is not None}

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "Sparsifier":
        if not self.active:
            self._handles = [self.projections[n].module.register_forward_pre_hook(h) for n, h in self.hooks.items()]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "Sparsifier":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset_stats(self) -> None:
        for hook in self.hooks.values():
            hook.zeroed, hook.seen = 0, 0

    def counts(self) -> torch.Tensor:
        """Inputs zeroed and seen by each projection since the last reset, in hook order: (P, 2)
        float64 (what data-parallel processes sum before `measured`)."""
        return torch.tensor([[float(h.zeroed), float(h.seen)] for h in self.hooks.values()], dtype=torch.float64)

    def set_counts(self, counts: torch.Tensor) -> None:
        """Replace the counts with (P, 2) ones in hook order, e.g. their sum over processes."""
        for hook, (zeroed, seen) in zip(self.hooks.values(), counts.tolist()):
            hook.zeroed, hook.seen = zeroed, int(seen)

    def measured(self) -> dict[str, float]:
        """Share of each projection's inputs zeroed since the last reset."""
        return {n: float(h.zeroed) / h.seen for n, h in self.hooks.items() if h.seen}

    def summary(self) -> dict[str, float]:
        """Measured sparsity over all projections: `weighted` by weight count (the share of weight
        columns a kernel could skip, what the target means) and the plain `mean`."""
        measured = self.measured()
        if not measured:
            raise InvalidArgumentError("no forward pass has run through the sparsifier yet")
        sizes = {n: self.projections[n].module.weight.numel() for n in measured}
        weighted = sum(measured[n] * sizes[n] for n in measured) / sum(sizes.values())
        return {"weighted": weighted, "mean": sum(measured.values()) / len(measured)}
