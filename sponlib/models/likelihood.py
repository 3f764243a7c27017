"""Likelihood of token windows under a model, window by window: the summed NLL of each window
(`window_nll`) and the mean NLL per predicted token of each (`window_nlls`), under whatever hooks
are on the model. sponlib.perplexity builds perplexity on them; the SPON safeguard compares models
with them window by window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError, NumericalError
from ..progress import no_bars
from .placement import input_device


def window_nll(model, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window: (B, L) token ids -> (B,) float32 nats."""
    logits = model(input_ids=ids, use_cache=False).logits  # (B, L, V)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, L-1, V), fp32 whatever the model dtype
    return -logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)  # (B,)


def check_ids(ids: torch.Tensor, batch_size: int) -> None:
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
        raise InvalidArgumentError(f"need a (windows, length >= 2) tensor of token ids, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise InvalidArgumentError(f"batch size must be at least 1 (got {batch_size})")


def summed_nlls(model, ids: torch.Tensor, batch_size: int, bar) -> tuple[torch.Tensor, int | None]:
    """Summed NLL of each window (n, L) -> (n,) float64 on the CPU, and the index of the first
    window whose likelihood is not finite (None if all are); the loop stops at that batch."""
    device = input_device(model)
    out = torch.zeros(len(ids), dtype=torch.float64)  # (n,)
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size].to(device)  # (B, L)
        nll = window_nll(model, batch)  # (B,)
        if not torch.isfinite(nll).all():
            return out, start + int((~torch.isfinite(nll)).nonzero()[0])
        out[start : start + len(batch)] = nll.double().cpu()
        bar.update(len(batch))
    return out, None


def non_finite_error(model, window: int) -> NumericalError:
    return NumericalError(
        f"non-finite log-likelihood in window {window}: the model produced NaN/inf logits "
        f"(dtype {next(model.parameters()).dtype}). Try dtype float32, or check the weights."
    )


@torch.inference_mode()
def window_nlls(model, windows, batch_size: int = 8, progress: bool = True, desc: str = "windows") -> torch.Tensor:
    """Mean next-token NLL per predicted token of each window, under whatever hooks are on the
    model: `windows` (a data.Windows or (N, L) token ids) -> (N,) float64 nats. Windows of equal
    length make the mean of these exactly the log perplexity."""
    ids = getattr(windows, "ids", windows)  # (N, L)
    check_ids(ids, batch_size)
    with tqdm(total=len(ids), desc=desc, unit="win", disable=no_bars(progress), leave=False) as bar:
        summed, first_bad = summed_nlls(model, ids, batch_size, bar)  # (N,)
    if first_bad is not None:
        raise non_finite_error(model, first_bad)
    return summed / (ids.shape[1] - 1)
