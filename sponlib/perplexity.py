"""Perplexity of a causal LM over non-overlapping token windows, dense or sparsified.

Each window of L tokens is one forward pass with no context from outside it; positions 1..L-1
are predicted, so a window contributes L-1 tokens. ppl = exp(total NLL / predicted tokens).
Data-parallel processes (sponlib.distributed) each take a share of the windows and sum.

    perplexity(model, windows)                        whatever hooks are on the model
    (per window: sponlib.models.likelihood.window_nlls, (N,) mean NLL per predicted token)
    evaluate(model, [windows, ...], thresholds, ...)  one row per text: perplexity under a mask
                                                      (and SPON vectors), with measured sparsity
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .distributed import Replicas
from .models.likelihood import check_ids, non_finite_error, summed_nlls
from .progress import no_bars
from .sparsity.sparsifier import Sparsifier
from .sparsity.thresholds import Thresholds


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token, in nats
    tokens: int  # predicted tokens: windows * (window_len - 1)
    windows: int
    window_len: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def perplexity(
    model,
    windows,
    batch_size: int = 1,
    progress: bool = True,
    desc: str = "perplexity",
    replicas: Replicas | None = None,
) -> PerplexityResult:
    """Perplexity over `windows` (a data.Windows or a (N, L) tensor of token ids); with `replicas`,
    over every process's share of them, the same result in each."""
    ids = getattr(windows, "ids", windows)  # (N, L)
    check_ids(ids, batch_size)
    replicas = replicas or Replicas()
    n_windows, window_len = ids.shape
    share = replicas.share(n_windows)
    bar = tqdm(
        total=share.stop - share.start,
        desc=desc,
        unit="win",
        disable=no_bars(progress and replicas.is_main),
        leave=False,
    )
    summed, first_bad = summed_nlls(model, ids[share], batch_size, bar)  # (n,)
    bar.close()
    first_bad = n_windows if first_bad is None else share.start + first_bad
    # every process learns of a bad window anywhere, so none waits for the others forever
    total = replicas.sum(summed.sum()).item()
    first_bad = int(replicas.minimum(torch.tensor(first_bad, dtype=torch.float64)).item())
    if first_bad < n_windows:
        raise non_finite_error(model, first_bad)
    tokens = n_windows * (window_len - 1)
    mean_nll = total / tokens
    return PerplexityResult(math.exp(mean_nll), mean_nll, tokens, n_windows, window_len)


def evaluate(
    model,
    windows_list: list,
    thresholds: Thresholds | None = None,
    batch_size: int = 4,
    progress: bool = True,
    spon=None,
    replicas: Replicas | None = None,
) -> list[dict]:
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
        row = {
            "corpus": windows.source,
            "method": thresholds.method if thresholds else "dense",
            "target": thresholds.target if thresholds else 0.0,
        }
        if spon is not None:
            row["spon"] = True
        if sparsifier is None:
            result = perplexity(
                model, windows, batch_size=batch_size, progress=progress, desc=windows.source, replicas=replicas
            )
        else:
            sparsifier.reset_stats()  # measured sparsity per text
            with sparsifier:
                result = perplexity(
                    model,
                    windows,
                    batch_size=batch_size,
                    progress=progress,
                    desc=f"{windows.source} {thresholds.method}@{thresholds.target:g}",
                    replicas=replicas,
                )
            if replicas.active:
                sparsifier.set_counts(replicas.sum(sparsifier.counts()))  # every process's share
            per_projection = sparsifier.measured()
            summary = sparsifier.summary()
            row.update(
                measured=summary["weighted"],
                measured_mean=summary["mean"],
                measured_min=min(per_projection.values()),
                measured_max=max(per_projection.values()),
            )
        rows.append({**row, **result.as_dict(), "available_windows": windows.available})
    return rows
