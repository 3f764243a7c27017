"""Perplexity of a causal LM over non-overlapping token windows, dense or sparsified.

Each window of L tokens is one forward pass with no context from outside it; positions 1..L-1
are predicted, so a window contributes L-1 tokens. ppl = exp(total NLL / predicted tokens).
Data-parallel processes (sponlib.distributed) each take a share of the windows and sum.

    perplexity(model, windows)                        whatever hooks are on the model
    evaluate(model, [windows, ...], thresholds, ...)  one row per text: perplexity under a mask
                                                      (and SPON vectors), with measured sparsity
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .distributed import Replicas
from .errors import InvalidArgumentError, NumericalError
from .models.placement import input_device
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


def window_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window: (B, L) token ids -> (B,) float32 nats."""
    logits = model(input_ids=ids, use_cache=False).logits  # (B, L, V)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V), fp32 whatever the model dtype
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)  # (B,)


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
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise InvalidArgumentError(f"need a (windows, length >= 2) tensor of token ids, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be at least 1 (got {batch_size})")
    replicas = replicas or Replicas()
    device = input_device(model)
    n_windows, window_len = ids.shape
    share = replicas.share(n_windows)
    total, first_bad = 0.0, n_windows  # first window with a non-finite likelihood, if any
    bar = tqdm(
        total=share.stop - share.start, desc=desc, unit="win", disable=not progress or not replicas.is_main, leave=False
    )
    for start in range(share.start, share.stop, batch_size):
        batch = ids[start : min(start + batch_size, share.stop)].to(device)  # (B, L)
        nll = window_nll(model, batch)  # (B,)
        if not torch.isfinite(nll).all():
            first_bad = start + int((~torch.isfinite(nll)).nonzero()[0])
            break
        total += nll.double().sum().item()
        bar.update(batch.shape[0])
    bar.close()
    # every process learns of a bad window anywhere, so none waits for the others forever
    total = replicas.sum(torch.tensor(total, dtype=torch.float64)).item()
    first_bad = int(replicas.minimum(torch.tensor(first_bad, dtype=torch.float64)).item())
    if first_bad < n_windows:
        raise NumericalError(
            f"non-finite log-likelihood in window {first_bad}: the model produced NaN/inf logits "
            f"(dtype {next(model.parameters()).dtype}). Try dtype float32, or check the weights."
        )
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
