"""Paired comparisons over windows: dense, masked and SPON perplexity on the same windows, the
recovery with a bootstrap interval, and whether SPON is worse than the mask.

Every text is scored window by window (mean NLL per predicted token of each window,
sponlib.models.likelihood.window_nlls), so that the three models meet the very same windows and the
intervals can be paired: one bootstrap resample of windows gives one value of each statistic.

    recovery  = (ppl_mask − ppl_spon) / (ppl_mask − ppl_dense)   share of the damage repaired
    log ratio = log ppl_spon − log ppl_mask                      > 0: SPON worse than the mask
SPON is *worse than the mask* on a text when the 95% interval of the log ratio lies above 0.
"""

from __future__ import annotations

import math

import torch

N_BOOT = 2000
CONFIDENCE = 0.95


def _resamples(n_windows: int, n_boot: int, seed: int) -> torch.Tensor:
    """(n_boot, n_windows) window indices drawn with replacement, the same for every statistic."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_windows, (n_boot, n_windows), generator=generator)


def _interval(samples: torch.Tensor, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    finite = samples[torch.isfinite(samples)]
    if len(finite) == 0:
        return math.nan, math.nan
    low, high = torch.quantile(finite, torch.tensor([tail, 1 - tail], dtype=finite.dtype)).tolist()
    return low, high


def compare_paired(
    dense: torch.Tensor,
    mask: torch.Tensor,
    spon: torch.Tensor,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Per-window mean NLLs (N,) of the dense, masked and SPON models on the same windows ->
    perplexities, the recovery and the log ratio with their paired bootstrap intervals."""
    dense, mask, spon = (t.double() for t in (dense, mask, spon))  # (N,) each
    if not dense.shape == mask.shape == spon.shape or dense.ndim != 1:
        raise ValueError(f"need three (N,) tensors of the same windows, got {dense.shape}, {mask.shape}, {spon.shape}")
    index = _resamples(len(dense), n_boot, seed)  # (B, N)
    d, m, s = dense[index].mean(1), mask[index].mean(1), spon[index].mean(1)  # (B,) mean NLLs
    gap = m.exp() - d.exp()
    recovery_samples = torch.where(gap > 0, (m.exp() - s.exp()) / gap, torch.full_like(gap, math.nan))
    ratio_samples = s - m  # log ppl_spon − log ppl_mask
    ppl_dense, ppl_mask, ppl_spon = (math.exp(t.mean().item()) for t in (dense, mask, spon))
    gap = ppl_mask - ppl_dense
    ratio_low, ratio_high = _interval(ratio_samples, confidence)
    recovery_low, recovery_high = _interval(recovery_samples, confidence)
    return {
        "ppl_dense": ppl_dense,
        "ppl_masked": ppl_mask,
        "ppl_spon": ppl_spon,
        "recovery": (ppl_mask - ppl_spon) / gap if gap > 0 else None,
        "recovery_low": recovery_low,
        "recovery_high": recovery_high,
        "log_ratio": (spon - mask).mean().item(),
        "log_ratio_low": ratio_low,
        "log_ratio_high": ratio_high,
        "worse_than_mask": ratio_low > 0,
        "windows": len(dense),
    }
