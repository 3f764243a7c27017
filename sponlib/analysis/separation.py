"""Which metrics tell the masked model and SPON apart, beyond window-to-window noise: paired t
statistics across windows per layer and level, saturation near the dense value, monotonicity in
the level, and agreement with the output KL.
"""

from __future__ import annotations

import numpy as np

from .compare import METRICS, WITH_FIRST_POSITION, distance


def _spearman(a, b) -> float:
    """Rank correlation of two sequences (no ties expected: continuous values)."""
    ranks_a, ranks_b = (np.argsort(np.argsort(np.asarray(v))) for v in (a, b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def separation(per_window: dict[str, dict[str, np.ndarray]], levels: list[float], main_level: float) -> dict:
    """How well each metric tells masked and SPON apart, from per-window results: run name
    ("masked@<level>", "spon@<level>") -> metric -> (windows, L) values. Per metric:
      distance_masked, distance_spon  mean distance from dense at `main_level` (over windows, layers)
      t_median       median over layers of the paired t statistic of masked minus SPON distance
                     across windows at `main_level` (> 0: SPON closer to dense)
      separated      share of (layer, level) pairs where SPON is closer to dense with t above the
                     two-sided 5 % critical value (window-to-window noise ruled out)
      near_ideal     share of layers where the mask at `main_level` stays within 0.02 of the
                     dense value (what saturation looks like)
      monotone       share of layers whose masked distance rises at every level step
      rank_with_output_kl  Spearman correlation over all runs of the mean distance with the
                     output KL (how the metric orders runs across levels)"""
    from scipy.stats import t as student_t

    summary = {}
    for metric in (*METRICS, *WITH_FIRST_POSITION):
        runs = {
            run: distance(metric, np.asarray(values[metric], dtype=float))
            for run, values in per_window.items()
            if metric in values
        }  # run -> (W, L) distances
        pairs = [level for level in levels if f"masked@{level}" in runs and f"spon@{level}" in runs]
        if main_level not in pairs:
            continue
        t_by_level = {}
        for level in pairs:
            gap = runs[f"masked@{level}"] - runs[f"spon@{level}"]  # (W, L), > 0: SPON closer
            spread = gap.std(axis=0, ddof=1) / np.sqrt(gap.shape[0])  # (L,)
            t_by_level[level] = gap.mean(axis=0) / np.maximum(spread, 1e-300)
        windows = runs[f"masked@{main_level}"].shape[0]
        critical = float(student_t.ppf(0.975, windows - 1))
        masked_curves = np.stack([runs[f"masked@{level}"].mean(axis=0) for level in pairs])  # (levels, L)
        entry = {
            "distance_masked": float(runs[f"masked@{main_level}"].mean()),
            "distance_spon": float(runs[f"spon@{main_level}"].mean()),
            "t_median": float(np.median(t_by_level[main_level])),
            "separated": float(np.mean(np.concatenate([t > critical for t in t_by_level.values()]))),
            "near_ideal": float(np.mean(runs[f"masked@{main_level}"].mean(axis=0) < 0.02)),
            "monotone": float(np.mean(np.all(np.diff(masked_curves, axis=0) > 0, axis=0))),
            "critical_t": critical,
        }
        if all("lens_kl" in per_window[run] for run in runs):
            output_kl = [float(np.mean(per_window[run]["lens_kl"], axis=0)[-1]) for run in runs]
            entry["rank_with_output_kl"] = _spearman([runs[run].mean() for run in runs], output_kl)
        summary[metric] = entry
    return summary
