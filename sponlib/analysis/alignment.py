"""Does SPON learn the best constant correction? Per projection, the output SPON adds, W α, against
the mean output the mask removes, W E[x − S(x)]: their cosine and their norm ratio.
"""

from __future__ import annotations

import torch

from ..models.adapters import iter_projections
from ..models.hooks import HookSet
from ..models.placement import input_device
from ..sparsity.rules import input_scores
from ..sparsity.sparsifier import Sparsifier
from ..sparsity.thresholds import Thresholds


@torch.inference_mode()
def mean_residuals(
    model, ids: torch.Tensor, sparsifier: Sparsifier, skip_first: int = 1, batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """E[x − S(x)] of every projection's input under `sparsifier` (its masks, and its vectors if it
    has any, shape the states): what the mask removes on average. name -> (in,) float64.
    The first `skip_first` positions of each window are left out (their huge activations would
    dominate the mean)."""
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def accumulate(name, hook):
        def pre(module, args):
            x = args[0][:, skip_first:]  # (b, L', in): the input before the mask
            removed = x * ~(input_scores(x, hook.col_norm) > hook.tau)  # what S(x) drops
            sums[name] = sums.get(name, 0) + removed.double().sum(dim=(0, 1))

        return pre

    device = input_device(model)
    with sparsifier, HookSet() as hooks:
        for name, hook in sparsifier.hooks.items():
            hooks.pre(sparsifier.projections[name].module, accumulate(name, hook), prepend=True)
        for start in range(0, ids.shape[0], batch_size):
            batch = ids[start : start + batch_size]
            model(input_ids=batch.to(device), use_cache=False, logits_to_keep=1)
            count += batch.shape[0] * (batch.shape[1] - skip_first)
    return {name: (total / count).cpu() for name, total in sums.items()}


def spon_alignment(model, ids: torch.Tensor, thresholds: Thresholds, alphas: dict[str, torch.Tensor]) -> dict:
    """Per projection, the cosine between the output SPON adds, W α, and the mean output the mask
    removes, W E[x − S(x)], with the residual measured on the masked model's states ("mask") and
    on the SPON model's own states ("spon"); and the norm ratio ‖W α‖ / ‖W E[x − S(x)]‖ (spon)."""
    residuals = {
        "mask": mean_residuals(model, ids, Sparsifier(model, thresholds)),
        "spon": mean_residuals(model, ids, Sparsifier(model, thresholds, alphas=alphas)),
    }
    rows = []
    for p in iter_projections(model):
        if p.name not in alphas:
            continue
        weight = p.module.weight.detach().double().cpu()  # (out, in)
        added = weight @ alphas[p.name].detach().double().cpu()  # (out,)
        row = {"name": p.name, "block": p.block, "role": p.role}
        for states, residual in residuals.items():
            removed = weight @ residual[p.name]  # (out,)
            row[f"cosine_{states}"] = float(torch.nn.functional.cosine_similarity(added, removed, dim=0))
        row["norm_ratio"] = float(added.norm() / (weight @ residuals["spon"][p.name]).norm().clamp_min(1e-30))
        rows.append(row)
    return {"projections": rows}
