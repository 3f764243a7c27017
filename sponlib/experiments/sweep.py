"""The sparsity sweep: perplexity dense and under each mask rule at each sparsity level, with
measured sparsity (data/results/sparsity_sweep.json), and the calibration check: how close
thresholds come to their target on held-out text, with and without the sparse-aware refinement
(data/results/calibration_cpu.json).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..models.placement import input_device
from ..perplexity import evaluate
from ..progress import no_bars
from ..sparsity.sparsifier import Sparsifier


def sweep(model, calibration, windows_list: list, levels, methods, batch_size: int = 4, progress: bool = True) -> dict:
    """Dense once, then every method at every level, on every text. Returns the payload of a result
    record (rows plus elapsed time)."""
    started = time.perf_counter()
    rows = evaluate(model, windows_list, None, batch_size, progress)
    settings = [(m, level) for m in methods for level in levels]
    for method, level in tqdm(settings, desc="sweep", unit="setting", disable=no_bars(progress), leave=False):
        rows += evaluate(model, windows_list, calibration.thresholds(level, method), batch_size, progress)
    return {
        "levels": list(levels),
        "methods": list(methods),
        "results": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


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
                row[label] = {
                    "measured": sparsifier.summary()["weighted"],
                    "projections_off": off,
                    "projections": len(measured),
                }
            rows.append(row)
    return rows
