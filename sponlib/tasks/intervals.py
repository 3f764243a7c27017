"""Confidence intervals for task results: Wilson for accuracies, percentile bootstrap for means
and for paired differences between two models scored on the same examples."""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgumentError

Z_95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_SAMPLES = 2000


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1], fine at 0 and n)."""
    if n <= 0 or not 0 <= successes <= n:
        raise InvalidArgumentError(f"need 0 <= successes <= n and n > 0 (got {successes} of {n})")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise InvalidArgumentError("no values to bootstrap")
    picks = np.random.default_rng(seed).integers(0, values.size, size=(samples, values.size))  # (S, n)
    means = values[picks].mean(1)  # (S,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(a, b, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """mean(a) - mean(b) over the same examples, with a paired bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InvalidArgumentError(f"paired outcomes must match in length ({a.size} vs {b.size})")
    low, high = bootstrap_mean(a - b, seed, samples)
    return {"difference": float((a - b).mean()), "ci": [low, high]}
