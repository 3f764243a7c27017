"""A bound on what each SPON vector adds to its projection's output: ‖W α‖ ≤ limit.

One way to keep SPON from adapting the model to its training text rather than repairing the mask:
limit the output shift W α of every projection, for example to a multiple of the mean output the
mask removes, ‖W E[x − S(x)]‖ (sponlib.analysis.mean_residuals measures it). After each optimiser
step a vector over its limit is scaled back onto it (a feasible point of the bound, cheap: one
matrix-vector product per projection).
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from ..models.adapters import iter_projections


class ShiftBound:
    """‖W α‖ ≤ limit for the projections named in `limits` (name -> limit, in output units)."""

    def __init__(self, model, alphas: dict[str, torch.Tensor], limits: dict[str, float]):
        projections = {p.name: p.module for p in iter_projections(model)}
        unknown = sorted(set(limits) - set(alphas))
        if unknown:
            raise InvalidArgumentError(f"shift limits name projections without a SPON vector, e.g. {unknown[0]}")
        bad = sorted(name for name, limit in limits.items() if not limit >= 0)
        if bad:
            raise InvalidArgumentError(f"shift limits must be >= 0 (got {limits[bad[0]]} for {bad[0]})")
        self.alphas = alphas
        self.limits = {name: (projections[name].weight, float(limit)) for name, limit in limits.items()}

    @torch.no_grad()
    def apply(self) -> int:
        """Scale every vector over its limit back onto it; how many were scaled."""
        scaled = 0
        for name, (weight, limit) in self.limits.items():
            alpha = self.alphas[name]  # (in,)
            shift = (weight @ alpha.to(weight.device, weight.dtype)).float().norm()  # ‖W α‖
            if shift > limit:
                alpha.mul_((limit / shift).to(alpha.device))
                scaled += 1
        return scaled
