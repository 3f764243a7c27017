"""The representation-analysis record (data/results/analysis_<model>.json): dense, masked and
masked + SPON on the same tokens at every level that has trained vectors, compared layer by layer,
plus the evidence on which metrics separate the variants and on what SPON learns.

Written by `python -m sponlib analyze`; read by the docs renderer, the plots and the notebooks.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analysis.alignment import spon_alignment
from ..analysis.capture import Capture, capture, select_tokens
from ..analysis.compare import (
    METRICS,
    WITH_FIRST_POSITION,
    Variant,
    compare,
    distance,
    layer_cka_matrix,
    lens_kl_rows,
    pca_paths,
)
from ..analysis.metrics import linear_cka
from ..analysis.separation import separation
from ..errors import InvalidArgumentError
from ..progress import no_bars


def _tokens(ids: torch.Tensor, max_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `max_tokens` seeded positions >= 1 of every window, then the first position of each
    window (the attention sink, kept apart: its residual norm is several times the others').
    -> (N, 2) pairs, (N,) bool mask of the first-position rows."""
    rest = select_tokens(*ids.shape, max_tokens=max_tokens, skip_first=1, seed=seed)
    first = torch.stack([torch.arange(ids.shape[0]), torch.zeros(ids.shape[0], dtype=torch.long)], dim=1)
    tokens = torch.cat([rest, first])
    return tokens, tokens[:, 1] == 0


def _rounded(values, digits: int = 5):
    return [round(float(v), digits) for v in values]


def _lens_rows(tokens: torch.Tensor, lens_tokens: int) -> torch.Tensor:
    """The first lens_tokens / windows captured rows of every window: (n,) row indices."""
    windows = tokens[:, 0].unique()
    per_window = max(1, lens_tokens // len(windows))
    return torch.cat([torch.nonzero(tokens[:, 0] == w).flatten()[:per_window] for w in windows])


def _per_window(
    dense_all: Capture, other_all: Capture, first: torch.Tensor, lens: torch.Tensor, lens_rows: torch.Tensor
) -> dict[str, np.ndarray]:
    """Every metric per window and block: metric -> (W, L), on the rows after the first position
    (`first` marks those), and CKA on all of a window's rows as `cka_all_positions`; `lens` (L, n)
    is the logit-lens KL of the `lens_rows` of the later rows."""
    dense, other = dense_all.subset(~first), other_all.subset(~first)
    windows = dense.tokens[:, 0].unique()
    out: dict[str, list] = {}
    for w in windows:
        rows = dense.tokens[:, 0] == w
        for metric, values in compare(None, dense.subset(rows), other.subset(rows)).items():
            out.setdefault(metric, []).append(values)
        rows = dense_all.tokens[:, 0] == w
        out.setdefault("cka_all_positions", []).append(
            [linear_cka(d[rows], o[rows]) for d, o in zip(dense_all.resid(), other_all.resid())]
        )
    out["lens_kl"] = [lens[:, dense.tokens[lens_rows, 0] == w].mean(dim=1).tolist() for w in windows]
    return {metric: np.asarray(values) for metric, values in out.items()}


def _compare_variant(
    model,
    ids: torch.Tensor,
    variant: Variant,
    tokens: torch.Tensor,
    first: torch.Tensor,
    dense_all: Capture,
    lens_rows: torch.Tensor,
) -> tuple[Capture, float, dict, dict]:
    """One variant against dense on the same tokens: its states, measured sparsity, per-window
    metrics and per-layer metrics (rounded for the record)."""
    with variant.active(model) as sparsifier:
        states = capture(model, ids, tokens=tokens, inputs=False)
    dense, later = dense_all.subset(~first), states.subset(~first)
    # (L, n); the dense lens is recomputed per variant: caching L x n x V floats takes gigabytes
    lens = lens_kl_rows(model, dense, later, lens_rows)
    per_window = _per_window(dense_all, states, first, lens, lens_rows)
    all_positions = [linear_cka(d, o) for d, o in zip(dense_all.resid(), states.resid())]
    per_layer = {
        metric: _rounded(values)
        for metric, values in {
            **compare(None, dense, later),
            "lens_kl": lens.mean(dim=1),
            "cka_all_positions": all_positions,
        }.items()
    }
    return states, sparsifier.summary()["weighted"], per_window, per_layer


def _compare_variants(
    model,
    ids: torch.Tensor,
    variants: dict[tuple[str, float], Variant],
    tokens: torch.Tensor,
    first: torch.Tensor,
    dense_all: Capture,
    lens_rows: torch.Tensor,
    main_level: float,
    progress: bool,
) -> tuple[dict, dict, dict, dict]:
    """Every variant, keyed by (kind, level), against dense: per-window metrics, per-layer metrics and
    measured sparsity by variant name, and the states of the two variants at the main level by kind
    (masked, spon); the others' states are dropped as soon as they are compared."""
    per_window, per_layer, measured, kept = {}, {}, {}, {}
    for (kind, level), variant in tqdm(variants.items(), desc="variants", disable=no_bars(progress)):
        states, measured[variant.name], per_window[variant.name], per_layer[variant.name] = _compare_variant(
            model, ids, variant, tokens, first, dense_all, lens_rows
        )
        if level == main_level:
            kept[kind] = states
    return per_window, per_layer, measured, kept


def _main_level(per_window: dict, per_layer: dict, main_level: float) -> dict:
    """The record's view of the main level: per-window values, each metric's mean distance from
    dense, and the output KL, masked and SPON."""
    main = {kind: per_layer[f"{kind}@{main_level}"] for kind in ("masked", "spon")}
    return {
        "per_window_main": {
            run: {m: np.round(v, 9).tolist() for m, v in per_window[run].items()}
            for run in (f"masked@{main_level}", f"spon@{main_level}")
        },
        "summary": {
            metric: {kind: round(float(np.mean([distance(metric, v) for v in main[kind][metric]])), 5) for kind in main}
            for metric in (*METRICS, *WITH_FIRST_POSITION)
        },
        "output_kl": {kind: main[kind]["lens_kl"][-1] for kind in main},
    }


def _alignment(model, ids: torch.Tensor, spon: dict[float, tuple], main_level: float) -> dict:
    """Per level, the medians of SPON's alignment with the mean residual (and every projection's
    numbers at the main level), on `ids`."""
    alignment = {}
    for level, (vectors, spon_thresholds) in sorted(spon.items()):
        rows = spon_alignment(model, ids, spon_thresholds, vectors.alphas)["projections"]
        alignment[str(level)] = {
            "median_cosine_mask_states": float(np.median([r["cosine_mask"] for r in rows])),
            "median_cosine_spon_states": float(np.median([r["cosine_spon"] for r in rows])),
            "median_norm_ratio": float(np.median([r["norm_ratio"] for r in rows])),
            **(
                {"projections": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
                if level == main_level
                else {}
            ),
        }
    return alignment


def run_analysis(
    model,
    ids: torch.Tensor,
    calibration,
    spon: dict[float, tuple],
    rule: str = "teal",
    main_level: float = 0.5,
    max_tokens: int = 2048,
    lens_tokens: int = 512,
    heatmap_tokens: int = 1024,
    alignment_windows: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Compare dense with masked and masked + SPON at every level of `spon` (level -> (vectors,
    thresholds) from `load_spon`), on `ids` (B, L). Metrics use every captured position but the
    first of each window, per window and over all windows; the first positions serve the
    CKA-saturation evidence."""
    levels = sorted(spon)
    if main_level not in spon:
        raise InvalidArgumentError(f"no SPON vectors at the main level {main_level}; have {levels}")
    if ids.shape[0] < 3:
        raise InvalidArgumentError(f"the separation test needs at least 3 windows; got {ids.shape[0]}")
    started = time.perf_counter()
    tokens, first = _tokens(ids, max_tokens, seed)
    dense_all = capture(model, ids, tokens=tokens, inputs=False)
    dense = dense_all.subset(~first)
    lens_rows = _lens_rows(dense.tokens, lens_tokens)
    variants = {
        (kind, level): Variant(f"spon@{level}", spon[level][1], spon[level][0].alphas)
        if kind == "spon"
        else Variant(f"masked@{level}", calibration.thresholds(level, rule))
        for level in levels
        for kind in ("masked", "spon")
    }
    per_window, per_layer, measured, kept = _compare_variants(
        model, ids, variants, tokens, first, dense_all, lens_rows, main_level, progress
    )
    heatmaps = {
        kind: np.round(layer_cka_matrix(dense, kept[kind].subset(~first), heatmap_tokens), 5).tolist() for kind in kept
    }
    pca = pca_paths({"dense": dense, **{k: c.subset(~first) for k, c in kept.items()}})
    alignment = _alignment(model, ids[:alignment_windows], spon, main_level)
    order = separation(per_window, levels, main_level)
    ranked = sorted(order, key=lambda m: -order[m]["t_median"])
    return {
        "rule": rule,
        "levels": levels,
        "main_level": main_level,
        "tokens": {
            "per_variant": int((~first).sum()),
            "first_positions": int(first.sum()),
            "lens_tokens": len(lens_rows),
            "heatmap_tokens": heatmap_tokens,
            "seed": seed,
            "alignment_windows": alignment_windows,
        },
        "metrics": {**METRICS, **WITH_FIRST_POSITION},
        "measured_sparsity": {k: round(v, 4) for k, v in measured.items()},
        "per_layer": per_layer,
        **_main_level(per_window, per_layer, main_level),
        "separation": order,
        "metric_order": ranked,
        "cka_heatmap": heatmaps,
        "pca": {
            "explained": _rounded(pca["explained"]),
            "paths": {k: np.round(v, 4).tolist() for k, v in pca["paths"].items()},
        },
        "spon_alignment": alignment,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
