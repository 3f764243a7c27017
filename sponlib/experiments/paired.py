"""Paired comparisons over windows: dense, masked and SPON perplexity on the same windows, the
recovery with a bootstrap interval, and whether SPON is worse than the mask.

Every text is scored window by window (mean NLL per predicted token of each window,
sponlib.models.likelihood.window_nlls), so that the three models meet the very same windows and the
intervals can be paired: one bootstrap resample of windows gives one value of each statistic
(sponlib.spon.safeguard.bootstrap_means, the resampling the safeguard uses too).

    recovery  = (ppl_mask − ppl_spon) / (ppl_mask − ppl_dense)   share of the damage repaired
    log ratio = log ppl_spon − log ppl_mask                      > 0: SPON worse than the mask
SPON is *worse than the mask* on a text when the 95% interval of the log ratio lies above 0.
"""

from __future__ import annotations

import math

import torch

from ..spon.safeguard import bootstrap_means, percentile_interval

N_BOOT = 2000
CONFIDENCE = 0.95


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
    d, m, s = bootstrap_means(torch.stack([dense, mask, spon]), n_boot, seed).T  # (B,) mean NLLs each
    gap = m.exp() - d.exp()
    recovery_samples = torch.where(gap > 0, (m.exp() - s.exp()) / gap, torch.full_like(gap, math.nan))
    ratio_samples = s - m  # log ppl_spon − log ppl_mask
    ppl_dense, ppl_mask, ppl_spon = (math.exp(t.mean().item()) for t in (dense, mask, spon))
    gap = ppl_mask - ppl_dense
    ratio_low, ratio_high = percentile_interval(ratio_samples, confidence)
    recovery_low, recovery_high = percentile_interval(recovery_samples, confidence)
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
