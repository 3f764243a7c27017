"""The "never worse" safeguard: shrink SPON vectors until they do not hurt held-out text.

Vectors trained on one text can make other text worse than the plain mask. After training, on a
held-out text of another domain, the vectors are scaled by γ in [0, 1]: α -> γ α, and each
projection's threshold moves along with them, τ = τ_mask + γ (τ_spon - τ_mask) (the SPON thresholds
were refitted under the full vectors). γ = 1 is the trained SPON, γ = 0 exactly the plain mask.

Criterion. Per window w (all of one length), d_w = nll_spon_w - nll_mask_w, the mean next-token
NLL per predicted token under SPON minus that under the mask; the mean of d over windows is
exactly log(ppl_spon / ppl_mask). A percentile bootstrap over windows (paired: both NLLs of a
window stay together) gives a 95% interval of that mean. The safeguard keeps the largest γ of a
grid whose interval lies at or below zero (or below a margin in nats): there SPON is not worse
than the mask on that text at 95% confidence. γ = 0 always qualifies; choosing it means the
vectors are refused and the file holds zero vectors, the plain mask.

The γ is chosen on this text, so its interval is optimistic as a forecast for others: tests stay
on texts that the safeguard did not see.

    paired_bootstrap(d)                    Interval of the mean of d over windows
    scaled(vectors, τ_spon, τ_mask, γ)     the vectors and thresholds at γ
    gamma_scan(model, ..., windows)        GammaScan: ppl and interval at every γ of a grid;
                                           .safe_gamma() the rule above, .best_gamma() the lowest mean
    safeguard(model, ..., windows)         the safe γ's vectors and thresholds, recorded in their meta
                                           (scanning from the largest γ down to the first safe one)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch

from ..errors import InvalidArgumentError
from ..models.likelihood import check_ids, window_nlls
from ..sparsity.sparsifier import Sparsifier
from ..sparsity.thresholds import Thresholds
from .vectors import SponVectors

GAMMAS = tuple(round(1.0 - i / 10, 1) for i in range(11))  # 1.0, 0.9, ..., 0.1, 0.0
CONFIDENCE = 0.95  # of the scan's intervals
CRITERION = (
    "the largest scale gamma <= start of the grid at which the 95% paired bootstrap interval (over windows) "
    "of log(ppl_spon / ppl_mask) on the held-out text lies at or below the margin (0 nats unless named); "
    "gamma = 0, the plain mask, always qualifies"
)


@dataclass
class Interval:
    """A bootstrap interval of a mean."""

    mean: float
    low: float
    high: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap_means(values: torch.Tensor, n_boot: int = 2000, seed: int = 0) -> torch.Tensor:
    """Means of `n_boot` resamples of windows, drawn with replacement by a seeded generator: values
    (N,) or (K, N), K statistics of the same N windows resampled together (paired) -> (n_boot,) or
    (n_boot, K), float64."""
    values = values.detach().to("cpu", torch.float64)
    rows = values.reshape(-1, values.shape[-1])  # (K, N)
    k, n = rows.shape
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, 2**22 // (n * k))  # resamples per draw, so that the (K, chunk, N) gather stays small
    means = torch.cat(
        [
            rows[:, torch.randint(0, n, (min(chunk, n_boot - start), n), generator=generator)].mean(-1).T  # (c, K)
            for start in range(0, n_boot, chunk)
        ]
    )  # (n_boot, K)
    return means[:, 0] if values.ndim == 1 else means


def percentile_interval(samples: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap samples (n_boot,), non-finite ones left out
    (nan, nan when none is finite)."""
    finite = samples[torch.isfinite(samples)]
    if len(finite) == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(finite, torch.tensor([tail, 1.0 - tail], dtype=finite.dtype)).tolist()
    return low, high


def paired_bootstrap(diff: torch.Tensor, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `diff` (N,), one paired difference per window:
    windows are resampled with replacement `n_boot` times, with a seeded generator (the same
    interval for the same inputs). float64 throughout."""
    diff = diff.detach().to("cpu", torch.float64).flatten()  # (N,)
    if diff.numel() == 0 or not torch.isfinite(diff).all():
        raise InvalidArgumentError(f"need a non-empty vector of finite differences, got {diff.numel()} values")
    if n_boot < 1 or not 0 < confidence < 1:
        raise InvalidArgumentError(f"need n_boot >= 1 and confidence in (0, 1), got {n_boot} and {confidence}")
    low, high = percentile_interval(bootstrap_means(diff, n_boot, seed), confidence)
    return Interval(diff.mean().item(), low, high, confidence)


def _check_pair(spon_thresholds: Thresholds, mask_thresholds: Thresholds) -> None:
    if (spon_thresholds.method, spon_thresholds.target) != (mask_thresholds.method, mask_thresholds.target):
        raise InvalidArgumentError(
            f"the SPON thresholds are for {spon_thresholds.method} at {spon_thresholds.target:g}, the mask's "
            f"for {mask_thresholds.method} at {mask_thresholds.target:g}: pass the thresholds the vectors were "
            "trained against"
        )
    if set(spon_thresholds.taus) != set(mask_thresholds.taus):
        raise InvalidArgumentError("the SPON and mask thresholds name different projections; they are of other models")


def scaled(
    vectors: SponVectors, spon_thresholds: Thresholds, mask_thresholds: Thresholds, gamma: float
) -> tuple[SponVectors, Thresholds]:
    """The vectors γ α and the thresholds τ_mask + γ (τ_spon - τ_mask), per projection. γ = 0 gives
    zero vectors and the mask's thresholds, γ = 1 the trained vectors and thresholds, exactly.
    The inputs are left as they are (the result has its own meta dict)."""
    if not 0.0 <= gamma <= 1.0:
        raise InvalidArgumentError(f"the scale gamma must be in [0, 1], got {gamma}")
    _check_pair(spon_thresholds, mask_thresholds)
    meta = dict(vectors.meta)
    if gamma == 1.0:
        return SponVectors(dict(vectors.alphas), meta), spon_thresholds
    if gamma == 0.0:
        return SponVectors({name: torch.zeros_like(a) for name, a in vectors.alphas.items()}, meta), mask_thresholds
    taus = {
        # (1 - γ) τ_mask + γ τ_spon: the same line, exact at both ends; equal taus stay as they are
        name: tau if tau == spon_thresholds.taus[name] else (1.0 - gamma) * tau + gamma * spon_thresholds.taus[name]
        for name, tau in mask_thresholds.taus.items()
    }
    thresholds = dataclasses.replace(
        spon_thresholds, taus=taus, calibration={**spon_thresholds.calibration, "spon_scale": gamma}
    )
    return SponVectors({name: gamma * a for name, a in vectors.alphas.items()}, meta), thresholds


def _row(gamma: float, spon: torch.Tensor, mask: torch.Tensor, n_boot: int, confidence: float, seed: int) -> dict:
    """One row of a scan from the per-window NLLs (N,) under SPON at γ and under the mask."""
    spon = spon.double()
    interval = paired_bootstrap(spon - mask.double(), n_boot, confidence, seed)  # of d (N,): log ppl ratios
    return {
        "gamma": gamma,
        "ppl_spon": math.exp(spon.mean().item()),
        "mean": interval.mean,
        "low": interval.low,
        "high": interval.high,
    }


@dataclass
class GammaScan:
    """Perplexity under the mask and, per γ, under the scaled SPON with the interval of
    d = log(ppl_spon / ppl_mask) over windows. Rows run from the largest γ down."""

    text: dict  # the windows' describe()
    ppl_mask: float
    rows: list[dict]  # {gamma, ppl_spon, mean, low, high}
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0

    @classmethod
    def from_nlls(cls, text: dict, mask: torch.Tensor, spon: dict, n_boot=2000, confidence=0.95, seed=0):
        """The scan from per-window NLLs: the mask's (N,) and, per γ, SPON's (N,)."""
        rows = [_row(gamma, spon[gamma], mask, n_boot, confidence, seed) for gamma in sorted(spon, reverse=True)]
        return cls(text, math.exp(mask.double().mean().item()), rows, confidence, n_boot, seed)

    def row(self, gamma: float) -> dict:
        for row in self.rows:
            if row["gamma"] == gamma:
                return row
        raise InvalidArgumentError(f"the scan has no row at gamma {gamma}; it has {[r['gamma'] for r in self.rows]}")

    def safe_gamma(self, start: float = 1.0, margin: float = 0.0) -> float:
        """The largest γ <= start whose interval's high end is <= margin (nats of log perplexity
        ratio): SPON better than the mask at 95% confidence for margin 0. γ = 0 always qualifies."""
        return max((r["gamma"] for r in self.rows if r["gamma"] <= start and r["high"] <= margin), default=0.0)

    def best_gamma(self) -> float:
        """The γ of the lowest mean d (shrinkage chosen on validation); ties go to the smaller γ."""
        return min(self.rows, key=lambda r: (r["mean"], r["gamma"]))["gamma"] if self.rows else 0.0

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "ppl_mask": self.ppl_mask,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "rows": self.rows,
        }


def _grid(gammas) -> list[float]:
    """The scales to scan, largest first, γ = 0 always among them (it costs no forward pass)."""
    grid = sorted({float(g) for g in gammas} | {0.0}, reverse=True)
    if not all(0.0 <= g <= 1.0 for g in grid):
        raise InvalidArgumentError(f"every scale gamma must be in [0, 1], got {list(gammas)}")
    return grid


def gamma_scan(
    model,
    vectors: SponVectors,
    spon_thresholds: Thresholds,
    mask_thresholds: Thresholds,
    windows,
    gammas=GAMMAS,
    batch_size: int = 8,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    stop_below: float | None = None,
) -> GammaScan:
    """Per-window NLL under the mask once, then per γ of `gammas` (largest first) under the scaled
    SPON, and the paired bootstrap interval of d = nll_spon - nll_mask at each. `windows` is a
    data.Windows (or (N, L) token ids) of held-out text, every window of one length. With
    `stop_below`, the scan stops at the first γ whose interval's high end is at or below it (the
    safe γ of that margin: smaller ones are not needed); the row of γ = 0 always ends the scan."""
    grid = _grid(gammas)
    _check_pair(spon_thresholds, mask_thresholds)
    ids = getattr(windows, "ids", windows)  # (N, L)
    check_ids(ids, batch_size)  # before the first forward pass
    text = windows.describe() if hasattr(windows, "describe") else {"windows": len(ids), "window_len": ids.shape[1]}
    name = text.get("source", "text")
    with Sparsifier(model, mask_thresholds, count=False):  # checks the model's fingerprint, once
        mask = window_nlls(model, ids, batch_size, progress, f"{name} mask")  # (N,)
    rows = []
    for gamma in grid[:-1]:  # every γ > 0; γ = 0 is the plain mask itself: d = 0, no forward pass
        scaled_vectors, thresholds = scaled(vectors, spon_thresholds, mask_thresholds, gamma)
        with Sparsifier(model, thresholds, check=False, alphas=scaled_vectors.alphas, count=False):
            spon = window_nlls(model, ids, batch_size, progress, f"{name} SPON x{gamma:g}")  # (N,)
        rows.append(_row(gamma, spon, mask, n_boot, CONFIDENCE, seed))
        if stop_below is not None and rows[-1]["high"] <= stop_below:
            break
    rows.append(_row(0.0, mask, mask, n_boot, CONFIDENCE, seed))
    return GammaScan(text, math.exp(mask.mean().item()), rows, CONFIDENCE, n_boot, seed)


def _row_at(scan: GammaScan, gamma: float) -> dict:
    """The scan's row at γ; at γ = 0 the plain mask's when a scan built elsewhere lacks it."""
    if gamma == 0.0 and all(r["gamma"] != 0.0 for r in scan.rows):
        return {"gamma": 0.0, "ppl_spon": scan.ppl_mask, "mean": 0.0, "low": 0.0, "high": 0.0}
    return scan.row(gamma)


def safeguard(
    model,
    vectors: SponVectors,
    spon_thresholds: Thresholds,
    mask_thresholds: Thresholds,
    windows=None,
    *,
    start: float = 1.0,
    gammas=GAMMAS,
    batch_size: int = 8,
    progress: bool = True,
    n_boot: int = 2000,
    seed: int = 0,
    margin: float = 0.0,
    scan: GammaScan | None = None,
) -> tuple[SponVectors, Thresholds, dict]:
    """The vectors and thresholds at the safe γ (the largest γ <= `start` of the scan whose
    interval's high end is <= `margin`), with the decision in `vectors.meta["safeguard"]`, also
    returned. `start` is a γ a caller chose before (e.g. `scan.best_gamma()`); pass that `scan`
    to reuse its forward passes (then `windows` may be None). Scanning itself, it stops at the
    safe γ (the rows below it would not change the choice), so the record's scan may be short.
    The inputs are left as they are."""
    if not 0.0 <= start <= 1.0:
        raise InvalidArgumentError(f"the starting scale must be in [0, 1], got {start}")
    if scan is None:
        if windows is None:
            raise InvalidArgumentError("name the held-out windows of the safeguard, or pass a scan of them")
        grid = [g for g in gammas if g <= start] + [start]  # nothing above start is needed, nor below the safe γ
        scan = gamma_scan(
            model, vectors, spon_thresholds, mask_thresholds, windows, grid, batch_size, progress, n_boot, seed, margin
        )
    gamma = scan.safe_gamma(start, margin)
    row = _row_at(scan, gamma)
    record = {
        "gamma": gamma,
        "refused": gamma == 0.0,
        "start": start,
        "margin": margin,
        "text": scan.text,
        "interval": {
            "mean": row["mean"],
            "low": row["low"],
            "high": row["high"],
            "confidence": scan.confidence,
            "n_boot": scan.n_boot,
            "seed": scan.seed,
        },
        "ppl_mask": scan.ppl_mask,
        "ppl_spon": row["ppl_spon"],
        "criterion": CRITERION,
        "scan": [dict(r) for r in scan.rows],
    }
    safe_vectors, safe_thresholds = scaled(vectors, spon_thresholds, mask_thresholds, gamma)
    safe_vectors.meta["safeguard"] = record
    return safe_vectors, safe_thresholds, record
