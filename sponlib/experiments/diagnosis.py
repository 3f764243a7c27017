"""Where do the KL that SPON trains on and the perplexity of other text part ways?

Token by token, on a few texts, against the dense model: the KL(p_dense ‖ p) that training lowers
and the NLL of the true next token that perplexity counts, for the mask and for SPON, and the
change SPON brings to each, Δ = SPON − mask:
    by position in the window   (early positions see little context)
    by the dense model's entropy (confident against uncertain predictions)
    by whether the dense model's top token is the true one
    by which vectors are on      (only the blocks of one third of the depth; only attention; only MLP)
A negative ΔKL with a positive ΔNLL is the parting: SPON moves the sparse model towards the dense
one on average and still loses likelihood of the text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..analysis.metrics import kl_divergence
from ..models.adapters import iter_projections
from ..models.placement import input_device
from ..sparsity.sparsifier import Sparsifier

POSITION_BUCKETS = ((1, 8), (8, 64), (64, 10**9))  # [start, end) of the predicted position


def _token_stats(logits: torch.Tensor, dense_logp: torch.Tensor, targets: torch.Tensor) -> dict:
    """(B, L-1, V) logits of a variant -> per-token KL(p_dense ‖ p) and NLL of the target, (B, L-1)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = kl_divergence(dense_logp, logp)  # (B, L-1)
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    return {"kl": kl, "nll": nll}


def _subsets(model, alphas: dict) -> dict[str, dict]:
    """The vectors of one third of the blocks, of attention only and of the MLP only."""
    blocks = {p.name: p.block for p in iter_projections(model)}
    roles = {p.name: p.role for p in iter_projections(model)}
    depth = max(blocks.values()) + 1
    out = {}
    for i, part in enumerate(("first", "middle", "last")):
        lo, hi = i * depth // 3, (i + 1) * depth // 3
        out[f"blocks_{part}_third"] = {n: a for n, a in alphas.items() if lo <= blocks[n] < hi}
    out["attention_only"] = {n: a for n, a in alphas.items() if roles[n] in ("q", "k", "v", "o")}
    out["mlp_only"] = {n: a for n, a in alphas.items() if roles[n] in ("gate", "up", "down")}
    return out


@torch.inference_mode()
def token_table(model, ids: torch.Tensor, variants: dict, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Per-token statistics (N, L-1) of every variant (name -> (thresholds, alphas)) on windows
    (N, L): "<name>.kl", "<name>.nll", and the dense model's "dense.nll" and "dense.entropy"."""
    device = input_device(model)
    columns: dict[str, list] = {}
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size].to(device)  # (B, L)
        targets = batch[:, 1:]  # (B, L-1)
        dense_logp = F.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
        stats = {
            "dense.nll": -dense_logp.gather(-1, targets[..., None]).squeeze(-1),
            "dense.entropy": -(dense_logp.exp() * dense_logp).sum(-1),
            "dense.top1_right": (dense_logp.argmax(-1) == targets).float(),
        }
        for name, (thresholds, alphas) in variants.items():
            with Sparsifier(model, thresholds, alphas=alphas, count=False):
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1]  # (B, L-1, V)
            stats |= {f"{name}.{k}": v for k, v in _token_stats(logits, dense_logp, targets).items()}
        for key, value in stats.items():
            columns.setdefault(key, []).append(value.double().cpu())
    return {key: torch.cat(parts) for key, parts in columns.items()}


def _delta(table: dict, where: torch.Tensor) -> dict:
    """Mean KL and NLL change of SPON against the mask over the tokens `where` selects."""
    n = int(where.sum())
    if n == 0:
        return {"tokens": 0}
    mean = lambda key: float(table[key][where].mean())  # noqa: E731
    return {
        "tokens": n,
        "kl_mask": mean("mask.kl"),
        "delta_kl": mean("spon.kl") - mean("mask.kl"),
        "delta_nll": mean("spon.nll") - mean("mask.nll"),
    }


def breakdown(table: dict) -> dict:
    """ΔKL and ΔNLL of SPON against the mask: overall, by position, entropy and top-1 correctness."""
    n_tokens = table["dense.nll"].shape[1]
    position = torch.arange(1, n_tokens + 1).expand_as(table["dense.nll"])  # predicted position
    entropy = table["dense.entropy"]
    edges = torch.quantile(entropy.flatten().float(), torch.tensor([0.25, 0.5, 0.75])).double()
    quartile = torch.bucketize(entropy, edges)  # 0..3, low entropy (confident) first
    return {
        "all": _delta(table, torch.ones_like(entropy, dtype=torch.bool)),
        "by_position": {
            f"{lo}-{min(hi, n_tokens + 1) - 1}": _delta(table, (position >= lo) & (position < hi))
            for lo, hi in POSITION_BUCKETS
        },
        "by_dense_entropy_quartile": {f"q{q + 1}": _delta(table, quartile == q) for q in range(4)},
        "by_dense_top1": {
            "right": _delta(table, table["dense.top1_right"] > 0),
            "wrong": _delta(table, table["dense.top1_right"] == 0),
        },
        "entropy_edges": edges.tolist(),
    }


def diagnose(model, texts: list, mask, vectors, spon_thresholds, windows: int = 16, batch_size: int = 4) -> dict:
    """The breakdown on each text (its first `windows` windows), and ΔKL / ΔNLL with only a subset
    of the vectors on (the SPON thresholds throughout, so that only the vectors differ)."""
    variants = {"mask": (mask, None), "spon": (spon_thresholds, vectors.alphas)}
    subsets = {name: (spon_thresholds, alphas) for name, alphas in _subsets(model, vectors.alphas).items()}
    out = {}
    for text in texts:
        table = token_table(model, text.ids[:windows], variants | subsets, batch_size)
        row = breakdown(table)
        row["vector_subsets"] = {
            name: {
                "delta_kl": float(table[f"{name}.kl"].mean() - table["mask.kl"].mean()),
                "delta_nll": float(table[f"{name}.nll"].mean() - table["mask.nll"].mean()),
            }
            for name in subsets
        }
        row["delta_nll_mask_vs_dense"] = float(table["mask.nll"].mean() - table["dense.nll"].mean())
        out[text.source] = row
    return out
