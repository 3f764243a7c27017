"""Perplexity dense and under each mask rule at each sparsity level, with measured sparsity.

`evaluate` runs one setting (dense, or one Thresholds) over several texts; `sweep` runs the grid
of mask rules x levels that data/results/sparsity_sweep.json records; `calibration_check`
measures how close thresholds come to their target on held-out text, with and without the
sparse-aware refinement.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .distributed import Replicas
from .perplexity import perplexity
from .placement import input_device
from .sparsity import Sparsifier, Thresholds


def evaluate(model, windows_list: list, thresholds: Thresholds | None = None, batch_size: int = 4,
             progress: bool = True, spon=None, replicas: Replicas | None = None) -> list[dict]:
    """One row per Windows in `windows_list`: perplexity, and with `thresholds` the target and the
    measured sparsity (weighted by weights, plain mean, extremes over projections). `spon`
    (SponVectors) adds the spontaneous neurons on top of the mask; rows then say "spon": true.
    With `replicas`, data-parallel processes share every text's windows; each gets the same rows."""
    replicas = replicas or Replicas()
    rows = []
    alphas = None if spon is None else spon.alphas  # the Sparsifier puts each where its projection computes
    # one fingerprint check for all texts
    sparsifier = Sparsifier(model, thresholds, alphas=alphas) if thresholds else None
    for windows in windows_list:
        row = {"corpus": windows.source, "method": thresholds.method if thresholds else "dense",
               "target": thresholds.target if thresholds else 0.0}
        if spon is not None:
            row["spon"] = True
        if sparsifier is None:
            result = perplexity(model, windows, batch_size=batch_size, progress=progress, desc=windows.source,
                                replicas=replicas)
        else:
            sparsifier.reset_stats()  # measured sparsity per text
            with sparsifier:
                result = perplexity(model, windows, batch_size=batch_size, progress=progress,
                                    desc=f"{windows.source} {thresholds.method}@{thresholds.target:g}",
                                    replicas=replicas)
            if replicas.active:
                sparsifier.set_counts(replicas.sum(sparsifier.counts()))  # every process's share
            per_projection = sparsifier.measured()
            summary = sparsifier.summary()
            row.update(measured=summary["weighted"], measured_mean=summary["mean"],
                       measured_min=min(per_projection.values()), measured_max=max(per_projection.values()))
        rows.append({**row, **result.as_dict(), "available_windows": windows.available})
    return rows


def sweep(model, calibration, windows_list: list, levels, methods, batch_size: int = 4,
          progress: bool = True) -> dict:
    """Dense once, then every method at every level, on every text. Returns the payload of a result
    record (rows plus elapsed time)."""
    started = time.perf_counter()
    rows = evaluate(model, windows_list, None, batch_size, progress)
    settings = [(m, level) for m in methods for level in levels]
    for method, level in tqdm(settings, desc="sweep", unit="setting", disable=not progress, leave=False):
        rows += evaluate(model, windows_list, calibration.thresholds(level, method), batch_size, progress)
    return {"levels": list(levels), "methods": list(methods), "results": rows,
            "elapsed_s": round(time.perf_counter() - started, 1)}


@torch.inference_mode()
def calibration_check(model, calibration, windows, levels, methods=None, tolerance: float = 0.02) -> list[dict]:
    """Measured sparsity on `windows` at each level, thresholds read off dense statistics alone
    versus sparse-aware ones: overall (weighted) and how many projections miss by > `tolerance`.
    `methods` defaults to every mask rule the calibration supports."""
    methods = methods or list(calibration.refined)
    ids = windows.ids.to(input_device(model))  # (N, L)
    rows = []
    for method in methods:
        for level in levels:
            row = {"method": method, "target": level}
            for label, aware in (("dense_only", False), ("sparse_aware", True)):
                thresholds = calibration.thresholds(level, method, sparse_aware=aware)
                with Sparsifier(model, thresholds) as sparsifier:
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                measured = sparsifier.measured()  # each projection against its own level (greedy: not uniform)
                off = sum(abs(v - thresholds.levels[name]) > tolerance for name, v in measured.items())
                row[label] = {"measured": sparsifier.summary()["weighted"], "projections_off": off,
                              "projections": len(measured)}
            rows.append(row)
    return rows
